#!/usr/bin/env python3
"""Text generation speed: inferd's /v1/completions beside llama.cpp, on the same GGUF model.

For SmolLM2-135M-Instruct (models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf,
fetched by models/fetch-models.sh), with the same prompts, greedy decoding and thread count,
this measures

    llama.cpp   through llama-cpp-python, in-process, with its low-level API: a context of
                llama.cpp's own default parameters (llama_context_default_params, so flash
                attention "auto") except n_threads = n_threads_batch = --threads, n_seq_max,
                n_ctx and kv_unified (on, as llama-server has it by default); llama_batch_init
                and llama_decode; the next token is the argmax of the output's logits (lowest
                id on ties), picked here, so EOS never stops it
    inferd      a running server, over HTTP: POST /v1/completions with "stream": true,
                "temperature": 0, "ignore_eos": true and "stream_options":
                {"include_usage": true}, read as server-sent events with http.client

and prints, per measurement, each engine's figure and the ratio inferd / llama.cpp:

    prefill          a prompt of --prompt-tokens (256) tokens of plain English; prompt tokens
                     per second. llama.cpp: the time of the one llama_decode call over the
                     prompt plus reading the last position's logits. inferd: max_tokens = 1,
                     from sending the request to the first chunk with text, so HTTP, JSON,
                     tokenization and scheduling are included. Each repetition has a prompt of
                     its own (the same ones for both engines), so no prefix cache can help.
    decode           one stream, --decode-tokens (128) new tokens from a short prompt; tokens
                     per second after the first: (tokens - 1) / (time of the last token - time
                     of the first token).
    N streams        --streams (4,16) prompts at once; aggregate decode tokens per second in
                     the window in which all N streams were decoding (defined at
                     `all_decoding_rate`). llama.cpp runs them as llama.cpp's own batch: one
                     context with n_seq_max = N, every prompt prefilled in one llama_decode,
                     then one llama_decode per step advancing all N sequences (one token each,
                     its own sequence id). inferd gets N concurrent streaming requests.

Every figure is the median of --repeat (3) repetitions after one warm-up. inferd's decode and
N-stream figures are measured in rounds (one stream, then each N, back to back), and its own
scaling, N-stream aggregate over single-stream tokens/s, is taken within each round: the
machine's speed drifts over minutes, and a ratio of figures measured minutes apart drifts
with it. The issue's targets, checked at the end: single-stream decode >= 0.9x llama.cpp,
prefill >= 0.7x, and inferd's aggregate at 8 streams >= 4x its single stream.

Run from the repository root. llama.cpp's side needs the venv of
models/reference/setup-llm-venv.sh; inferd's side needs only the standard library.

    target/llm-venv/bin/python benches/chat_vs_llama_cpp.py          # inferd at --url
    target/llm-venv/bin/python benches/chat_vs_llama_cpp.py \\
        --start-server target/release/inferd --config CONFIG.toml    # starts inferd itself
    target/llm-venv/bin/python benches/chat_vs_llama_cpp.py --only llama.cpp \\
        --decode-tokens 32 --repeat 1 --streams 4                     # a quick look
    python3 benches/chat_vs_llama_cpp.py --only inferd --json target/chat-bench.json

inferd's threads come from its configuration (the model's `threads`), not from this script:
serve the model with as many threads as --threads for a like-for-like comparison.

Run it on a quiet machine: llama.cpp's threads (OpenMP) wait for each other at every step, and
on 2 cores a build beside it cuts its figures several-fold. The script prints the share of the
CPUs other processes used while llama.cpp (and inferd, with --start-server) was measured.
"""

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = ROOT / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CONFIG = ROOT / "models" / "default.toml"
SERVER_LOG = ROOT / "target" / "chat-bench-server.log"
SEED = 20240611
TARGETS = {"prefill": 0.7, "decode": 0.9}  # inferd / llama.cpp, from the issue
SCALING_TARGET = (8, 4.0)  # inferd at 8 streams / inferd at 1 stream, from the issue

# Words that SmolLM2's tokenizer (GPT-2-style BPE) keeps as one token each, lower-case after a
# space, capitalized after a space and capitalized at the start of the text; "." is one token
# too. A prompt made of them has a known token count: words plus full stops (checked against
# llama.cpp's tokenizer, and each engine's own count is printed).
WORDS = """
the of and to in is that for it as was with be by on not this are or from at which but have an
they you her she there one all we their has would when if so no will more can who out up about
only other new some time could these two may first then do any like my now over such our even
most made after also did many before must through back years where much your way well down
should because each just those people how too little state good very make world still own see
work long here get both between life being under never day another know while last great old
year off come since go right used take three small home water house city market river window
table teacher student doctor family children letter story question answer problem reason method
system service government country history music picture paper report price money energy weather
summer winter spring forest ocean station train library school office project research science
computer network language simple ancient modern private public local national natural personal
common strong clear early late cold fresh green blue red suddenly usually nearly almost perhaps
always often together however although during without around across beyond within among
""".split()

