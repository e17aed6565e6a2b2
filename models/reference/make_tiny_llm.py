#!/usr/bin/env python3
"""Write two tiny random causal LMs in Hugging Face layout, with golden outputs.

These are the golden references for inferd's safetensors loader of Llama and Qwen2
decoder-only models: Hugging Face transformers is the reference implementation, and
inferd's tests must reproduce its logits and its greedy continuations from the same
files. The models are randomly initialised (nothing is downloaded or trained) and small
enough to commit (each model.safetensors is about 0.5 MB). No tokenizer files are
written: the Rust tests feed token ids.

Run from the repository root, in the venv of requirements-embeddings.txt (it pins torch
and transformers; see README.md):

    target/st-venv/bin/python models/reference/make_tiny_llm.py

Paths are resolved relative to this file, not the working directory. The script writes

    tests/fixtures/llm/tiny-llama/{config.json, model.safetensors, golden.json}
    tests/fixtures/llm/tiny-qwen2/{config.json, model.safetensors, golden.json}

plus whatever else save_pretrained writes there (generation_config.json); config.json
and generation_config.json are transformers' own files, unedited.

Models (float32, vocab 320, hidden 64, intermediate 160, 2 layers, 4 query heads, 2
key/value heads (grouped-query attention, head_dim 16), max_position_embeddings 256,
rms_norm_eps 1e-5, rope_theta 10000 (transformers 5 writes it as
config.json's "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}),
SiLU MLP, no bos/eos/pad token ids):

- tiny-llama: LlamaForCausalLM, tie_word_embeddings false (lm_head.weight is stored),
  attention_bias false, mlp_bias false;
- tiny-qwen2: Qwen2ForCausalLM, tie_word_embeddings true (lm_head.weight is not stored:
  the output projection is model.embed_tokens.weight), q/k/v projections with biases
  (o_proj has none), no sliding window.

Weights: transformers' own initialisation is replaced, so the values depend on this
script and torch's generator only (not on the order in which transformers initialises
modules). Parameters are drawn in model.named_parameters() order from one
torch.Generator seeded with the model's seed: every RMSNorm weight is 1 + 0.1 * N(0, 1)
(so a norm that ignores or misapplies its weight shows up), every bias is 0.1 * N(0, 1)
(non-zero, so a loader that drops biases shows up), model.embed_tokens.weight is
0.5 * N(0, 1) for tiny-llama and 0.1 * N(0, 1) for tiny-qwen2 (see MODELS), every other
weight is initializer_range * N(0, 1) with initializer_range 0.1 (5x the default, so the
logits are spread over a few units rather than all near zero). Linear weights are
stored as transformers keeps them: [out_features, in_features] (y = x W^T + b).

What transformers computes (transformers 5.24, the same for both models):
- RMSNorm: weight * (x * rsqrt(mean(x^2) + eps)), in float32;
- RoPE: the non-interleaved "rotate_half" convention: within each head of 16, dimension
  i (i < 8) is rotated together with dimension i + 8, by angle position * inv_freq[i],
  inv_freq[i] = rope_theta^(-2i/16); rotate_half(x) = cat(-x[8:], x[:8]), and
  q' = q * cos + rotate_half(q) * sin with cos/sin = cat(freqs, freqs). Positions are
  0..n-1. Position 0 is not rotated, so only the longer cases test RoPE;
- attention: scores = q . k / sqrt(head_dim) (scaling head_dim^-0.5 = 0.25), causal
  mask, softmax in float32; query head h reads key/value head h // 2 (grouped-query
  attention: 4 query heads share 2 key/value heads, repeat_kv);
- MLP: down_proj(silu(gate_proj(x)) * up_proj(x)); pre-norm residual blocks, final
  model.norm, then lm_head (tiny-qwen2: embed_tokens.weight).

Golden file format (golden.json, one per model folder):

    {
      "description": "...",               // this format, in a sentence or two
      "model": "tiny-llama",
      "architecture": "LlamaForCausalLM",
      "seed": 1,                         // weights seed (the inputs use INPUT_SEED)
      "init": {...},                     // how the weights were drawn (see above)
      "attn_implementation": "eager",    // transformers' attention used for the goldens
      "reference": {"torch": "...", "transformers": "...", "safetensors": "...",
                    "numpy": "...", "python": "..."},
      "config": {...},                   // config.json as written by save_pretrained
      "tensors": {"model.embed_tokens.weight": [320, 64], ...},  // model.safetensors
      "cases": [
        {
          "name": "len-1" | "len-7" | "len-33",
          "input_ids": [int, ...],       // one sequence (batch of 1), ids in [0, vocab);
                                         // drawn with INPUT_SEED, len-33 also has the
                                         // ids 0 and vocab - 1
          "logits": [[f32 x vocab], ...],  // model(input_ids).logits[0]: one row per
                                         // input position (causal: row i sees ids 0..=i)
          "greedy_ids": [int x 8],       // model.generate(input_ids, attention_mask=1s,
                                         // do_sample=False, max_new_tokens=8,
                                         // eos_token_id=None): the 8 NEW ids only
          "greedy_margins": [f32 x 8]    // per generated id: its logit minus the
                                         // runner-up's (from one forward pass over
                                         // input_ids + greedy_ids[:-1]), to size a
                                         // tolerance for argmax ties
        }, ...
      ]
    }

Every float is the shortest decimal that reads back as the exact float32 (numpy's str of
a float32), so JSON keeps full precision.

Checks (any failure stops the script):
- model.safetensors holds only float32 tensors, is under 1 MB, and its names and shapes
  are the model's state dict (less lm_head.weight when tied);
- the saved folder, reloaded with from_pretrained(dtype=float32, attn_implementation=
  "eager"), gives bitwise-equal logits and the same greedy ids;
- setting every RMSNorm weight to 1, or every bias to 0, moves some logit by more than
  ABLATION_MIN (so the goldens catch a loader that ignores them);
- the "sdpa" attention gives logits within 1e-5 of the eager ones (the difference is
  printed);
- each greedy id is the argmax of a single forward pass over input_ids + greedy_ids (the
  KV-cached generate() agrees with the uncached forward pass), and no margin is zero;
- golden.json reads back to the same float32 bits.
"""

