#!/usr/bin/env python3
"""Tree-model throughput: inferd's native engine beside XGBoost's and LightGBM's own predictors.

For each model, on the same rows (the model's golden rows, missing values included, tiled to
each batch size) and the same thread counts, this times

    inferd        examples/forest_throughput.rs (the native engine, in-process, no HTTP)
    xgboost       Booster.inplace_predict (nthread set per case)
    lightgbm      Booster.predict (num_threads set per case)

each for at least 1.5 s after a warm-up call, one case after the other so that both see the same
machine state, and prints rows per second, time per batch and the ratio inferd / library.

Run from the repository root, in the reference environment (models/reference/README.md):

    target/ref-venv/bin/python benches/trees_vs_libraries.py
    target/ref-venv/bin/python benches/trees_vs_libraries.py --models breast-cancer-xgboost --threads 1

It builds the example with `cargo build --release` first.
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEASURE_SECONDS = 1.5
DEFAULT_MODELS = [
    "breast-cancer-xgboost",
    "iris-xgboost",
    "diabetes-xgboost",
    "breast-cancer-lightgbm",
    "iris-lightgbm",
    "diabetes-lightgbm",
]


def model_file(name):
    """The model's library and file."""
    for library, extension in (("xgboost", "json"), ("lightgbm", "txt")):
        path = ROOT / "models" / name / f"model.{extension}"
        if path.exists():
            return library, path
    raise SystemExit(f"no bundled model named {name}")


def golden_rows(name):
    with open(ROOT / "tests" / "golden" / f"{name}.json", encoding="utf-8") as f:
        inputs = json.load(f)["inputs"]
    return np.array([[np.nan if v is None else v for v in row] for row in inputs], dtype=np.float64)


def tile(rows, batch):
    """`batch` rows cycled from `rows`, as the Rust example cycles them."""
    repeats = batch // len(rows) + 1
    return np.ascontiguousarray(np.tile(rows, (repeats, 1))[:batch])


def time_calls(call):
    """Seconds per call, measured for at least MEASURE_SECONDS after one warm-up call."""
    call()
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < MEASURE_SECONDS:
        call()
        calls += 1
    return (time.perf_counter() - started) / calls


def library_predictor(library, path, threads):
    if library == "xgboost":
        import xgboost

        booster = xgboost.Booster(model_file=str(path))
        booster.set_param({"nthread": threads})
        return lambda x: booster.inplace_predict(x, predict_type="value")
    import lightgbm

    booster = lightgbm.Booster(model_file=str(path))
    return lambda x: booster.predict(x, num_threads=threads)


def inferd_seconds(example, library, path, name, batch, threads):
    output = subprocess.run(
        [str(example), library, str(path), str(ROOT / "tests" / "golden" / f"{name}.json"), str(batch), str(threads)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["seconds_per_batch"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--batches", default="1,64,1024,65536")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "forest_throughput"], cwd=ROOT, check=True)
    example = ROOT / "target" / "release" / "examples" / "forest_throughput"

    header = f"{'model':<24}{'batch':>7}{'threads':>8}{'inferd rows/s':>15}{'library rows/s':>16}{'inferd/batch':>14}{'library/batch':>15}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        library, path = model_file(name)
        rows = golden_rows(name)
        for batch in map(int, args.batches.split(",")):
            x = tile(rows, batch)
            for threads in map(int, args.threads.split(",")):
                ours = inferd_seconds(example, library, path, name, batch, threads)
                predict = library_predictor(library, path, threads)
                theirs = time_calls(lambda: predict(x))
                print(
                    f"{name:<24}{batch:>7}{threads:>8}{batch / ours:>15,.0f}{batch / theirs:>16,.0f}"
                    f"{ours * 1e6:>12,.1f}us{theirs * 1e6:>13,.1f}us{theirs / ours:>7.2f}x",
                    flush=True,
                )
    print(f"\nratio = library time / inferd time (above 1: inferd is faster); {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