# Short prompts for decoding: the single stream uses the first; N streams use the first N
# (cycled), so that concurrent sequences differ.
SHORT_PROMPTS = [
    f"Here is a long story about {subject}. Once upon a time,"
    for subject in (
        "a lighthouse keeper and a message in a bottle", "a baker who opened a shop on the moon",
        "two friends crossing a frozen lake", "a library that never closes",
        "a dog that learned to read the weather", "an old train station in the mountains",
        "a teacher and her first class of robots", "a river that changed its course overnight",
        "a map found inside a piano", "a gardener growing blue tomatoes",
        "the last bookshop in a busy city", "a doctor on a small island",
        "a bridge built by children", "a clock that ran backwards",
        "a fisherman and a talking seal", "a village that forgot its name",
    )
]


# ---------------------------------------------------------------------------------------------
# Prompts and the common measure


def long_prompt(index, tokens):
    """The prefill prompt `index`: sentences of WORDS totalling `tokens` tokens (words and full
    stops), each prompt starting differently (seeded by its index), the same on every run."""
    rng = random.Random(f"{SEED}:prefill:{index}")
    sentences, budget = [], tokens
    while budget > 0:
        if budget <= 17:
            length = budget - 1  # the last sentence takes what is left
        else:
            length = rng.randint(6, 16)
            if budget - length - 1 < 3:
                length = budget - 4  # leave room for a last sentence of two words at least
        words = [rng.choice(WORDS) for _ in range(length)]
        sentences.append(" ".join([words[0].capitalize()] + words[1:]) + ".")
        budget -= length + 1
    return " ".join(sentences)


def all_decoding_rate(streams):
    """Aggregate decode tokens per second of concurrent streams, and the window it is over.

    Each stream is a dict with "times" (when each piece of output arrived: a generated token
    for llama.cpp, a streamed chunk with text for inferd) and "tokens" (tokens generated; for
    inferd the usage's completion_tokens, so that a chunk carrying two tokens counts twice).
    The window runs from the moment the last stream got its first token (max of the first
    times) to the moment the first stream got its last token (min of the last times): in it
    every stream was decoding. The rate is the tokens that arrived in the window, first
    tokens excluded (times in (start, end]; each chunk counted as tokens / chunks of its
    stream), divided by the window's length. For llama.cpp's batch every stream gets its
    token from the same llama_decode, so this is N x (tokens - 1) / (last step - first step).
    With one stream it is the single-stream figure. Returns (rate or None, seconds, tokens);
    None when the streams never all decoded at once (e.g. the server ran them one by one).
    """
    start = max(s["times"][0] for s in streams)
    end = min(s["times"][-1] for s in streams)
    if end <= start:
        return None, 0.0, 0.0
    tokens = sum(
        s["tokens"] / len(s["times"]) * sum(1 for t in s["times"] if start < t <= end) for s in streams
    )
    return tokens / (end - start), end - start, tokens


def overall_rate(streams, started):
    """All tokens generated / time from the start (requests sent, or prefill begun) to the
    last token anywhere: throughput with prefill and stragglers included."""
    return sum(s["tokens"] for s in streams) / (max(s["times"][-1] for s in streams) - started)


# ---------------------------------------------------------------------------------------------
# llama.cpp