import copy
import json
import platform
import sys
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / "tests" / "fixtures" / "llm"

INPUT_SEED = 20240
INPUT_LENGTHS = (1, 7, 33)
MAX_NEW_TOKENS = 8
INIT_STD = 0.1       # initializer_range: weights other than norms and embeddings
NORM_JITTER = 0.1    # RMSNorm weights: 1 + NORM_JITTER * N(0, 1)
BIAS_STD = 0.1       # biases: BIAS_STD * N(0, 1)
ABLATION_MIN = 1e-2  # zeroing the biases or flattening the norms must move the logits this much
MAX_FILE_BYTES = 1 << 20
ATTN = "eager"

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    initializer_range=INIT_STD,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    dtype="float32",
)

# (folder, seed, embedding std, config class, model class, extra config). The untied
# Llama gets larger embeddings (0.5) so the input ids weigh more against the layers'
# outputs (its greedy runs repeat less); the tied Qwen2 keeps 0.1, because with larger
# embeddings its output head (the same matrix) mostly picks the last input id again.
MODELS = [
    ("tiny-llama", 1, 0.5, LlamaConfig, LlamaForCausalLM,
     dict(tie_word_embeddings=False, attention_bias=False, mlp_bias=False)),
    ("tiny-qwen2", 2, INIT_STD, Qwen2Config, Qwen2ForCausalLM,
     dict(tie_word_embeddings=True, use_sliding_window=False)),
]

DESCRIPTION = (
    "Golden outputs of Hugging Face transformers for the randomly initialised model in "
    "this folder (config.json + model.safetensors, float32). For each case: the logits "
    "of one forward pass over input_ids (batch of 1, every position, float32 eval mode, "
    "attention_mask all ones) and the 8 new ids of greedy generation from input_ids "
    "(no eos), with the top-1 minus top-2 logit margin of each generated id. Floats are "
    "the shortest decimals that read back as the exact float32. Made by "
    "models/reference/make_tiny_llm.py."
)


