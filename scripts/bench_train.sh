#!/usr/bin/env bash
# dsg's training throughput next to PyTorch's on the same model (SmolLM2-135M-Instruct, f32), batch, sequence
# length and optimiser, in one run, as a table with ratios. Each mode of each tool runs in its own process, so
# peak memory (VmHWM) is that mode's alone. Needs a Python with torch, transformers, peft and gguf
# (PYTHON=..., default python3). Options: BATCH (4), SEQ (128), STEPS (3), THREADS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BATCH=${BATCH:-4}; SEQ=${SEQ:-128}; STEPS=${STEPS:-3}; THREADS=${THREADS:-2}
cargo build --release -q
model=$(./target/release/dsg fetch)
out=$(mktemp -d)
for mode in lora full; do
  RAYON_NUM_THREADS=$THREADS ./target/release/dsg bench --model "$model" --train "$mode" \
    --train-batch "$BATCH" --train-seq "$SEQ" --train-steps "$STEPS" > "$out/dsg-$mode.json"
done
"$PYTHON" scripts/bench_train_torch.py --gguf "$model" --batch "$BATCH" --seq "$SEQ" --steps "$STEPS" \
  --warmup-steps 1 --threads "$THREADS" > "$out/torch.jsonl"
"$PYTHON" - "$out" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
lines = [l for l in (d / "torch.jsonl").read_text().splitlines() if l.startswith("{")]
torch = {r["mode"]: r for r in map(json.loads, lines)}
print(f"| mode | batch x seq | dsg tok/s | PyTorch tok/s | ratio | dsg peak MiB | PyTorch peak MiB |")
print("|---|---|---|---|---|---|---|")
for mode in ("lora", "full"):
    r = json.loads((d / f"dsg-{mode}.json").read_text())
    t = torch[mode]
    print(f"| {mode} | {r['batch']} x {r['seq']} | {r['tokens_per_s']:.1f} | {t['tokens_per_s']:.1f} | "
          f"{r['tokens_per_s'] / t['tokens_per_s']:.2f}x | {r['peak_rss_mib']:.0f} | {t['peak_rss_mib_vmhwm']:.0f} |")
PY
