#!/usr/bin/env bash
# dsg's throughput next to PyTorch/transformers (f32) and llama.cpp on the same GGUF and tokens, one table.
# Needs a Python with torch, transformers, accelerate (for GGUF loading), gguf and llama-cpp-python
# (PYTHON=..., default python3); a reference whose package is missing is skipped and reported as such.
# MODEL=gemma-3-270m benches the second real model (any name `dsg fetch` knows; default smollm2-135m-instruct).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
cargo build --release -q
model=$(./target/release/dsg fetch "${MODEL:-smollm2-135m-instruct}")
out=$(mktemp)
./target/release/dsg bench --json --model "$model" "$@" > "$out"
"$PYTHON" scripts/bench_reference.py "$model" "$out"
