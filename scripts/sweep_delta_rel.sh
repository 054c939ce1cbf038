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
#   PYTHON=...      interpreter for main.py (default: the one running reproduce.py)
#   EXTRA_ARGS=...  more flags for every run, e.g. "--data_root /d/coco --device cuda"
#   FIRST_SEED=0    first seed
#   FORCE=1         run again where the folder already holds results.json (default: skip it, so an
#                   interrupted sweep resumes)
#   RUNNER_PYTHON   interpreter for scripts/reproduce.py (default: the repository's .venv, else the
#                   python on PATH)
#
# A shell front end of `python scripts/reproduce.py --dataset DATASET --sweep_delta_rel`, which
# builds and runs the commands (5 Δrel × 3 schemes = 15 runs per seed; optimizer, lr, batch size and
# epochs are the CLI's defaults for the dataset, docs/protocol.md). The first failed run stops the sweep with
# its exit code. Then: python scripts/summarize.py RUNS_DIR picks, per scheme, the Δrel with the best
# mean val mAP ("chosen Δrel").
set -euo pipefail

usage() { awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && $# -le 3 ]] || usage

repo="$(cd "$(dirname "$0")/.." && pwd)"
runner=${RUNNER_PYTHON:-}
if [[ -z "$runner" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then runner="$repo/.venv/bin/python"
  elif command -v python > /dev/null; then runner=python
  else runner=python3; fi
fi
args=(--dataset "$1" --sweep_delta_rel --seeds "${2:-3}" --first_seed "${FIRST_SEED:-0}"
      --runs_dir "${3:-runs/sweep}" --extra "${EXTRA_ARGS:-}")
if [[ -n "${PYTHON:-}" ]]; then args+=(--python "$PYTHON"); fi
if [[ "${DRY_RUN:-0}" == 1 ]]; then args+=(--dry_run); fi
if [[ "${FORCE:-0}" == 1 ]]; then args+=(--force); fi
exec "$runner" "$repo/scripts/reproduce.py" "${args[@]}"
