#!/usr/bin/env bash
# Fit a DSG guardrail on a large corpus as a Slurm job array: each array task runs
# `dsg fit --shard auto`, which reads its shard from SLURM_ARRAY_TASK_ID/_MIN/_COUNT and writes that
# shard's statistics; a merge job that depends on the whole array then runs `dsg stats merge`
# (which refuses a set with a shard missing or repeated) and `dsg fit --from-stats`.
#
#   deploy/slurm-fit.sh submit     # on the login node: the array, then the dependent merge job
#
# or by hand:
#
#   jid=$(sbatch --parsable deploy/slurm-fit.sh)
#   sbatch --array=0 --dependency=afterok:$jid deploy/slurm-fit.sh merge
#
# Settings come from the environment (sbatch passes it on by default), e.g.
#   DSG_SAE=/shared/sae DSG_FORGET="/shared/bio.jsonl" DSG_RETAIN="/shared/wiki.jsonl" \
#   DSG_OUT=/shared/fits/bio deploy/slurm-fit.sh submit
# DSG_OUT must be on a filesystem every node sees. The number of shards is the array's size: change
# --array below (or pass --array to sbatch), nothing else.
#
#SBATCH --job-name=dsg-fit
#SBATCH --array=0-7
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=dsg-fit-%A_%a.log

set -euo pipefail

DSG=${DSG:-dsg}                          # the dsg binary (cargo install --locked --path .)
: "${DSG_SAE:?set DSG_SAE to the SAE file or folder}"
: "${DSG_OUT:?set DSG_OUT to a folder on a shared filesystem}"
MODEL_ARGS=()                            # empty: the default model, from $DSG_CACHE
if [[ -n "${DSG_MODEL:-}" ]]; then MODEL_ARGS=(--model "$DSG_MODEL"); fi
# Options that decide the rows; every shard and the final fit must use the same ones.
read -r -a ROW_ARGS <<<"${DSG_ROW_ARGS:---rows 1024 --ctx 1024 --seed 0}"
# Options of selection and calibration; they only matter to the final fit.
read -r -a FIT_ARGS <<<"${DSG_FIT_ARGS:---n-features 20 --p-ratio 95 --p-dyn 95}"
SHARDS="$DSG_OUT/shards"

case "${1:-shard}" in
  submit)
    jid=$(sbatch --parsable "$0")
    mid=$(sbatch --parsable --array=0 --dependency="afterok:${jid%%;*}" \
      --job-name=dsg-fit-merge "$0" merge)
    echo "shards: job $jid; merge and fit: job $mid (after every shard succeeds)"
    ;;
  shard)
    : "${SLURM_ARRAY_TASK_ID:?run this through sbatch (a job array), or use: $0 submit}"
    : "${DSG_FORGET:?set DSG_FORGET to the forget corpus files}"
    : "${DSG_RETAIN:?set DSG_RETAIN to the retain corpus files}"
    read -r -a FORGET <<<"$DSG_FORGET"
    read -r -a RETAIN <<<"$DSG_RETAIN"
    mkdir -p "$SHARDS"
    # --shard auto: index SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT.
    # --force: a requeued task replaces its own partial output.
    "$DSG" fit "${MODEL_ARGS[@]}" --sae "$DSG_SAE" \
      --forget "${FORGET[@]}" --retain "${RETAIN[@]}" "${ROW_ARGS[@]}" \
      --shard auto --out "$SHARDS/shard-$SLURM_ARRAY_TASK_ID.json" --force
    ;;
  merge)
    shopt -s nullglob
    prefixes=()
    for f in "$SHARDS"/shard-*.forget.stats.safetensors; do
      prefixes+=("${f%.forget.stats.safetensors}")
    done
    if ((${#prefixes[@]} == 0)); then
      echo "no shard statistics under $SHARDS" >&2
      exit 1
    fi
    # Refuses, before adding anything, a shard missing or given twice, or shards of another fit.
    "$DSG" stats merge --out "$DSG_OUT/merged.json" --force "${prefixes[@]}"
    "$DSG" fit "${MODEL_ARGS[@]}" --sae "$DSG_SAE" "${ROW_ARGS[@]}" "${FIT_ARGS[@]}" \
      --from-stats "$DSG_OUT/merged.json" --out "$DSG_OUT/guard.json" --force
    "$DSG" inspect "$DSG_OUT/guard.json"
    ;;
  *)
    echo "usage: $0 [submit|shard|merge]" >&2
    exit 2
    ;;
esac