def float32_list(values):
    """float32 values as Python floats whose repr is the shortest decimal that reads
    back as the same float32."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).ravel()]


def init_weights(model, seed, embed_std):
    """Overwrite every parameter from one generator, in named_parameters() order (tied
    parameters appear once)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                assert name.endswith("norm.weight"), name
                param.copy_(1.0 + NORM_JITTER * noise)
            elif name.endswith(".bias"):
                param.copy_(BIAS_STD * noise)
            elif name == "model.embed_tokens.weight":
                param.copy_(embed_std * noise)
            else:
                assert name.endswith(".weight"), name
                param.copy_(INIT_STD * noise)


def make_inputs(vocab_size):
    gen = torch.Generator().manual_seed(INPUT_SEED)
    inputs = [torch.randint(0, vocab_size, (n,), generator=gen) for n in INPUT_LENGTHS]
    # The longest sequence also has the first and last ids of the vocabulary.
    inputs[-1][3] = 0
    inputs[-1][17] = vocab_size - 1
    return [ids.tolist() for ids in inputs]


@torch.no_grad()
def forward_logits(model, ids):
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    logits = out.logits[0]
    assert logits.dtype == torch.float32
    return logits.numpy().copy()


@torch.no_grad()
def greedy(model, ids):
    input_ids = torch.tensor([ids], dtype=torch.long)
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        num_beams=1,
        max_new_tokens=MAX_NEW_TOKENS,
        min_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=None,
        pad_token_id=0,  # batch of 1, never used as padding; stops generate() guessing one
    )
    assert out.shape == (1, len(ids) + MAX_NEW_TOKENS), out.shape
    assert out[0, : len(ids)].tolist() == ids
    return out[0, len(ids):].tolist()


def tensor_table(path):
    table = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        for name in f.keys():
            t = f.get_tensor(name)
            assert t.dtype == torch.float32, (path, name, t.dtype)
            table[name] = list(t.shape)
    return table, metadata


