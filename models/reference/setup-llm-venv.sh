#!/usr/bin/env bash
# Create target/llm-venv with the pinned llama-cpp-python of requirements-llm.txt, built
# from source (its sdist bundles llama.cpp) for this CPU, with ggml's AMX kernels off:
#
#   bash models/reference/setup-llm-venv.sh        (from any directory)
#
# GGML_NATIVE=ON compiles ggml for the build machine's CPU (-march=native). ggml's AMX
# kernels (ggml-cpu/amx/) are compiled in when the compiler targets AMX-INT8 and
# AVX512-VNNI, and they die with SIGILL where cpuid reports AMX but the process cannot
# use the tile registers (as in some VMs and containers), so the three GGML_AMX_* options
# are set OFF. Note that with GGML_NATIVE=ON and GCC, ggml's CMake does not read them
# (only its GGML_NATIVE=OFF branch does; they default to OFF): what -march=native detects
# decides. On a CPU without AMX (e.g. the AMD EPYC, AVX2 only, the golden file was made
# on) nothing AMX is built either way; on an AMX machine, build with GGML_NATIVE=OFF and
# the instruction-set options (GGML_AVX2, GGML_AVX512, ...) given one by one instead.
# The build takes a while (tens of minutes on 2 cores); CMAKE_BUILD_PARALLEL_LEVEL sets
# its parallelism (default 2).
#
# Environment: PYTHON (default python3) is the interpreter the venv is made from;
# LLM_VENV (default target/llm-venv) its folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${LLM_VENV:-$ROOT/target/llm-venv}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip
CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-cache-dir \
    --no-binary llama-cpp-python --verbose \
    -r "$ROOT/models/reference/requirements-llm.txt"
"$VENV/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'
