#!/usr/bin/env python3
"""Sentence-embedding throughput: inferd's embedding engine beside sentence-transformers (PyTorch).

For the model all-MiniLM-L6-v2 (models/all-minilm-l6-v2, fetched by models/fetch-models.sh), on
the same texts, batch sizes and thread counts, this times

    inferd                  examples/embed_throughput.rs (tokenize + embed, in-process, no HTTP)
    sentence-transformers   SentenceTransformer.encode(chunk, batch_size=batch), on the CPU, with
                            torch.set_num_threads(threads) and one inter-op thread

each calling with `batch` texts at a time, cycling through the texts, for at least 3 s after a
warm-up call, one case after the other so that both see the same machine state, and prints
sentences per second, time per batch and the ratio inferd / sentence-transformers throughput.

The texts are generated, not read: two sets of 512 distinct texts (a fixed seed and word list),
built to an exact word-piece count with the model's own tokenizer, [CLS] and [SEP] included:

    short     11 to 13 word-pieces (mean 12): one sentence
    medium   120 to 136 word-pieces (mean 128): a paragraph of sentences

The spread is kept narrow because sentence-transformers pads each batch to its longest text;
the mean count of each set is checked with the tokenizer and printed.

Run from the repository root, in the sentence-transformers environment
(models/reference/README.md, "Sentence embeddings"):

    target/st-venv/bin/python benches/embeddings_vs_sentence_transformers.py
    target/st-venv/bin/python benches/embeddings_vs_sentence_transformers.py --sets short --threads 1,2
    target/st-venv/bin/python benches/embeddings_vs_sentence_transformers.py --st-only

It builds the example with `cargo build --release` first, unless --no-build is given;
--st-only times sentence-transformers alone and needs no Rust build.
"""

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "all-minilm-l6-v2"
EXAMPLE = ROOT / "target" / "release" / "examples" / "embed_throughput"
MEASURE_SECONDS = 3.0  # as the Rust example measures
SEED = 20240611

# Word-pieces per text, [CLS] and [SEP] included: each text's count is drawn uniformly from
# this range (inclusive).
TEXT_SETS = {"short": (11, 13), "medium": (120, 136)}

# Words per sentence, drawn uniformly; a sentence runs on rather than leave a remainder shorter
# than MIN_SENTENCE pieces; a comma follows a word (not the last) with COMMA_ODDS.
SENTENCE_WORDS = (6, 16)
MIN_SENTENCE = 5
COMMA_ODDS = 0.08

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were her she there been one all we their has would when if so no will more
can who out up about into than them only other new some time could these two may first then
do any like my now over such our man me even most made after also did many before must
through back years where much your way well down should because each just those people how
too little state good very make world still own see men work long here get both between life
being under never day same another know while last might great old year off come since
against go came right used take three small home water house city market river garden
morning evening window table kitchen street village teacher student doctor family
children friend letter story question answer problem reason method system service company
government country history music picture paper report price money energy weather summer
winter spring autumn forest mountain island ocean bridge station train airport library
museum hospital school office meeting project research science computer network language
simple quiet bright heavy careful sudden gentle ancient modern private public local
national natural personal common strong clear early late warm cold fresh green blue red
walked opened closed carried noticed explained decided wanted started finished followed
remembered discovered described believed expected received returned reached changed
quickly slowly carefully suddenly usually nearly almost perhaps always often together
however although during without around across behind beyond toward within among
unexpectedly approximately neighbourhood infrastructure photographer volunteers
""".split()


def chunks(texts, batch):
    """The successive `batch`-text calls, cycling through `texts` as the Rust example does."""
    start = 0
    while True:
        yield [texts[(start + i) % len(texts)] for i in range(batch)]
        start = (start + batch) % len(texts)


def make_texts(name, count, tokenizer):
    """`count` distinct texts for set `name`, each of a word-piece count drawn from its range.

    BERT's tokenizer splits on whitespace and punctuation before WordPiece, so a text's count
    is [CLS] and [SEP] plus its words' counts plus one per comma and full stop; main() checks
    every text with the tokenizer on the whole text.
    """
    lowest, highest = TEXT_SETS[name]
    rng = random.Random(f"{SEED}:{name}")
    cache = {}

    def pieces(word):
        if word not in cache:
            cache[word] = len(tokenizer(word, add_special_tokens=False)["input_ids"])
        return cache[word]

    texts, seen = [], set()
    while len(texts) < count:
        budget = rng.randint(lowest, highest) - 2  # pieces left, [CLS] and [SEP] taken
        sentences = []
        while budget > 0:
            words, length = [], rng.randint(*SENTENCE_WORDS)
            # Add words until the sentence has `length` of them, but let it run on rather than
            # leave fewer than MIN_SENTENCE pieces for a next one; stop when only "." fits.
            while budget > 1 and (len(words) < length or 0 < budget - 1 < MIN_SENTENCE):
                word = rng.choice(WORDS)
                word = word.capitalize() if not words else word
                if pieces(word) > budget - 1:
                    continue  # longer than what is left: draw again (most words are one piece)
                words.append(word)
                budget -= pieces(word)
                if len(words) < length - 1 and budget >= 3 and rng.random() < COMMA_ODDS:
                    words[-1] += ","  # room is left for a word after it and the full stop
                    budget -= 1
            sentences.append(" ".join(words) + ".")
            budget -= 1
        text = " ".join(sentences)
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def time_calls(call, calls_args):
    """Seconds per call, measured for at least MEASURE_SECONDS after one warm-up call."""
    call(next(calls_args))
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < MEASURE_SECONDS:
        call(next(calls_args))
        calls += 1
    return (time.perf_counter() - started) / calls


def st_seconds(model, texts, batch, threads):
    """sentence-transformers' seconds per `batch`-text encode() call on `threads` threads."""
    import torch

    torch.set_num_threads(threads)

    def encode(chunk):
        return model.encode(chunk, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)

    return time_calls(encode, chunks(texts, batch))