def build(folder, seed, embed_std, config_cls, model_cls, extra):
    out = OUT_DIR / folder
    out.mkdir(parents=True, exist_ok=True)
    config = config_cls(**COMMON, **extra)
    torch.manual_seed(seed)
    model = model_cls._from_config(config, attn_implementation=ATTN, dtype=torch.float32)
    init_weights(model, seed, embed_std)
    model.eval()
    tied = bool(config.tie_word_embeddings)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied, folder
    model.save_pretrained(out, safe_serialization=True)

    st_path = out / "model.safetensors"
    size = st_path.stat().st_size
    assert size < MAX_FILE_BYTES, (st_path, size)
    tensors, metadata = tensor_table(st_path)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    if tied:
        expected.pop("lm_head.weight")
    assert tensors == expected, (folder, sorted(set(tensors) ^ set(expected)))

    # Goldens from the in-memory model.
    cases = []
    logits_bits = []
    for ids in make_inputs(config.vocab_size):
        logits = forward_logits(model, ids)
        new_ids = greedy(model, ids)
        # The cached generate() must agree with one uncached forward pass.
        full = forward_logits(model, ids + new_ids[:-1])[len(ids) - 1:]
        assert full.shape[0] == MAX_NEW_TOKENS
        assert full.argmax(axis=-1).tolist() == new_ids, (folder, ids, new_ids)
        top2 = np.sort(full, axis=-1)[:, -2:]
        margins = (top2[:, 1] - top2[:, 0]).astype(np.float32)
        assert (margins > 0).all(), (folder, margins)
        cases.append({
            "name": f"len-{len(ids)}",
            "input_ids": ids,
            "logits": [float32_list(row) for row in logits],
            "greedy_ids": new_ids,
            "greedy_margins": float32_list(margins),
        })
        logits_bits.append(logits)

    # The goldens must notice a loader that drops the biases or ignores the norm weights.
    ablations = {}
    for what, matches, value in (("norm weights = 1", "norm.weight", 1.0), ("biases = 0", ".bias", 0.0)):
        names = [name for name, _ in model.named_parameters() if name.endswith(matches)]
        if not names:
            continue
        ablated = copy.deepcopy(model)
        with torch.no_grad():
            for name in names:
                ablated.get_parameter(name).fill_(value)
        ablations[what] = max(float(np.abs(forward_logits(ablated, case["input_ids"]) - logits).max())
                              for case, logits in zip(cases, logits_bits))
        assert ablations[what] > ABLATION_MIN, (folder, what, ablations[what])

    # Reload the saved folder: bitwise-equal logits.
    again = model_cls.from_pretrained(out, dtype=torch.float32, attn_implementation=ATTN).eval()
    sdpa = model_cls.from_pretrained(out, dtype=torch.float32, attn_implementation="sdpa").eval()
    sdpa_diff = 0.0
    for case, logits in zip(cases, logits_bits):
        reloaded = forward_logits(again, case["input_ids"])
        assert reloaded.tobytes() == logits.tobytes(), f"{folder} {case['name']}: reload differs"
        assert greedy(again, case["input_ids"]) == case["greedy_ids"], f"{folder} {case['name']}"
        sdpa_diff = max(sdpa_diff, float(np.abs(forward_logits(sdpa, case["input_ids"]) - logits).max()))
    assert sdpa_diff < 1e-5, (folder, sdpa_diff)

    saved_config = json.loads((out / "config.json").read_text())
    golden = {
        "description": DESCRIPTION,
        "model": folder,
        "architecture": model_cls.__name__,
        "seed": seed,
        "input_seed": INPUT_SEED,
        "init": {
            "order": "model.named_parameters(), one torch.Generator seeded with seed",
            "norm_weight": f"1 + {NORM_JITTER} * N(0, 1)",
            "bias": f"{BIAS_STD} * N(0, 1)",
            "embed_tokens": f"{embed_std} * N(0, 1)",
            "other": f"{INIT_STD} * N(0, 1)",
        },
        "attn_implementation": ATTN,
        "reference": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "config": saved_config,
        "tensors": tensors,
        "cases": cases,
    }
    golden_path = out / "golden.json"
    write_golden(golden_path, golden)

    # Read back: every number parses to the same float32 bits.
    back = json.loads(golden_path.read_text())
    for case, logits in zip(back["cases"], logits_bits):
        assert np.array(case["logits"], dtype=np.float32).tobytes() == logits.tobytes(), case["name"]

    rel = out.relative_to(REPO_ROOT)
    print(f"{rel}: {model_cls.__name__}, tie_word_embeddings={tied}, safetensors metadata {metadata}")
    for path in sorted(out.iterdir()):
        print(f"  {path.name:<24} {path.stat().st_size:>8} bytes")
    print(f"  sdpa vs eager: max abs logit difference {sdpa_diff:.3g}")
    for what, diff in ablations.items():
        print(f"  with {what}: max abs logit difference {diff:.3g}")
    for name, shape in tensors.items():
        print(f"  {name:<44} {shape}")
    for case in cases:
        spread = np.array(case["logits"], dtype=np.float32)
        print(f"  {case['name']:<7} logits std {spread.std():.3f} range [{spread.min():.3f}, "
              f"{spread.max():.3f}]  greedy {case['greedy_ids']}  "
              f"min margin {min(case['greedy_margins']):.4g}")


def write_golden(path, document):
    """Indented JSON; in each case one line per list, and one line per logits row."""
    head = {k: v for k, v in document.items() if k != "cases"}
    lines = json.dumps(head, indent=2, allow_nan=False).rstrip("}").rstrip().split("\n")
    out = "\n".join(lines) + ',\n  "cases": [\n'
    compact = dict(allow_nan=False, separators=(",", ":"))
    rendered = []
    for case in document["cases"]:
        fields = []
        for key, value in case.items():
            if key == "logits":
                rows = ",\n".join(f"      {json.dumps(row, **compact)}" for row in value)
                fields.append(f"    {json.dumps(key)}: [\n{rows}\n    ]")
            elif isinstance(value, list):
                fields.append(f"    {json.dumps(key)}: {json.dumps(value, **compact)}")
            else:
                fields.append(f"    {json.dumps(key)}: {json.dumps(value)}")
        rendered.append("   {\n" + ",\n".join(fields) + "\n   }")
    out += ",\n".join(rendered) + "\n  ]\n}\n"
    json.loads(out)  # well-formed
    path.write_text(out)


def main():
    torch.set_num_threads(1)
    for folder, seed, embed_std, config_cls, model_cls, extra in MODELS:
        build(folder, seed, embed_std, config_cls, model_cls, extra)


if __name__ == "__main__":
    sys.exit(main())
