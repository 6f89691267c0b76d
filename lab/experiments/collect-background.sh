#!/usr/bin/env bash
# Bring the summaries the background jobs of run-background.sh have written in $BG into this checkout, then
# regenerate the reports that read them. Only files that are new or differ are copied, and each is named, so what
# lands in a commit is what the background runs produced (nothing here is edited by hand).
#
#   BG=/work/bg bash lab/experiments/collect-background.sh [EXPERIMENT ...]   # default: gfdt-50k
#
# A run's summary is copied once its result.json exists (a finished run); its swaps.json grows as the swaps that
# need it finish, so rerunning this later copies the newer one, also after the result.json beside it was
# committed. A run whose result.json there finished before the one here is not copied (it is no newer training).
# The reference runs' JSONs (lab/experiments/results/reference-dql-50k) come along, as the gfdt-50k reports read them.
# A JSON written by an older reference_score.py lacks its episode count (the report then says n/a): rerun the newer
# script here with the same arguments and --state, which resumes at the last step and only rewrites the JSON.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
BG=${BG:-/work/bg}
EXPERIMENTS=("${@:-gfdt-50k}")
cd "$HERE"

copy() {  # relative path: copy it from $BG when it is new here or differs
  local f=$1
  if ! cmp -s "$BG/$f" "$f"; then
    mkdir -p "$(dirname "$f")"
    cp "$BG/$f" "$f"
    echo "copied $f"
  fi
}

older() {  # result.json path: the copy in $BG differs from the one here and finished no later than it
  [ -e "$BG/$1" ] && [ -e "$1" ] && ! cmp -s "$BG/$1" "$1" && .venv/bin/python -c "
import json, sys
there, here = (json.load(open(p)).get('finished', '') for p in sys.argv[1:])
sys.exit(not there <= here)" "$BG/$1" "$1"
}

for name in "${EXPERIMENTS[@]}"; do
  summaries=$(.venv/bin/python -c "from modzoo_lab.grid.plan import load_experiment as l; print(l('$name').summaries)")
  [ -d "$BG/$summaries" ] || { echo "$name: no summaries in $BG/$summaries yet"; continue; }
  # a finished run: its result.json is there, or here (sync-checkout.sh clears a committed copy out of $BG, and
  # the grid then writes only the swaps.json that grows)
  for run in $(cd "$BG" && find "$summaries" \( -name result.json -o -name swaps.json \) -printf '%h\n' | sort -u); do
    [ -e "$BG/$run/result.json" ] || [ -e "$run/result.json" ] || continue
    if older "$run/result.json"; then
      echo "kept $run here: the result.json in $BG finished before this one, so it is no newer training" \
        "(compare them and the run dir's result.json there before copying anything by hand)" >&2
      continue
    fi
    # with a rebuild that did not reproduce its committed summary, that record, set aside in before-rebuild/
    for f in $(cd "$BG" && find "$run" "$run/before-rebuild" -maxdepth 1 -type f 2>/dev/null | sort); do
      copy "$f"
    done
  done
done
# a reference JSON is written once, at the end of its run: copied only when it is not here yet (one rewritten here
# by a newer lab/benchmarks/reference_score.py, resumed from its --state, is kept)
if [ -d "$BG/lab/experiments/results/reference-dql-50k" ]; then
  for f in $(cd "$BG" && find lab/experiments/results/reference-dql-50k -name '*.json' | sort); do
    [ -e "$f" ] || copy "$f"
  done
fi
for name in "${EXPERIMENTS[@]}"; do .venv/bin/modzoo experiment "$name" --report-only; done
git status --short lab/experiments/results docs
