#!/usr/bin/env bash
# Sweep Δrel (percent per epoch) for the three large-loss schemes, end to end, as the authors did.
#
#   scripts/sweep_delta_rel.sh DATASET [SEEDS] [RUNS_DIR]
#
#   DATASET   pascal | coco | nuswide | cub | digits
#   SEEDS     number of seeds, default 3 (seeds FIRST_SEED … FIRST_SEED+SEEDS−1)
#   RUNS_DIR  default runs/sweep; each run in RUNS_DIR/DATASET/sweep/<scheme>_d<Δrel>/seed<k>
#
# Environment:
#   DRY_RUN=1       print the commands, run nothing
#   PYTHON=...      interpreter (default: python)
#   EXTRA_ARGS=...  more flags for every run, split on spaces, e.g. "--data_root /d/coco --device cuda"
#   FIRST_SEED=0    first seed
#   FORCE=1         run again where the folder already holds results.json (default: skip it, so an
#                   interrupted sweep resumes)
#
# 5 Δrel × 3 schemes = 15 runs per seed. The optimizer, lr, batch size and epochs are the CLI's
# defaults for the dataset (SPEC §6; each run records them in its config.json). The first failed
# run stops the sweep with its exit code. Then: python scripts/summarize.py RUNS_DIR picks, per scheme,
# the Δrel with the best mean val mAP ("chosen Δrel").
set -euo pipefail

usage() { awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && $# -le 3 ]] || usage

dataset=$1
seeds=${2:-3}
runs_dir=${3:-runs/sweep}
first_seed=${FIRST_SEED:-0}
read -r -a python <<< "${PYTHON:-python}"
read -r -a extra <<< "${EXTRA_ARGS:-}"

case "$dataset" in
  pascal|coco|nuswide|cub|digits) ;;
  *) echo "sweep_delta_rel: unknown dataset '$dataset' (pascal, coco, nuswide, cub, digits)" >&2; exit 2 ;;
esac
if ! [[ "$seeds" =~ ^[1-9][0-9]*$ && "$first_seed" =~ ^[0-9]+$ ]]; then
  echo "sweep_delta_rel: SEEDS must be a positive integer and FIRST_SEED a non-negative one" >&2
  exit 2
fi

# main.py beside this script; written short when run from the repository root.
main_py="$(cd "$(dirname "$0")/.." && pwd)/main.py"
if [[ "$main_py" == "$PWD/main.py" ]]; then main_py=main.py; fi

total=$((seeds * 15))
index=0
for ((seed = first_seed; seed < first_seed + seeds; seed++)); do
  for scheme in LL-R LL-Ct LL-Cp; do
    for delta_rel in 0.1 0.2 0.3 0.4 0.5; do
      index=$((index + 1))
      out_dir="$runs_dir/$dataset/sweep/${scheme}_d${delta_rel}/seed${seed}"
      command=("${python[@]}" "$main_py" --dataset "$dataset" --loss an --mod_scheme "$scheme"
               --delta_rel "$delta_rel" --train_mode end_to_end --seed "$seed" --out_dir "$out_dir"
               ${extra[@]+"${extra[@]}"})
      line=$(printf '%q ' "${command[@]}")
      line=${line% }
      if [[ "${DRY_RUN:-0}" == 1 ]]; then
        echo "$line"
        continue
      fi
      if [[ -f "$out_dir/results.json" && "${FORCE:-0}" != 1 ]]; then
        echo "# [$index/$total] done, skipped (results.json exists): $out_dir"
        continue
      fi
      echo "# [$index/$total] $line"
      "${command[@]}" || {
        status=$?
        echo "sweep_delta_rel: run $index/$total failed with exit code $status: $out_dir" >&2
        exit "$status"
      }
    done
  done
done
