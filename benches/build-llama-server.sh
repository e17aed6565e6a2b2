#!/usr/bin/env bash
# Builds llama.cpp's own HTTP server, llama-server, for this CPU, from the llama.cpp sources in
# the source archive of the llama-cpp-python release the project pins
# (models/sources-requirements.txt; models/fetch-models.sh downloads it, hash-checked), so
# that `inferd bench` can load-test it beside inferd on the same GGUF:
#
#   bash benches/build-llama-server.sh      (from any directory; a few minutes on 2 cores)
#   target/llama-server/build/bin/llama-server -m models/smollm2-135m-instruct/*.gguf --port 8090
#
# A pinned cmake comes from PyPI into target/cmake-venv. ggml is compiled for the build
# machine's CPU (GGML_NATIVE), as models/reference/setup-llm-venv.sh does for the Python
# binding, with its AMX kernels off (they die with SIGILL where cpuid reports AMX but the
# process cannot use it). CMAKE_BUILD_PARALLEL_LEVEL sets the parallelism (default 2).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
RELEASE="llama_cpp_python-0.3.36"
ARCHIVE="$ROOT/target/model-wheels/$RELEASE.tar.gz"
OUT="$ROOT/target/llama-server"

if [[ ! -f "$ARCHIVE" ]]; then
  rm -rf "$ROOT/models/llama-cpp-models"   # makes fetch-models.sh download the archive again
  bash "$ROOT/models/fetch-models.sh"
fi
if [[ ! -x "$ROOT/target/cmake-venv/bin/cmake" ]]; then
  "$PYTHON" -m venv "$ROOT/target/cmake-venv"
  "$ROOT/target/cmake-venv/bin/pip" install --quiet --disable-pip-version-check cmake==3.31.6
fi
rm -rf "$OUT/src"
mkdir -p "$OUT/src"
tar -xzf "$ARCHIVE" -C "$OUT/src" --strip-components=3 "$RELEASE/vendor/llama.cpp"
"$ROOT/target/cmake-venv/bin/cmake" -S "$OUT/src" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
"$ROOT/target/cmake-venv/bin/cmake" --build "$OUT/build" --target llama-server \
  --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
"$OUT/build/bin/llama-server" --version