def inferd_run(texts_file, batch, engine, threads, variant):
    """The example's JSON line for one batch size: seconds_per_batch, tokens_per_sentence, ...;
    `variant` is (kernel level asked for through INFERD_CPU, None for the widest the CPU has;
    precision, None for the default)."""
    cpu, precision = variant
    env = dict(os.environ)
    env.pop("INFERD_CPU", None)
    if cpu:
        env["INFERD_CPU"] = cpu
    output = subprocess.run(
        [str(EXAMPLE), str(MODEL_DIR), str(texts_file), str(batch), engine, str(threads)] + ([precision] if precision else []),
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def cpu_name():
    """The CPU's model name and its vector extensions that matter here, from /proc/cpuinfo."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
    family = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    return f"{fields.get('model name', 'unknown CPU')} ({family}; {' '.join(f for f in wanted if f in flags)})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(TEXT_SETS), help="text sets (default: %(default)s)")
    parser.add_argument("--batches", default="1,8,32,128", help="texts per call (default: %(default)s)")
    parser.add_argument("--threads", default="2", help="thread counts, comma-separated (default: %(default)s)")
    parser.add_argument("--texts", type=int, default=512, help="distinct texts per set (default: %(default)s)")
    parser.add_argument("--engine", choices=("native", "tensor"), default="native", help="inferd's engine")
    parser.add_argument("--st-only", action="store_true", help="time sentence-transformers only (no Rust)")
    parser.add_argument("--no-build", action="store_true", help="use the example binary as it is")
    parser.add_argument(
        "--cpu",
        default="",
        help="inferd kernel levels to run side by side, comma-separated, each through INFERD_CPU "
        "(e.g. avx512,avx2; default: the widest this CPU has)",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also run inferd in bf16 (AVX-512 BF16 CPUs; f32 elsewhere)"
    )
    args = parser.parse_args()
    levels = [(level.strip(), None) for level in args.cpu.split(",") if level.strip()] or [(None, None)]
    if args.bf16:
        levels.append((None, "bf16"))
    sets = args.sets.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    if unknown := [name for name in sets if name not in TEXT_SETS]:
        raise SystemExit(f"unknown text sets {unknown}; there are {list(TEXT_SETS)}")
    if not (MODEL_DIR / "model.safetensors").exists():
        raise SystemExit(f"no model in {MODEL_DIR.relative_to(ROOT)}: run `bash models/fetch-models.sh`")

    import torch

    # Once per process, and before any parallel work; intra-op threads are set per case.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(thread_counts[0])

    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    if not args.st_only:
        if not args.no_build:
            build = ["cargo", "build", "--release", "--quiet", "--example", "embed_throughput"]
            subprocess.run(build, cwd=ROOT, check=True)
        if not EXAMPLE.exists():
            raise SystemExit(f"{EXAMPLE.relative_to(ROOT)} is not built")
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")

    # The texts, checked with the model's own tokenizer ([CLS] and [SEP] included).
    texts = {}
    for name in sets:
        texts[name] = make_texts(name, args.texts, model.tokenizer)
        counts = [len(ids) for ids in model.tokenizer(texts[name])["input_ids"]]
        lowest, highest = TEXT_SETS[name]
        if not lowest <= min(counts) <= max(counts) <= highest:
            raise SystemExit(f"{name}: word-piece counts {min(counts)}..{max(counts)}, not within {lowest}..{highest}")
        print(
            f"{name}: {len(texts[name])} texts, {sum(counts) / len(counts):.1f} word-pieces on average "
            f"({min(counts)} to {max(counts)}), e.g. {texts[name][0][:70]!r}..."
        )
    print(f"CPU: {cpu_name()}")
    print()

    label = {level: "inferd " + " ".join(part for part in level if part) if any(level) else "inferd" for level in levels}
    if args.st_only:
        header = f"{'set':<8}{'batch':>7}{'threads':>8}{'s-t sentences/s':>17}{'s-t/batch':>12}"
    else:
        header = f"{'set':<8}{'batch':>7}{'threads':>8}"
        header += "".join(f"{label[level] + ' /s':>22}{'ratio':>8}" for level in levels)
        header += f"{'s-t sentences/s':>17}{'s-t/batch':>12}"
    print(header)
    print("-" * len(header))
    warnings = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in sets:
            texts_file = Path(scratch) / f"{name}.json"
            texts_file.write_text(json.dumps(texts[name]), encoding="utf-8")
            for batch in batches:
                for threads in thread_counts:
                    if args.st_only:
                        theirs = st_seconds(model, texts[name], batch, threads)
                        row = f"{name:<8}{batch:>7}{threads:>8}{batch / theirs:>17,.1f}{theirs * 1e3:>10,.2f}ms"
                        print(row, flush=True)
                        continue
                    runs = {level: inferd_run(texts_file, batch, args.engine, threads, level) for level in levels}
                    theirs = st_seconds(model, texts[name], batch, threads)
                    row = f"{name:<8}{batch:>7}{threads:>8}"
                    for level, run in runs.items():
                        ours = run["seconds_per_batch"]
                        row += f"{batch / ours:>22,.1f}{theirs / ours:>7.2f}x"
                        # Every text is within the set's range, so the mean of any calls must be
                        # too: outside it, the example does not tokenize as the model does.
                        if level[0] and run["cpu_kernels"] != level[0]:
                            warnings.append(f"{label[level]} ran the {run['cpu_kernels']} kernels")
                        if level[1] and run["precision"] != level[1]:
                            warnings.append(f"{label[level]} ran in {run['precision']}")
                        lowest, highest = TEXT_SETS[name]
                        if not lowest <= run["tokens_per_sentence"] <= highest:
                            warnings.append(
                                f"{name}, batch {batch}, {label[level]}: inferd counted "
                                f"{run['tokens_per_sentence']} word-pieces per text, outside the set's "
                                f"{lowest}..{highest}"
                            )
                    print(row + f"{batch / theirs:>17,.1f}{theirs * 1e3:>10,.2f}ms", flush=True)

    print()
    for warning in warnings:
        print(f"warning: {warning}")
    if not args.st_only:
        print(f"ratio = s-t time / inferd time (above 1: inferd is faster); inferd engine: {args.engine}")
    print(
        f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__} on the CPU "
        f"(1 inter-op thread); {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
