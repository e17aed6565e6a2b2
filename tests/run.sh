#!/usr/bin/env bash
# The one command that runs every test of inferd:
#   1. cargo's tests: unit tests, golden tests against the reference libraries' outputs, and
#      end-to-end tests that start the real binary and talk HTTP to it;
#   2. the official clients against the real server: NVIDIA's tritonclient and OpenAI's openai
#      (Python), installed with pinned versions into target/py-venv.
# The models that are not committed (all-MiniLM-L6-v2) are fetched first by models/fetch-models.sh.
# Needs only cargo and python3 (with venv and pip); everything else is installed here.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "== models" >&2
bash models/fetch-models.sh

echo "== cargo test" >&2
cargo test --workspace --all-targets

echo "== Python client tests" >&2
venv="$root/target/py-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt

cargo build --bin inferd
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$root/target/python-tests-server.log"
INFERD_LISTEN="127.0.0.1:$port" target/debug/inferd serve >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

for _ in $(seq 1 300); do
  if "$venv/bin/python" -c "import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen('http://127.0.0.1:$port/v2/health/ready').status != 200)
except Exception:
    sys.exit(1)"; then
    break
  fi
  if ! kill -0 "$server" 2>/dev/null; then
    echo "inferd exited before becoming ready:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done

INFERD_URL="127.0.0.1:$port" "$venv/bin/python" -m unittest discover -s tests/python -v

# The server must drain and exit cleanly on SIGTERM.
kill -TERM "$server"
if ! wait "$server"; then
  echo "inferd did not exit cleanly on SIGTERM:" >&2
  cat "$log" >&2
  exit 1
fi
trap - EXIT
echo "== all tests passed" >&2
