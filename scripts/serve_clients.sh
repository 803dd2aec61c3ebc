#!/usr/bin/env bash
# `dsg serve` against clients nobody here wrote, end to end: the `openai` Python package and
# lm-eval-harness's `local-completions` model, and lm-eval's accuracies against `dsg eval mcq`
# (same questions, same prompt) with and without the WMDP-bio guardrail.
#
#   scripts/serve_clients.sh            # from the repository root; ~40 min on 2 cores (debug build)
#
# Environment: DSG_BIN (default: target/release/dsg if it has `serve` and is the newer build, else
# target/debug/dsg; copied to $WORK first), VENV (default /work/venvs/clients; created with
# `pip install openai "lm-eval[api]" torch` when missing), DSG_SHARED_DATA (default ../shared/data),
# N (questions per set, default 100), LM_LIMIT (lm-eval --limit, default none: all N).
# Writes results/serve/clients/*.txt|json; scratch (the question subsets, which are not copied
# into the repository, lm-eval's per-sample logs, server logs) goes to /tmp/dsg-serve-clients
# (fixed: results/serve/lm_eval_tasks/*.yaml read the subsets from there).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=/tmp/dsg-serve-clients
OUT=results/serve/clients
TASKS=results/serve/lm_eval_tasks
DATA=${DSG_SHARED_DATA:-../shared/data}
VENV=${VENV:-/work/venvs/clients}
N=${N:-100}
PY=$VENV/bin/python
mkdir -p "$WORK" "$OUT"
rm -rf "$WORK"/lm_* "$WORK"/dsg_* "$WORK"/server_*.log
TIMES=$OUT/timings.txt
: > "$TIMES"

if ! "$PY" -c "import openai, lm_eval, tenacity" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q openai "lm-eval[api]" torch
fi

# The dsg binary: one that has `serve`, copied so that a rebuild cannot swap it mid-run.
if [ -z "${DSG_BIN:-}" ]; then
    DSG_BIN=target/debug/dsg
    if [ -x target/release/dsg ] && target/release/dsg serve --help >/dev/null 2>&1 &&
        { [ ! -x target/debug/dsg ] || [ target/release/dsg -nt target/debug/dsg ]; }; then
        DSG_BIN=target/release/dsg
    fi
fi
cp "$DSG_BIN" "$WORK/dsg"
DSG=$WORK/dsg
"$DSG" serve --help >/dev/null

export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_DATASETS_CACHE=$WORK/hf_datasets

now() { date +%s.%N; }
timed() { # timed LABEL CMD...: runs CMD, appends its wall time to $TIMES
    local label=$1 t0 t1 rc=0
    shift
    t0=$(now)
    "$@" || rc=$?
    t1=$(now)
    printf '%-44s %8.1f s%s\n' "$label" "$(awk "BEGIN {print $t1 - $t0}")" \
        "$([ $rc = 0 ] || echo " (exit $rc)")" | tee -a "$TIMES"
    return $rc
}

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

start_server() { # start_server NAME ARGS...: sets URL (http://127.0.0.1:PORT)
    local name=$1 log=$WORK/server_$1.log i
    shift
    "$DSG" serve --port 0 "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    for i in $(seq 1 600); do
        if URL=$(grep -o 'listening on http://[0-9.:]*' "$log" | sed 's/listening on //'); then
            [ -n "$URL" ] && break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log"; echo "server $name died" >&2; exit 1; }
        sleep 0.2
    done
    [ -n "$URL" ] || { echo "server $name did not start" >&2; exit 1; }
    echo "server $name ($*): $URL, pid $SERVER_PID"
}

metric() { # metric NAME: the value of a Prometheus counter of the running server (0 if absent)
    curl -sf "$URL/metrics" | awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}'
}

run_lm_eval() { # run_lm_eval NAME [CONCURRENT BATCH LIMIT]: lm-eval on both tasks against $URL
    local name=$1 concurrent=${2:-1} batch=${3:-1} limit=${4:-${LM_LIMIT:-}} model
    model=$(curl -sf "$URL/v1/models" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
    "$VENV/bin/lm_eval" --model local-completions \
        --model_args "model=$model,base_url=$URL/v1/completions,num_concurrent=$concurrent,max_retries=3,tokenized_requests=True,tokenizer_backend=remote" \
        --batch_size "$batch" \
        --tasks dsg_wmdp_bio_heldout,dsg_mmlu_heldout --include_path "$TASKS" \
        ${limit:+--limit "$limit"} \
        --output_path "$WORK/lm_$name" --log_samples >"$WORK/lm_$name.stdout" 2>"$WORK/lm_$name.log"
    cp "$WORK/lm_$name.stdout" "$OUT/lm_eval_$name.txt"
    cp "$(find "$WORK/lm_$name" -name 'results_*.json' | sort | tail -1)" "$OUT/lm_eval_$name.json"
    cat "$OUT/lm_eval_$name.txt"
}

MMLU_FILES=()
for s in virology college_biology high_school_computer_science philosophy; do
    MMLU_FILES+=(--file "$DATA/mmlu/test/${s}_test.csv")
done
dsg_mcq() { # dsg_mcq NAME SET [--guard FILE]: dsg eval mcq, lm-eval protocol, on exactly the subset
    local name=$1 set=$2
    shift 2
    local files=(--file "$DATA/wmdp/bio_questions.json")
    [ "$set" = mmlu ] && files=("${MMLU_FILES[@]}")
    "$DSG" eval mcq --protocol lm-eval "${files[@]}" --questions "$WORK/data/ids_$set.jsonl" \
        "$@" --out "$WORK/dsg_$name" --force >"$WORK/dsg_$name.log" 2>&1
    cp "$WORK/dsg_$name/report.md" "$OUT/dsg_eval_mcq_$name.md"
}

{
    echo "dsg binary: $DSG_BIN ($(stat -c '%y' "$DSG_BIN"), $("$DSG" --version))"
    echo "openai $("$PY" -c 'import openai; print(openai.__version__)'), lm-eval $("$PY" -c 'import importlib.metadata as m; print(m.version("lm_eval"))'), torch $("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))'), $("$PY" --version)"
    echo "host: $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
} | tee "$OUT/versions.txt"

