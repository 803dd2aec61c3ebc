#!/usr/bin/env bash
# Does one relative clamp setting act alike on SmolLM2-135M and Gemma-3-270M (issue #15)?
# For each model's WMDP-bio guardrail, with the gate forced on (every prompt clamped), compares the
# absolute clamp (clamp:500, DSG's setting) with norm-relative ones (norm:S, each feature's edit of
# norm S·‖h‖): next-token KL to the unguarded model and perplexity on WikiText-2, gibberish rate of
# greedy free answers to held-out WMDP-bio and MMLU-Redux question stems.
# Writes results/clamp-transfer/<model>-<intervention>/ (report.md, report.json, samples.jsonl).
# About 25 minutes on 2 cores (Gemma's runs are ~3x SmolLM2's).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${DSG_SHARED_DATA:-../shared/data}
DSG=${DSG:-./target/release/dsg}
OUT=${OUT:-results/clamp-transfer}
LIMIT=${LIMIT:-24}
ONLY=${ONLY:-}   # a model name to run only its reports
run() { # model guard intervention
  local name=$1 guard=$2 iv=$3
  [[ -z "$ONLY" || "$ONLY" == "$name" ]] || return 0
  "$DSG" eval --model "$name" quality --guard "$guard" --intervention "$iv" --gate-on \
    --forget "$D/wmdp/bio_questions.json" --benign "$D/mmlu_redux/mmlu_redux_all.jsonl" \
    --limit "$LIMIT" --max-tokens 32 --wikitext "$D/wikitext/wikitext-2-raw-v1.test.raw" --windows 4 \
    --out "$OUT/$name-${iv/:/-}" --force
}
for iv in clamp:500 norm:0.25 norm:0.5; do
  run smollm2-135m-instruct assets/guards/wmdp-bio-smollm2-135m-L3.json "$iv"
  run gemma-3-270m results/gemma3-270m/wmdp-bio-gemma-3-270m-L6.json "$iv"
done
