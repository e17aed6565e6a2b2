#!/usr/bin/env bash
# The one command that runs every test of inferd:
#   1. cargo's tests: unit tests, golden tests against the reference libraries' outputs, and
#      end-to-end tests that start the real binary and talk HTTP to it;
#   2. the official clients against the real server: NVIDIA's tritonclient and OpenAI's openai
#      (Python), installed with pinned versions into target/py-venv;
#   3. the decision tooling (inferd bench, cargo bench, inferd advise), the overload run, the
#      deployment artefacts (.ci/check-deploy) and the images' build steps outside Docker.
# The models that are not committed (all-MiniLM-L6-v2) are fetched first by models/fetch-models.sh.
# Needs only cargo and python3 (with venv and pip); everything else is installed here.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "== models" >&2
bash models/fetch-models.sh

echo "== cargo test" >&2
cargo test --workspace --all-targets

# The CPU kernels are chosen at start: AVX-512 (VNNI) where the CPU has it, else AVX2. On an
# AVX-512 machine the run above used the AVX-512 kernels; the golden tests run again on the
# AVX2 ones, so that both paths are checked against the reference libraries.
if grep -qw avx512_vnni /proc/cpuinfo 2>/dev/null; then
  echo "== golden tests again on the AVX2 kernels (INFERD_CPU=avx2)" >&2
  # --workspace, so that features unify as in the run above and nothing is rebuilt.
  INFERD_CPU=avx2 cargo test --workspace --test golden_embeddings --test golden_chat --test golden_tiny_llm
else
  echo "== this CPU has no AVX-512 VNNI: the AVX-512 kernels were not tested here" >&2
fi

echo "== Python client tests" >&2
venv="$root/target/py-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

# A free local port.
free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until the server on port $1 (process $2, log $3) is ready; fails if it exits first.
wait_ready() {
  for _ in $(seq 1 300); do
    if "$venv/bin/python" -c "import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen('http://127.0.0.1:$1/v2/health/ready').status != 200)
except Exception:
    sys.exit(1)"; then
      return 0
    fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "inferd exited before becoming ready:" >&2
      cat "$3" >&2
      exit 1
    fi
    sleep 0.1
  done
}

cargo build --bin inferd
port="$(free_port)"
log="$root/target/python-tests-server.log"
INFERD_LISTEN="127.0.0.1:$port" target/debug/inferd serve >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

wait_ready "$port" "$server" "$log"

# A second server with API keys and quotas, for the openai client's authentication tests.
auth_dir="$root/target/auth-test"
mkdir -p "$auth_dir"
test_key="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(24))')"
limited_key="$("$venv/bin/python" -c 'import secrets; print(secrets.token_hex(24))')"
cat >"$auth_dir/keys.toml" <<KEYS
[[keys]]
id = "python-tests"
sha256 = "$(printf '%s\n' "$test_key" | target/debug/inferd hash-key)"
tokens_per_minute = 600

[[keys]]
id = "python-limited"
sha256 = "$(printf '%s\n' "$limited_key" | target/debug/inferd hash-key)"
requests_per_minute = 2
KEYS
auth_port="$(free_port)"
auth_log="$root/target/python-tests-auth-server.log"
INFERD_LISTEN="127.0.0.1:$auth_port" INFERD_KEYS_FILE="$auth_dir/keys.toml" target/debug/inferd serve >"$auth_log" 2>&1 &
auth_server=$!
trap 'kill "$server" "$auth_server" 2>/dev/null || true' EXIT
wait_ready "$auth_port" "$auth_server" "$auth_log"

INFERD_URL="127.0.0.1:$port" INFERD_AUTH_URL="127.0.0.1:$auth_port" INFERD_TEST_KEY="$test_key" \
  INFERD_LIMITED_KEY="$limited_key" "$venv/bin/python" -m unittest discover -s tests/python -v
kill "$auth_server"
# The log is complete once the server has exited (it writes its buffered lines as it stops).
wait "$auth_server" || true
if grep -q -e "$test_key" -e "$limited_key" "$auth_log"; then
  echo "an API key appeared in the server's log" >&2
  exit 1
fi

# The decision tooling end to end: `inferd bench` against the running server for a tabular, an
# embedding and a chat model, closed and open loops; the benchmark suite in quick mode (every
# family on the CPU; it must say that the GPU groups were skipped); `inferd advise` over both;
# and the HTML report rendered in headless Chromium (Debian's package, installed if missing).
echo "== inferd bench, cargo bench (quick), inferd advise" >&2
advise_dir="$root/target/advise-test"
rm -rf "$advise_dir"
mkdir -p "$advise_dir"
target/debug/inferd bench --url "http://127.0.0.1:$port" --model breast-cancer-xgboost --api v2 --quiet \
  --profile sweep --max-concurrency 8 --sweep-rates 2 --duration 2s --json "$advise_dir/trees.json" \
  --csv "$advise_dir/trees.csv"
