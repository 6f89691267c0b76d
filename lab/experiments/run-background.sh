#!/usr/bin/env bash
# Start (or resume) the long jobs of issue #16 in the background, from a separate checkout, so the working tree
# stays free for other work. Every job is resumable: rerunning this script after a session ended continues each
# one from its last checkpoint (finished grid runs are skipped, the reference runs resume from their --state).
#
#   BG=/work/bg REF=/work/ref bash lab/experiments/run-background.sh
#
# Collect first (collect-background.sh) and commit: the background checkout is updated only when none of its
# summaries is newer than this commit, and a swaps.json goes on growing after its run was collected.
#
# BG: the background checkout (cloned from this one on first use; updated with `git pull` only while none of its
# jobs runs: a running grid's workers import the code again for every run). REF: where the authors' Diffusion-QL
# code is unpacked (git archive of github.com/Zhendong-Wang/Diffusion-Policies-for-Offline-RL, see
# lab/benchmarks/reference_score.py). Logs go to $LOGS. The pilot, the ablation and zoo-more are finished and are not
# started here: their halfcheetah runs were trained on the first data (lab/experiments/results/gfdt-50k-first-data/),
# so on a machine with the re-collected file they would all train again.
#
# Only the repository outlives a machine: on a new one the run dirs (checkpoints) are gone. The grid then keeps the
# runs whose summaries are committed as finished elsewhere; --rebuild trains again, behind the runs still to
# train, those whose checkpoints a swap still needs (each checked against its committed summary), and a run that
# was mid-training starts again from step 0. All the rebuilds a swap needs can be more than one machine's lifetime
# (a new machine loses them again): REBUILD_ONLY="PATTERN ..." (run-key globs, task/arm/seedN) rebuilds just those,
# e.g. REBUILD_ONLY="bullet-walker2d-medium-v0/idql-joint/seed2"; `modzoo experiment gfdt-50k --status
# --rebuild-only PATTERN` prices a choice first.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
BG=${BG:-/work/bg}
REF=${REF:-/work/ref/dql}
LOGS=${LOGS:-/work/logs}
STATE=${STATE:-/work/ref-run/state}
mkdir -p "$LOGS" "$STATE"

busy() {  # dir: true while any process runs with its working directory in dir (a job of that checkout)
  local p
  for p in $(pgrep -f python); do [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$1" ] && return 0; done
  return 1
}

checkout() {  # dir: clone it on first use; else update it from here, only while none of its jobs runs
  local dir=$1
  if [ ! -d "$dir/.git" ]; then
    git clone -q "$HERE" "$dir"
    (cd "$dir" && bash .ci/install)
    return
  fi
  if busy "$dir"; then echo "jobs are running in $dir; not updating it"; return; fi
  # refuses, changing nothing there, while it holds summaries newer than this commit (collect them first)
  bash "$HERE/lab/experiments/sync-checkout.sh" "$HERE" "$dir"
  (cd "$dir" && .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . && rm -rf modzoo.egg-info)
}
checkout "$BG"
rebuild=(--rebuild)
if [ -n "${REBUILD_ONLY:-}" ]; then
  rebuild=()
  for p in $REBUILD_ONLY; do rebuild+=(--rebuild-only "$p"); done
fi

# start name command...: run the command in $BG at low priority, unless a job whose command line holds the name
# (followed by a space or its end, so gfdt-50k is not gfdt-50k-ablation) already runs
start() {
  local name=$1; shift
  if pgrep -f "$name( |\$)" > /dev/null; then echo "$name: already running"; return; fi
  (cd "$BG" && OMP_NUM_THREADS=1 nohup nice -n 10 "$@" >> "$LOGS/$(echo "$name" | tr ' /' '__').log" 2>&1 &) \
    < /dev/null > /dev/null 2>&1  # detached: the backgrounded list must not hold this script's stdout open
  echo "$name: started"
}
# A fresh machine has no datasets: the grid's (each at D4RL's size, seed 0, as docs/datasets.md lists them) are
# collected first, two at a time (a core each), by the same job; a dataset already cached is left as it is.
# Collection reproduces a dataset bit for bit (its fingerprint, which every run's result.json records, matched on a
# new machine), so runs trained before and after it share their data.
missing=$(cd "$BG" && .venv/bin/python -c "
from modzoo.bullet.data import dataset_path
from modzoo_lab.grid.plan import load_experiment
print(' '.join(t for t in load_experiment('gfdt-50k').tasks if not dataset_path(t).exists()))")
if [ -n "$missing" ]; then
  start "modzoo experiment gfdt-50k" bash -c "printf '%s\n' $missing | xargs -P 2 -I{} .venv/bin/modzoo data collect {} --seed 0
    exec .venv/bin/modzoo experiment gfdt-50k $(printf "%q " "${rebuild[@]}")"
else
  start "modzoo experiment gfdt-50k" .venv/bin/modzoo experiment gfdt-50k "${rebuild[@]}"
fi

# the authors' Diffusion-QL at 50k steps, one seed per task, one after another
if ! pgrep -f reference_score.py > /dev/null && [ -d "$REF" ]; then
  (cd "$BG" && nohup bash -c '
    for task in bullet-hopper-medium-v0 bullet-halfcheetah-medium-v0 bullet-walker2d-medium-v0; do
      json=lab/experiments/results/reference-dql-50k/$task-seed0.json
      [ -f "$json" ] && continue
      # on a fresh machine the grid job collects the datasets first: wait for this one (written atomically)
      until .venv/bin/python -c "import sys; from modzoo.bullet.data import dataset_path
sys.exit(not dataset_path(sys.argv[1]).exists())" $task; do sleep 60; done
      OMP_NUM_THREADS=1 nice -n 12 .venv/bin/python lab/benchmarks/reference_score.py --reference-dir '"$REF"' \
        --task $task --steps 50000 --eval-every 10000 --episodes 10 --seed 0 \
        --state '"$STATE"'/$task-seed0.pt --json "$json"
    done' >> "$LOGS/reference-dql-50k.log" 2>&1 &) < /dev/null > /dev/null 2>&1
  echo "reference runs: started"
fi
echo "summaries land in $BG/lab/experiments/results/; bring them here: BG=$BG bash lab/experiments/collect-background.sh"
