#!/usr/bin/env bash
# Server load test (BENCHMARKS.md, "Serving"): dsg serve with the shipped guardrail under 64
# concurrent clients (1,000 requests, half streamed), then at 8 clients with continuous batching,
# one request at a time (--max-batch 1), and llama.cpp's server (llama-cpp-python, same GGUF, same
# load), in one run on the same machine. Prints a markdown table; raw JSON lines go to
# ${OUT:-results/serve/bench}/load.jsonl.
#
# Needs a release build (cargo build --release) and a Python venv with aiohttp and
# llama-cpp-python[server] (made here on first use in .venv-bench; llama-cpp-python compiles for
# about 25 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/serve/bench}
VENV=${VENV:-.venv-bench}
mkdir -p "$OUT"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'aiohttp>=3.9' 'llama-cpp-python[server]==0.3.*'
fi
PY="$VENV/bin/python"
DSG=./target/release/dsg
GGUF=$($DSG fetch)
N8=${N8:-120}
LOG="$OUT/load.jsonl"
: > "$LOG"
uptime > "$OUT/load-average.txt"

wait_up() { # url
  for _ in $(seq 1 300); do curl -sf "$1/v1/models" > /dev/null && return 0; sleep 0.5; done
  echo "server at $1 did not come up" >&2; return 1
}

run_dsg() { # label max_batch clients requests
  local port=18431
  $DSG serve --port $port --max-batch "$2" --queue 64 > "$OUT/dsg-serve.log" 2>&1 &
  local pid=$!
  wait_up "http://127.0.0.1:$port"
  $PY scripts/bench_serve.py --url "http://127.0.0.1:$port" --label "$1" --clients "$3" --requests "$4" >> "$LOG"
  kill -TERM $pid; wait $pid || true
}

run_dsg "dsg serve, guardrail on, batch 8" 8 64 1000
run_dsg "dsg serve, guardrail on, batch 8" 8 8 "$N8"
run_dsg "dsg serve, guardrail on, one at a time" 1 8 "$N8"

port=18432
# --interrupt_requests False: by default a new request cuts the one in flight short (its stream ends
# early with [DONE]), which would count as fast answers; queued, each runs to its end.
$PY -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port $port --n_ctx 2048 \
  --n_threads "$(nproc)" --interrupt_requests False > "$OUT/llama-server.log" 2>&1 &
pid=$!
wait_up "http://127.0.0.1:$port"
$PY scripts/bench_serve.py --url "http://127.0.0.1:$port" --label "llama.cpp server (llama-cpp-python $($PY -c 'import llama_cpp; print(llama_cpp.__version__)'))" --clients 8 --requests "$N8" >> "$LOG"
kill -TERM $pid; wait $pid || true

uptime >> "$OUT/load-average.txt"
$PY - "$LOG" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| server | clients | requests | 200 | other | lost | tokens/s | req/s | p50 s | p99 s | TTFT p50 s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    ok = r["status"].get("200", 0)
    other = sum(v for k, v in r["status"].items() if k != "200")
    print(f"| {r['server']} | {r['clients']} | {r['requests']} | {ok} | {other} | {r['lost']} | {r['tokens_per_s']} | {r['requests_per_s']} | {r['latency_p50_s']} | {r['latency_p99_s']} | {r['ttft_p50_s']} |")
b8 = [r for r in rows if r["clients"] == 8]
base = {r["server"]: r["tokens_per_s"] for r in b8}
llama = next(v for k, v in base.items() if k.startswith("llama.cpp"))
for k, v in base.items():
    print(f"\n{k}: {v / llama:.2f}x llama.cpp's server throughput at 8 clients", end="")
print()
PYEOF
