"""Throughput of a running inferd's /v1/embeddings under concurrent clients.

Each client sends one short text per request, back to back, for a fixed time; the script
prints requests per second and latency percentiles for 1 client and for N clients, and the
batch sizes the server reported (``inferd-batch-size``), so that batching under load is
visible. Standard library only:

    cargo run --release -- serve &        # after models/fetch-models.sh
    python3 benches/embeddings_concurrency.py --url http://127.0.0.1:8080 --clients 1,32
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request

TEXTS = [
    "How do I rotate the API keys of a production service?",
    "The cluster autoscaler added two nodes during the evening peak.",
    "Embeddings turn sentences into vectors for semantic search.",
    "Latency rose when the queue grew beyond its usual depth.",
    "Which virtual machine size is cheapest for this workload?",
    "A load balancer drains connections before the instance stops.",
    "The model answers in milliseconds on a single CPU core.",
    "Tokens per minute is the unit capacity planning uses.",
]


def client(url, model, seconds, results, index):
    deadline = time.monotonic() + seconds
    latencies, batches = [], []
    n = index
    while time.monotonic() < deadline:
        body = json.dumps({"model": model, "input": TEXTS[n % len(TEXTS)]}).encode()
        request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        started = time.monotonic()
        with urllib.request.urlopen(request) as response:
            response.read()
            batches.append(int(response.headers.get("inferd-batch-size", "1")))
        latencies.append(time.monotonic() - started)
        n += 1
    results[index] = (latencies, batches)


def run(url, model, clients, seconds):
    results = [None] * clients
    threads = [threading.Thread(target=client, args=(url, model, seconds, results, i)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies = sorted(x for lat, _ in results for x in lat)
    batches = [b for _, bs in results for b in bs]
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3
    return len(latencies) / elapsed, p(0.5), p(0.95), p(0.99), statistics.mean(batches), max(batches)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--clients", default="1,32", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    url = args.url.rstrip("/") + "/v1/embeddings"
    print(f"{'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'max batch':>9}")
    baseline = None
    for clients in (int(c) for c in args.clients.split(",")):
        rate, p50, p95, p99, mean_batch, max_batch = run(url, args.model, clients, args.seconds)
        baseline = baseline or rate
        print(f"{clients:>7} {rate:>9.1f} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {mean_batch:>10.1f} {max_batch:>9}"
              f"   ({rate / baseline:.1f}x the first row)")


if __name__ == "__main__":
    main()