timed "data: $N WMDP-bio + $N MMLU held-out" \
    "$PY" scripts/serve_clients.py data --data "$DATA" --out "$WORK/data" --n "$N"

# 1. The guarded server (the default: the shipped wmdp-bio guardrail).
timed "start dsg serve (guarded)" start_server guarded
GUARD_FILE=${DSG_CACHE:-${XDG_CACHE_HOME:+$XDG_CACHE_HOME/dsg}}
GUARD_FILE=${GUARD_FILE:-$HOME/.cache/dsg}/assets/guards/wmdp-bio-smollm2-135m-L3.json
# The guardrail dsg eval mcq loads is the one the server serves (same features and threshold).
curl -sf "$URL/v1/guardrails" | "$PY" -c '
import json, sys
served = json.load(sys.stdin)["guardrails"][0]
f = json.load(open(sys.argv[1]))
assert served["features"] == [x["id"] for x in f["features"]], "features differ"
assert served["threshold"] == f["gate"]["threshold"], "thresholds differ"
print("served guardrail", served["name"], "has the features and threshold of", sys.argv[1])' "$GUARD_FILE"

OPENAI_RC=0 BATCH_RC=0
timed "openai client (guarded server)" \
    "$PY" scripts/serve_clients.py openai --base-url "$URL/v1" --out "$OUT/openai_guarded.json" \
    | tee "$OUT/openai_guarded.txt" || OPENAI_RC=$?
FIRED0=$(metric 'dsg_gate_fired_total{guardrail="wmdp-bio"}')
REQ0=$(metric 'dsg_request_duration_seconds_count{route="/v1/completions"}')
timed "lm-eval local-completions (guarded server)" run_lm_eval guarded
FIRED1=$(metric 'dsg_gate_fired_total{guardrail="wmdp-bio"}')
REQ1=$(metric 'dsg_request_duration_seconds_count{route="/v1/completions"}')
stop_server

# 2. The unguarded server.
timed "start dsg serve --no-guard" start_server unguarded --no-guard
timed "lm-eval local-completions (--no-guard)" run_lm_eval unguarded
# lm-eval's batched requests (8 prompts of different lengths per request) sent 4 at a time:
# the same log-likelihoods as one prompt per request.
timed "lm-eval batch_size=8 num_concurrent=4 (25+25)" run_lm_eval unguarded_b8c4 4 8 25
"$PY" scripts/serve_clients.py compare-lm --a "$WORK/lm_unguarded" --b "$WORK/lm_unguarded_b8c4" \
    --task dsg_wmdp_bio_heldout --task dsg_mmlu_heldout \
    --out-json "$OUT/lm_eval_batched_vs_single.json" --out-txt "$OUT/lm_eval_batched_vs_single.txt" \
    || BATCH_RC=$?
stop_server

# 3. The openai checks again with --f32-decode: generated tokens' log-probs then equal echo's.
timed "start dsg serve --f32-decode" start_server f32 --f32-decode
timed "openai client (--f32-decode server)" \
    "$PY" scripts/serve_clients.py openai --base-url "$URL/v1" --f32-decode \
    --out "$OUT/openai_f32_decode.json" | tee "$OUT/openai_f32_decode.txt" || OPENAI_RC=$?
stop_server

# 4. dsg's own harness on the same questions.
timed "dsg eval mcq wmdp-bio (guard)" dsg_mcq wmdp_guarded wmdp_bio --guard "$GUARD_FILE"
timed "dsg eval mcq mmlu (guard)" dsg_mcq mmlu_guarded mmlu --guard "$GUARD_FILE"
timed "dsg eval mcq wmdp-bio (no guard)" dsg_mcq wmdp_unguarded wmdp_bio
timed "dsg eval mcq mmlu (no guard)" dsg_mcq mmlu_unguarded mmlu

# 5. Question by question.
rc=0
"$PY" scripts/serve_clients.py compare \
    --pair "wmdp-bio guarded,$WORK/lm_guarded,dsg_wmdp_bio_heldout,$WORK/dsg_wmdp_guarded" \
    --pair "mmlu guarded,$WORK/lm_guarded,dsg_mmlu_heldout,$WORK/dsg_mmlu_guarded" \
    --pair "wmdp-bio unguarded,$WORK/lm_unguarded,dsg_wmdp_bio_heldout,$WORK/dsg_wmdp_unguarded" \
    --pair "mmlu unguarded,$WORK/lm_unguarded,dsg_mmlu_heldout,$WORK/dsg_mmlu_unguarded" \
    --server-gate "$FIRED0,$FIRED1,$REQ0,$REQ1" \
    --out-json "$OUT/compare.json" --out-txt "$OUT/compare.txt" || rc=$?
echo "timings:"; cat "$TIMES"
[ "$OPENAI_RC" = 0 ] || { echo "openai checks failed (exit $OPENAI_RC)"; rc=1; }
[ "$BATCH_RC" = 0 ] || { echo "batched lm-eval differs from one prompt per request"; rc=1; }
exit $rc