target/debug/inferd bench --url "http://127.0.0.1:$port" --model all-minilm-l6-v2 --api embeddings --quiet \
  --profile constant --rate 10,20 --duration 2s --json "$advise_dir/embed.json"
target/debug/inferd bench --url "http://127.0.0.1:$port" --model smollm2-135m-instruct --api chat --quiet \
  --profile concurrent --concurrency 1,4 --input-words 64 --output-tokens 16 --duration 3s \
  --json "$advise_dir/chat.json"
INFERD_BENCH_QUICK=1 cargo bench --bench suite 2>"$advise_dir/bench.log" >/dev/null || {
  cat "$advise_dir/bench.log" >&2
  exit 1
}
"$venv/bin/python" - "$advise_dir/bench.log" "$root/target/criterion/inferd-suite.json" <<'PY'
import json, sys
log, manifest = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
assert "GPU groups skipped" in log, "the suite must say that the GPU groups were skipped"
families = {name.split("/")[0] for name in manifest["benchmarks"]}
for family in ["linear", "trees", "embeddings-short", "embeddings-medium", "prefill-medium", "decode-short"]:
    assert family in families, f"the quick suite did not measure {family}: {sorted(families)}"
assert manifest["runs"][-1]["quick"] and manifest["runs"][-1]["gpu_skipped"]
PY
target/debug/inferd advise --workloads examples/advise/workloads.toml --criterion target/criterion \
  --bench "$advise_dir/trees.json" --bench "$advise_dir/embed.json" --bench "$advise_dir/chat.json" \
  --out "$advise_dir/report" >"$advise_dir/verdicts.txt"
grep -q "breast-cancer-xgboost: CPU is enough" "$advise_dir/verdicts.txt"
if ! command -v chromium >/dev/null 2>&1; then
  apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$advise_dir/chromium" --hide-scrollbars \
  --window-size=1280,2000 --screenshot="$advise_dir/report.png" "file://$advise_dir/report/report.html" \
  >/dev/null 2>&1
"$venv/bin/python" - "$advise_dir/report.png" <<'PY'
import struct, sys
png = open(sys.argv[1], "rb").read()
assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
width, height = struct.unpack(">II", png[16:24])
assert (width, height) == (1280, 2000), (width, height)
# A blank page compresses to a few kilobytes; the report's text and charts do not.
assert len(png) > 100_000, f"the screenshot is only {len(png)} bytes: did the page render?"
PY

# Overload: 4x the measured capacity for 10 s; every request must be answered (200, or 429/503
# with Retry-After), memory must stay flat, and the server must serve at once afterwards.
echo "== overload test" >&2
# Debug build, load generator on the same cores: the answers, Retry-After, memory and recovery
# are checked; throughput and latency ratios are for the release run in the README.
cargo run --quiet --example overload -- --url "http://127.0.0.1:$port" --measure 4 --overload 10 --max-p99-ratio 0

# The deployment artefacts (Dockerfiles, Kubernetes, KServe, Azure ML, Grafana, alerts) against
# their linters, schemas and loaders; and every metric they query against this server's
# /metrics, now that it has served every kind of request and refused some.
INFERD_METRICS_URLS="http://127.0.0.1:$port" bash .ci/check-deploy

# The server must drain and exit cleanly on SIGTERM.
kill -TERM "$server"
if ! wait "$server"; then
  echo "inferd did not exit cleanly on SIGTERM:" >&2
  cat "$log" >&2
  exit 1
fi
trap - EXIT

# The images' build without Docker: Dockerfile.cpu's steps run as written (cargo chef, the
# serving models, the release build), then the result starts as the image would, passes its
# HEALTHCHECK, serves every bundled model and drains on SIGTERM; Dockerfile.cuda's steps must be
# the same with the cuda feature, which .ci/build-cuda builds.
echo "== image build steps (Dockerfile.cpu run outside Docker, Dockerfile.cuda compared)" >&2
"$venv/bin/python" tests/deploy/dockerfile_steps.py Dockerfile.cpu --run "$root/target/image-check"
"$venv/bin/python" tests/deploy/dockerfile_steps.py Dockerfile.cuda --compare-with Dockerfile.cpu
echo "== all tests passed" >&2
