"""What inferd's request path costs over the HTTP stack: inferd beside a bare axum server.

The bare server (`examples/bare_axum.rs`) is built from the same axum, hyper, tokio and
serde_json as inferd; it parses each body and answers a response of the same shape, and does
nothing else. Both are loaded by the same load generator (Debian's `wrk`) with the same
request, one after the other, and the script prints requests per second, latency percentiles
and the ratio inferd / bare for each case:

- v2 one-row infer on `iris-logistic`, JSON tensors and binary tensors;
- `/v1/embeddings` with one short text on `all-minilm-l6-v2` (where the model's own time is
  most of the answer, so the ratio is far below 1 by nature);
- inferd under its default logging (`info`: one line per request), `--log warn`, and
  `--log-format json`; and one connection at a time (`-c1`) for latency.

    cargo build --release --bin inferd --example bare_axum   # after models/fetch-models.sh
    python3 benches/http_path.py                               # apt-get install wrk

The load generator shares the machine with the server, as it does on a 2-core VM whose
clients are local sidecars: figures compare the two servers, not the machine.
"""

import argparse
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IRIS_JSON = (
    '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}'
).encode()


def iris_binary():
    """A one-row v2 request with its tensor as raw little-endian FP32 after the JSON header."""
    import struct

    header = (
        '{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",'
        ' "parameters": {"binary_data_size": 16}}]}'
    ).encode()
    return header, header + struct.pack("<4f", 5.1, 3.5, 1.4, 0.2)


EMBEDDING = b'{"model": "all-minilm-l6-v2", "input": "How do I rotate the API keys of a production service?"}'


def cpu_name():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ready, what, seconds, process):
    """Polls `ready()` until it is true; exits if `process` ends first or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode} while waiting to {what}")
        try:
            if ready():
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"the server did not {what} within {seconds} s")


def answers_200(url):
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def listens(port):
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


def lua_string(data):
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def wrk(url, body, headers, connections, seconds, threads):
    """Runs wrk with a POST of `body`; returns (answered requests/s, p50 ms, p99 ms, refusals)."""
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body)}"]
    for name, value in headers.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    # Answered requests per second: refusals (429 when a slow model's queue is past its
    # max_queue_time) are counted apart, not as throughput.
    total, elapsed, unit = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out).groups()
    elapsed = float(elapsed) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    def percentile(p):
        match = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = int(errors.group(1)) if errors else 0
    return (int(total) - errors) / elapsed, percentile(50), percentile(99), errors


def start(command, ready_url, log):
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: answers_200(ready_url), f"answer 200 on {ready_url}", 600, process)
    return process


def stop(process):
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inferd", default=os.path.join(ROOT, "target/release/inferd"))
    parser.add_argument("--bare", default=os.path.join(ROOT, "target/release/examples/bare_axum"))
    parser.add_argument("--config", default=os.path.join(ROOT, "models/default.toml"))
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="alternate bare and inferd this many times")
    parser.add_argument("--no-embeddings", action="store_true", help="skip the /v1/embeddings case")
    args = parser.parse_args()

    header, binary = iris_binary()
    cases = [
        ("v2 JSON, 1 row", "/v2/models/iris-logistic/infer", IRIS_JSON, {"Content-Type": "application/json"}),
        (
            "v2 binary, 1 row",
            "/v2/models/iris-logistic/infer",
            binary,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        ),
    ]
    if not args.no_embeddings:
        cases.append(("/v1/embeddings, 1 text", "/v1/embeddings", EMBEDDING, {"Content-Type": "application/json"}))
    variants = [("default logging", []), ("--log warn", ["--log", "warn"]), ("--log-format json", ["--log-format", "json"])]

    print(f"# {cpu_name()}, {os.cpu_count()} logical CPUs; wrk -t{args.threads} -d{args.seconds}s, on the same machine")
    print()
    print("| case | connections | server | answered requests/s | p50 ms | p99 ms | inferd / bare |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    log = open(os.devnull, "w")
    for _ in range(args.rounds):
        for connections in (args.connections, 1):
            for label, path, body, headers in cases:
                port = free_port()
                bare = subprocess.Popen([args.bare, f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
                wait_for(lambda: listens(port), f"listen on port {port}", 30, bare)
                try:
                    bare_rate, p50, p99, _ = wrk(
                        f"http://127.0.0.1:{port}{path}", body, headers, connections, args.seconds, args.threads
                    )
                finally:
                    stop(bare)
                print(f"| {label} | {connections} | bare axum | {bare_rate:,.0f} | {p50:.2f} | {p99:.2f} | |")
                sys.stdout.flush()
                for variant, flags in variants if connections > 1 else variants[:1]:
                    port = free_port()
                    command = [args.inferd, "serve", "--config", args.config, "--listen", f"127.0.0.1:{port}", *flags]
                    server = start(command, f"http://127.0.0.1:{port}/v2/health/ready", log)
                    try:
                        rate, p50, p99, errors = wrk(
                            f"http://127.0.0.1:{port}{path}", body, headers, connections, args.seconds, args.threads
                        )
                    finally:
                        stop(server)
                    note = f" (+{errors / args.seconds:,.0f}/s refused)" if errors else ""
                    print(
                        f"| {label} | {connections} | inferd, {variant} | {rate:,.0f}{note} | {p50:.2f} | {p99:.2f}"
                        f" | {rate / bare_rate:.2g}× |"
                    )
                    sys.stdout.flush()


if __name__ == "__main__":
    main()