class LlamaCpp:
    """llama.cpp through llama-cpp-python's low-level API, on contexts made here."""

    def __init__(self, threads, flash_attn, kv_unified):
        try:
            import llama_cpp
            import numpy
            from llama_cpp import Llama
        except ImportError as err:
            raise SystemExit(
                f"llama.cpp's side needs llama-cpp-python ({err}): run this with target/llm-venv/bin/python "
                "(bash models/reference/setup-llm-venv.sh), or pass --only inferd"
            )
        self.lib, self.np, self.threads, self.kv_unified = llama_cpp, numpy, threads, kv_unified
        self.flash_attn = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                           "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
        # Llama loads the weights and the tokenizer (verbose=False also quiets llama.cpp's log
        # for the contexts made below); its own small context is not used.
        self.llm = Llama(model_path=str(MODEL_FILE), n_ctx=256, n_threads=threads, n_threads_batch=threads,
                         verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = self.llm.n_vocab()
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.version = llama_cpp.__version__
        self.system_info = llama_cpp.llama_print_system_info().decode("utf-8").strip()

    def tokenize(self, text):
        """Token ids as llama.cpp's server would make them (BOS as the vocabulary says)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos, special=False)

    def context(self, n_seq, ctx_per_seq, n_batch):
        """A context for `n_seq` sequences of up to `ctx_per_seq` tokens each."""
        lib = self.lib
        params = lib.llama_context_default_params()
        # Without kv_unified, n_ctx is split evenly between the sequences; with it, they share it.
        params.n_ctx = n_seq * ctx_per_seq
        params.n_batch = max(params.n_batch, n_batch)
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = self.threads
        params.flash_attn_type = self.flash_attn
        params.kv_unified = self.kv_unified
        ctx = lib.llama_init_from_model(self.llm.model, params)
        if not ctx:
            raise SystemExit(f"llama.cpp could not make a context for {n_seq} sequences of {ctx_per_seq} tokens")
        if lib.llama_n_ctx_seq(ctx) < ctx_per_seq - 256:  # llama.cpp pads n_ctx; it must not shrink much
            raise SystemExit(f"llama.cpp gives {lib.llama_n_ctx_seq(ctx)} tokens per sequence, not {ctx_per_seq}")
        return ctx

    def settings(self, ctx):
        lib = self.lib
        return {"n_ctx": lib.llama_n_ctx(ctx), "n_ctx_seq": lib.llama_n_ctx_seq(ctx), "n_batch": lib.llama_n_batch(ctx),
                "n_ubatch": lib.llama_n_ubatch(ctx), "n_seq_max": lib.llama_n_seq_max(ctx),
                "n_threads": lib.llama_n_threads(ctx), "n_threads_batch": lib.llama_n_threads_batch(ctx),
                "flash_attn_type": self.flash_attn, "kv_unified": self.kv_unified}

    def free(self, ctx):
        self.lib.llama_free(ctx)

    def text(self, ids):
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def generate(self, ctx, prompts, new_tokens):
        """Greedy decoding of every prompt at once, each as its own sequence, EOS ignored.

        The prompts go into one llama_decode (logits of each prompt's last position only),
        then each step is one llama_decode with one token per sequence. Returns (started, streams):
        `started` just before the first llama_decode, and per stream {"times": when each new
        token was known (after its llama_decode and argmax), "tokens", "ids", "prompt_tokens"}.
        """
        lib, np = self.lib, self.np
        n = len(prompts)
        batch = lib.llama_batch_init(max(n, sum(len(p) for p in prompts)), 0, 1)
        try:
            lib.llama_memory_clear(lib.llama_get_memory(ctx), True)

            def put(i, token, pos, seq, logits):
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = logits

            def argmax(i):
                return int(np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,)).argmax())

            def decode():
                rc = lib.llama_decode(ctx, batch)
                if rc != 0:
                    raise SystemExit(f"llama_decode failed ({rc}) with {batch.n_tokens} tokens")

            outputs, i = [], 0
            for seq, ids in enumerate(prompts):
                for pos, token in enumerate(ids):
                    put(i, token, pos, seq, pos == len(ids) - 1)
                    i += 1
                outputs.append(i - 1)
            batch.n_tokens = i
            streams = [{"times": [], "ids": [], "prompt_tokens": len(ids)} for ids in prompts]
            positions = [len(ids) for ids in prompts]

            started = time.perf_counter()
            decode()
            for step in range(new_tokens):
                if step:
                    for seq, stream in enumerate(streams):
                        put(seq, stream["ids"][-1], positions[seq], seq, True)
                        positions[seq] += 1
                    batch.n_tokens = n
                    decode()
                    outputs = range(n)
                chosen = [argmax(i) for i in outputs]  # reading the logits waits for the computation
                now = time.perf_counter()
                for stream, token in zip(streams, chosen):
                    stream["ids"].append(token)
                    stream["times"].append(now)
        finally:
            lib.llama_batch_free(batch)
        for stream in streams:
            stream["tokens"] = len(stream["ids"])
        return started, streams


# ---------------------------------------------------------------------------------------------
# inferd


class InferdError(Exception):
    pass


class Inferd:
    """A running inferd server's /v1/completions, streamed, with the standard library."""

    def __init__(self, url, model, api_key, timeout):
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https"):
            raise SystemExit(f"--url must be http:// or https://, not {url}")
        self.url, self.model, self.timeout = url, model, timeout
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/")
        self.headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"

    def connection(self):
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=self.timeout)

    def get(self, path):
        """(status, body) of GET `path`; raises OSError when the server cannot be reached."""
        conn = self.connection()
        try:
            conn.request("GET", self.base + path, headers=self.headers)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", errors="replace")
        finally:
            conn.close()

    def check(self):
        """Stop with a clear message unless the server answers, is ready and serves the model.
        Returns the model's metadata (GET /v2/models/{name}), or None if it has none."""
        try:
            status, body = self.get("/v2/health/ready")
        except OSError as err:
            raise SystemExit(
                f"inferd is not reachable at {self.url} ({err}).\n"
                "Start it first, e.g. `cargo run --release -- serve --config CONFIG` with the model in "
                "CONFIG, or pass --start-server target/release/inferd --config CONFIG; "
                "or measure llama.cpp alone with --only llama.cpp"
            )
        if status != 200:
            raise SystemExit(f"inferd at {self.url} is not ready: GET /v2/health/ready answered {status} {body[:300]}")
        status, body = self.get(f"/v2/models/{urllib.parse.quote(self.model)}")
        if status in (401, 403):
            raise SystemExit(f"inferd at {self.url} refused the credentials ({status}): pass --api-key KEY")
        if status == 404:
            raise SystemExit(f"inferd at {self.url} serves no model named {self.model!r} (see GET /v1/models); "
                             "pass --model NAME")
        if status != 200:
            print(f"warning: GET /v2/models/{self.model} answered {status}: {body[:200]}", file=sys.stderr)
            return None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return None

    def stream(self, prompt, max_tokens, barrier=None):
        """One streamed completion: {"sent", "times" (arrival of each chunk with text), "text",
        "tokens" (usage.completion_tokens), "prompt_tokens", "chunks"}. With `barrier`, connects
        first and sends when every thread is connected."""
        body = json.dumps({
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
        }).encode("utf-8")
        conn = self.connection()
        try:
            conn.connect()
            if barrier is not None:
                barrier.wait()
            sent = time.perf_counter()
            conn.request("POST", self.base + "/v1/completions", body=body, headers=self.headers)
            response = conn.getresponse()
            if response.status != 200:
                detail = response.read().decode("utf-8", errors="replace")[:500]
                raise InferdError(f"POST /v1/completions answered {response.status}: {detail}")
            times, text, usage, done, chunks = [], [], None, False, 0
            while True:
                line = response.readline()
                now = time.perf_counter()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, event: lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    response.read()  # the end of the chunked body, so the connection closes cleanly
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    raise InferdError(f"a data line that is not JSON: {data[:200]!r}")
                if "error" in chunk:
                    raise InferdError(f"error in the stream: {chunk['error']}")
                chunks += 1
                piece = "".join(choice.get("text") or "" for choice in chunk.get("choices") or [])
                if piece:
                    times.append(now)
                    text.append(piece)
                if chunk.get("usage"):
                    usage = chunk["usage"]
        finally:
            conn.close()
        if not done:
            raise InferdError("the stream ended without data: [DONE]")
        if usage is None:
            raise InferdError("no usage in the stream (stream_options.include_usage is not honoured)")
        if not times:
            raise InferdError(f"no chunk with text in {chunks} chunks")
        return {"sent": sent, "times": times, "text": "".join(text), "tokens": usage["completion_tokens"],
                "prompt_tokens": usage["prompt_tokens"], "chunks": len(times)}

    def concurrent(self, prompts, max_tokens):
        """`len(prompts)` streams at once, one thread and connection each."""
        barrier = threading.Barrier(len(prompts))
        results = [None] * len(prompts)

        def run(index):
            try:
                results[index] = self.stream(prompts[index], max_tokens, barrier)
            except BaseException as err:  # noqa: BLE001 - reported by the caller
                barrier.abort()
                results[index] = err

        workers = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        for result in results:
            if isinstance(result, BaseException):
                raise InferdError(f"one of {len(prompts)} concurrent streams failed: {result!r}")
        return results


def start_server(binary, config, inferd, wait_seconds):
    """`binary serve --config config --listen HOST:PORT` (from --url), waited on until ready."""
    binary = Path(binary)
    if not binary.exists():
        raise SystemExit(f"--start-server: no {binary}; build it with `cargo build --release`")
    try:
        inferd.get("/v2/health/ready")
        raise SystemExit(f"--start-server: something already answers at {inferd.url}; stop it or pick another --url")
    except OSError:
        pass
    host = "127.0.0.1" if inferd.host == "localhost" else inferd.host
    listen = f"[{host}]:{inferd.port}" if ":" in host else f"{host}:{inferd.port}"
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    log = open(SERVER_LOG, "wb")
    command = [str(binary), "serve", "--config", str(config), "--listen", listen]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + wait_seconds
    while True:
        if process.poll() is not None:
            log.close()
            raise SystemExit(f"inferd exited ({process.returncode}) before becoming ready; its log "
                             f"({SERVER_LOG.relative_to(ROOT)}):\n{SERVER_LOG.read_text(errors='replace')[-4000:]}")
        try:
            if inferd.get("/v2/health/ready")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            log.close()
            raise SystemExit(f"inferd was not ready after {wait_seconds:.0f} s; see {SERVER_LOG.relative_to(ROOT)}")
        time.sleep(0.1)
    print(f"started: {' '.join(command)} (log: {SERVER_LOG.relative_to(ROOT)})")
    return process


def stop_server(process):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------------------------
# Measurements


def repeated(repeat, run):
    """One warm-up call of run(index) (index 0), then `repeat` calls (1..repeat)."""
    run(0)
    return [run(i) for i in range(1, repeat + 1)]


def summarize(reps, keys):
    """Median of each key over the repetitions, plus the repetitions themselves."""
    out = {}
    for key in keys:
        values = [r[key] for r in reps]
        out[key] = None if any(v is None for v in values) else statistics.median(values)
    out["repetitions"] = reps
    return out


def measure_llama(engine, args, prefill_prompts):
    results = {}
    short = [engine.tokenize(p) for p in SHORT_PROMPTS]
    long_ids = [engine.tokenize(p) for p in prefill_prompts]
    per_seq = max(max(map(len, long_ids)) + 1, max(map(len, short)) + args.decode_tokens)
    per_seq = -(-(per_seq + 16) // 256) * 256

    ctx = engine.context(1, per_seq, max(map(len, long_ids)))
    results["context"] = engine.settings(ctx)

    def prefill(index):
        started, (stream,) = engine.generate(ctx, [long_ids[index]], 1)
        seconds = stream["times"][0] - started
        return {"prompt_tokens": stream["prompt_tokens"], "seconds": seconds,
                "tokens_per_s": stream["prompt_tokens"] / seconds}

    results["prefill"] = summarize(repeated(args.repeat, prefill), ("prompt_tokens", "seconds", "tokens_per_s"))

    def decode(_):
        started, (stream,) = engine.generate(ctx, [short[0]], args.decode_tokens)
        seconds = stream["times"][-1] - stream["times"][0]
        return {"prompt_tokens": stream["prompt_tokens"], "tokens": stream["tokens"],
                "first_token_s": stream["times"][0] - started, "seconds": seconds,
                "tokens_per_s": (stream["tokens"] - 1) / seconds, "text": engine.text(stream["ids"])}

    results["decode"] = summarize(repeated(args.repeat, decode),
                                  ("prompt_tokens", "tokens", "first_token_s", "seconds", "tokens_per_s"))
    engine.free(ctx)

    for n in args.streams:
        prompts = [short[i % len(short)] for i in range(n)]
        ctx = engine.context(n, per_seq, sum(map(len, prompts)))

        def streams(_):
            started, runs = engine.generate(ctx, prompts, args.decode_tokens)
            rate, window, tokens = all_decoding_rate(runs)
            return {"tokens_per_s": rate, "window_s": window, "window_tokens": tokens,
                    "overall_tokens_per_s": overall_rate(runs, started),
                    "tokens": sum(r["tokens"] for r in runs)}

        summary = summarize(repeated(args.repeat, streams),
                            ("tokens_per_s", "window_s", "window_tokens", "overall_tokens_per_s", "tokens"))
        summary["mode"] = f"one llama.cpp batch: llama_decode advances all {n} sequences per step"
        summary["context"] = engine.settings(ctx)
        results[f"streams_{n}"] = summary
        engine.free(ctx)
    return results


def measure_inferd(inferd, args, prefill_prompts):
    results = {}
    warnings = []

    def prefill(index):
        run = inferd.stream(prefill_prompts[index], 1)
        seconds = run["times"][0] - run["sent"]
        return {"prompt_tokens": run["prompt_tokens"], "seconds": seconds,
                "tokens_per_s": run["prompt_tokens"] / seconds}

    results["prefill"] = summarize(repeated(args.repeat, prefill), ("prompt_tokens", "seconds", "tokens_per_s"))

    def decode(_):
        run = inferd.stream(SHORT_PROMPTS[0], args.decode_tokens)
        if run["tokens"] != args.decode_tokens:
            warnings.append(f"decode: {run['tokens']} completion tokens, not {args.decode_tokens} (ignore_eos?)")
        seconds = run["times"][-1] - run["times"][0]
        return {"prompt_tokens": run["prompt_tokens"], "tokens": run["tokens"], "chunks": run["chunks"],
                "first_token_s": run["times"][0] - run["sent"], "seconds": seconds,
                "tokens_per_s": (run["tokens"] - 1) / seconds if seconds > 0 else None, "text": run["text"]}

    def streams(n, _):
        prompts = [SHORT_PROMPTS[i % len(SHORT_PROMPTS)] for i in range(n)]
        runs = inferd.concurrent(prompts, args.decode_tokens)
        if any(r["tokens"] != args.decode_tokens for r in runs):
            warnings.append(f"{n} streams: completion tokens {sorted({r['tokens'] for r in runs})}, "
                            f"not {args.decode_tokens}")
        rate, window, tokens = all_decoding_rate(runs)
        if rate is None:
            warnings.append(f"{n} streams: never all decoding at once (did the server run them in turn?)")
        return {"tokens_per_s": rate, "window_s": window, "window_tokens": tokens,
                "overall_tokens_per_s": overall_rate(runs, min(r["sent"] for r in runs)),
                "tokens": sum(r["tokens"] for r in runs)}

    # Rounds: one stream, then each stream count, back to back, so that every N-stream figure
    # has a single-stream figure measured seconds before it (this machine's speed drifts over
    # minutes; inferd's own scaling is the ratio within each round).
    rounds = repeated(args.repeat, lambda i: {"decode": decode(i), **{n: streams(n, i) for n in args.streams}})
    results["decode"] = summarize([r["decode"] for r in rounds],
                                  ("prompt_tokens", "tokens", "chunks", "first_token_s", "seconds", "tokens_per_s"))
    results["scaling"] = {}
    for n in args.streams:
        summary = summarize([r[n] for r in rounds],
                            ("tokens_per_s", "window_s", "window_tokens", "overall_tokens_per_s", "tokens"))
        summary["mode"] = f"{n} concurrent streaming HTTP requests"
        results[f"streams_{n}"] = summary
        paired = [ratio(r[n]["tokens_per_s"], r["decode"]["tokens_per_s"]) for r in rounds]
        results["scaling"][n] = {"rounds": paired,
                                 "median": None if None in paired else statistics.median(paired)}
    results["warnings"] = sorted(set(warnings))
    return results


# ---------------------------------------------------------------------------------------------
# Output


def machine():
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu or platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "usable_cpus": usable, "platform": platform.platform(), "python": platform.python_version()}


def cpu_ticks(pids):
    """(busy clock ticks of the whole machine, ticks of the processes `pids`), from /proc; None
    where there is no /proc. A process's ticks include all its threads."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (guest is in user)
        own = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            after = stat[stat.rindex(")") + 2:].split()
            own += int(after[11]) + int(after[12])  # utime, stime
        return busy, own
    except (OSError, ValueError, IndexError):
        return None


class OtherLoad:
    """The share of the machine's CPUs that processes other than `pids` kept busy while the
    block ran: a benchmark on a busy machine (e.g. a build beside it) reads low, and llama.cpp's
    OpenMP threads, which wait for each other at every step, suffer most."""

    def __init__(self, pids):
        self.pids, self.share = pids, None

    def __enter__(self):
        self.start, self.ticks = time.monotonic(), cpu_ticks(self.pids)
        return self

    def __exit__(self, *exc):
        end = cpu_ticks(self.pids)
        if self.ticks and end:
            capacity = (time.monotonic() - self.start) * os.sysconf("SC_CLK_TCK") * os.cpu_count()
            self.share = max(0.0, ((end[0] - self.ticks[0]) - (end[1] - self.ticks[1])) / capacity)
        return False


def fmt(value, digits):
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(ours, theirs):
    return ours / theirs if ours and theirs else None


def table(title, rows, llama, inferd, rate_key, target=None):
    """One measurement: rows of (label, key, digits), the last compared; returns the ratio."""
    print(f"\n{title}")
    header = f"{'':<34}{'llama.cpp':>14}{'inferd':>14}{'inferd/llama.cpp':>19}"
    print(header)
    print("-" * len(header))
    for label, key, digits in rows:
        print(f"{label:<34}{fmt(llama and llama.get(key), digits):>14}{fmt(inferd and inferd.get(key), digits):>14}")
    r = ratio(inferd and inferd.get(rate_key), llama and llama.get(rate_key))
    verdict = ""
    if target is not None and r is not None:
        verdict = f"   target >= {target:.2f}x: {'met' if r >= target else 'NOT met'}"
    print(f"{'  ratio':<34}{'':>14}{'':>14}{fmt(r, 2) + 'x' if r is not None else '-':>19}{verdict}")
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="See the module docstring for what each figure measures.")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp's threads (default: %(default)s); "
                        "inferd's come from its configuration")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions after one warm-up (default: %(default)s)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="prefill prompt length (default: %(default)s)")
    parser.add_argument("--decode-tokens", type=int, default=128, help="new tokens per stream (default: %(default)s)")
    parser.add_argument("--streams", default="4,16", help="concurrent stream counts, comma-separated; "
                        "empty for none (default: %(default)s)")
    parser.add_argument("--only", choices=("llama.cpp", "inferd"), help="measure one engine alone")
    parser.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto",
                        help="llama.cpp's flash attention (default: %(default)s, llama.cpp's own default)")
    parser.add_argument("--kv-unified", choices=("on", "off"), default="on",
                        help="llama.cpp's unified KV cache for N streams (default: %(default)s, as llama-server "
                        "sets it by default; the library's own default is off)")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inferd's address (default: %(default)s)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="inferd's model name (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("INFERD_API_KEY"),
                        help="inferd API key (default: $INFERD_API_KEY, else none)")
    parser.add_argument("--timeout", type=float, default=300, help="HTTP timeout in seconds (default: %(default)s)")
    parser.add_argument("--start-server", metavar="INFERD_BINARY",
                        help="start `INFERD_BINARY serve --config CONFIG` on --url's address, and stop it at the end")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG.relative_to(ROOT)),
                        help="configuration for --start-server (default: %(default)s)")
    parser.add_argument("--start-wait", type=float, default=300, help="seconds to wait for readiness (default: %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure to PATH")
    args = parser.parse_args()
    args.streams = [int(n) for n in args.streams.split(",") if n.strip()]
    if args.repeat < 1 or args.decode_tokens < 2 or args.prompt_tokens < 4 or any(n < 1 for n in args.streams):
        raise SystemExit("--repeat >= 1, --decode-tokens >= 2, --prompt-tokens >= 4 and streams >= 1, please")
    run_llama = args.only in (None, "llama.cpp")
    run_inferd = args.only in (None, "inferd")

    info = machine()
    print(f"CPU: {info['cpu']}; {info['cpus']} CPUs ({info['usable_cpus']} usable by this process); "
          f"{args.threads} threads for llama.cpp")
    prefill_prompts = [long_prompt(i, args.prompt_tokens) for i in range(args.repeat + 1)]
    report = {"machine": info, "settings": {k: v for k, v in vars(args).items() if k != "api_key"},
              "model_file": str(MODEL_FILE.relative_to(ROOT)), "short_prompt": SHORT_PROMPTS[0],
              "prefill_prompt_example": prefill_prompts[1]}

    llama = inferd_results = None
    loads = {}
    server = None
    inferd = None
    if run_inferd:
        inferd = Inferd(args.url, args.model, args.api_key, args.timeout)
        if args.start_server:
            server = start_server(args.start_server, args.config, inferd, args.start_wait)
    try:
        if run_inferd:
            metadata = inferd.check()
            parameters = (metadata or {}).get("parameters")
            print(f"inferd: {args.url}, model {args.model!r}" + (f", parameters {json.dumps(parameters)}" if parameters else ""))
            report["inferd"] = {"url": args.url, "model": args.model, "metadata": metadata}
        if run_llama:
            if not MODEL_FILE.exists():
                raise SystemExit(f"no {MODEL_FILE.relative_to(ROOT)}: run `bash models/fetch-models.sh`")
            engine = LlamaCpp(args.threads, args.flash_attn, args.kv_unified == "on")
            print(f"llama.cpp: llama-cpp-python {engine.version}; {engine.system_info}; flash attention "
                  f"{args.flash_attn}, unified KV cache {args.kv_unified}")
            counts = sorted({len(engine.tokenize(p)) for p in prefill_prompts})
            if counts != [args.prompt_tokens]:
                print(f"warning: llama.cpp counts {counts} tokens in the prefill prompts, not {args.prompt_tokens}")
            print("measuring llama.cpp ...", flush=True)
            with OtherLoad([os.getpid()]) as load:
                llama = measure_llama(engine, args, prefill_prompts)
            report["llama.cpp"] = {"llama_cpp_python": engine.version, "system_info": engine.system_info,
                                   "other_cpu_load": load.share, **llama}
            loads["llama.cpp"] = load.share
        if run_inferd:
            print("measuring inferd ...", flush=True)
            try:
                # Without the server's process id, its own work counts as other load: not shown.
                with OtherLoad([os.getpid()] + ([server.pid] if server else [])) as load:
                    inferd_results = measure_inferd(inferd, args, prefill_prompts)
                if server:
                    loads["inferd"] = load.share
            except InferdError as err:
                raise SystemExit(f"inferd at {args.url}: {err}")
            except OSError as err:
                raise SystemExit(f"inferd at {args.url} stopped answering: {err}")
            report["inferd"].update(inferd_results)
    finally:
        if server is not None:
            stop_server(server)

    get = lambda results, key: results and results.get(key)  # noqa: E731
    ratios = {}
    ratios["prefill"] = table(
        f"Prefill: prompt tokens/s, a {args.prompt_tokens}-token prompt (median of {args.repeat} after 1 warm-up)",
        [("prompt tokens seen", "prompt_tokens", 0), ("seconds to first token", "seconds", 4),
         ("prompt tokens/s", "tokens_per_s", 1)],
        get(llama, "prefill"), get(inferd_results, "prefill"), "tokens_per_s", TARGETS["prefill"])
    ratios["decode"] = table(
        f"Single-stream decode: {args.decode_tokens} new tokens, greedy, EOS ignored; "
        f"tokens/s after the first (median of {args.repeat})",
        [("prompt tokens seen", "prompt_tokens", 0), ("tokens generated", "tokens", 0),
         ("seconds to first token", "first_token_s", 4), ("seconds first to last token", "seconds", 3),
         ("decode tokens/s", "tokens_per_s", 1)],
        get(llama, "decode"), get(inferd_results, "decode"), "tokens_per_s", TARGETS["decode"])
    for n in args.streams:
        key = f"streams_{n}"
        ratios[key] = table(
            f"{n} concurrent streams: aggregate decode tokens/s while all {n} were decoding "
            f"(median of {args.repeat})",
            [("tokens generated", "tokens", 0), ("all-decoding window, s", "window_s", 3),
             ("tokens in the window", "window_tokens", 0),
             ("tokens/s overall (prefill incl.)", "overall_tokens_per_s", 1),
             ("aggregate decode tokens/s", "tokens_per_s", 1)],
            get(llama, key), get(inferd_results, key), "tokens_per_s")
        if llama:
            print(f"  llama.cpp: {llama[key]['mode']}")

    if run_inferd and args.streams:
        print(f"\ninferd's own scaling: aggregate decode tokens/s at N streams over one stream's, each "
              f"round measured back to back (one stream, then {', '.join(map(str, args.streams))})")
        for n in args.streams:
            scaling = inferd_results["scaling"][n]
            verdict = ""
            if n == SCALING_TARGET[0] and scaling["median"] is not None:
                met = scaling["median"] >= SCALING_TARGET[1]
                verdict = f"   target >= {SCALING_TARGET[1]:.1f}x: {'met' if met else 'NOT met'}"
                report["targets_scaling"] = {"streams": n, "at_least": SCALING_TARGET[1],
                                             "median": scaling["median"], "met": met}
            rounds = ", ".join(fmt(r, 2) + "x" if r is not None else "-" for r in scaling["rounds"])
            print(f"  {n:>3} streams: rounds {rounds}; median {fmt(scaling['median'], 2)}x{verdict}")

    print()
    if run_inferd:
        print("inferd's figures are seen by an HTTP client: time to first token includes HTTP, JSON, "
              "tokenization and scheduling; llama.cpp's are in-process (llama_decode and argmax only).")
        for warning in inferd_results["warnings"]:
            print(f"warning: inferd: {warning}")
    for name, share in loads.items():
        if share is not None:
            note = "  WARNING: the figures are not reliable" if share > 0.1 else ""
            print(f"other processes kept {share:.0%} of the CPUs busy while {name} was measured{note}")
    if run_inferd and not server:
        print("(the load of other processes during inferd's measurement is only known with --start-server)")
    if run_llama and run_inferd:
        # Both decode greedily from the same prompt: the same text says they did the same work
        # (a difference late in the text can be rounding in different kernels).
        ours, theirs = inferd_results["decode"]["repetitions"][0]["text"], llama["decode"]["repetitions"][0]["text"]
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        print("greedy continuation of the decode prompt: " + (
            "the same text from both engines" if ours == theirs else
            f"the same for {same} characters, then different: inferd {ours[same:same + 40]!r}, "
            f"llama.cpp {theirs[same:same + 40]!r}"))
        report["same_greedy_text"] = ours == theirs
        met = {name: (r is not None and r >= TARGETS[name]) for name, r in ratios.items() if name in TARGETS}
        print("targets: " + "; ".join(
            f"{name} >= {TARGETS[name]:.1f}x llama.cpp: {fmt(ratios[name], 2)}x, {'met' if met[name] else 'NOT met'}"
            for name in TARGETS))
        report["targets"] = {name: {"at_least": TARGETS[name], "ratio": ratios[name], "met": met[name]}
                             for name in TARGETS}
    report["ratios"] = ratios
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
