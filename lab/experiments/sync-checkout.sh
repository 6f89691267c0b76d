#!/usr/bin/env bash
# Bring the background checkout DIR up to this checkout's commit (HERE's HEAD), fast-forward only.
#
#   bash lab/experiments/sync-checkout.sh HERE DIR
#
# The background jobs write summaries (lab/experiments/results) and reports (docs) into DIR; the same summaries are
# committed here once collect-background.sh has brought them over. A summary in DIR that the incoming commit also
# holds must match it byte for byte: one that differs is newer than the commit (a swaps.json grows after its run
# was collected), and overwriting it would lose it. So every such file is checked first, and when any differs
# nothing in DIR is touched: the script names them and exits 1 (collect, commit, run again). Only then are the
# matching copies cleared out of the merge's way. The reports in DIR's docs/ are regenerated here from the
# summaries, so the incoming ones always replace them.
set -euo pipefail
HERE=$1
DIR=$2
cd "$DIR"
git fetch -q "$HERE" HEAD

held() { git cat-file -e "FETCH_HEAD:$1" 2>/dev/null; }  # the incoming commit holds path f
matches() { held "$1" && git show "FETCH_HEAD:$1" | cmp -s - "$1"; }  # ... and its version is the file in DIR

untracked=$(git ls-files --others --exclude-standard lab/experiments/results)
modified=$(git ls-files --modified lab/experiments/results)
differ=()
for f in $untracked; do  # an untracked file the commit does not hold is left alone by the merge
  if held "$f" && ! matches "$f"; then differ+=("$f"); fi
done
for f in $modified; do  # a modified tracked file blocks the merge unless it is what the commit brings
  matches "$f" || differ+=("$f")
done
# any other local change there (code, configs) would stop the merge halfway: refuse before touching anything
mapfile -t others < <(git diff --name-only HEAD -- . ':!lab/experiments/results' ':!docs')
if [ ${#others[@]} -gt 0 ]; then
  echo "$DIR has local changes outside its summaries and reports; nothing was changed there. Commit them here" \
    "or undo them there, and run this again:" >&2
  printf '  %s\n' "${others[@]}" >&2
  exit 1
fi
if [ ${#differ[@]} -gt 0 ]; then
  echo "$DIR holds ${#differ[@]} summaries that differ from the commit being pulled; nothing was changed there." \
    "Bring them here first (BG=$DIR bash lab/experiments/collect-background.sh), commit, and run this again:" >&2
  printf '  %s\n' "${differ[@]}" >&2
  exit 1
fi

for f in $untracked; do if held "$f"; then rm "$f"; fi; done
for f in $modified; do git checkout -q -- "$f"; done
git ls-files --others --exclude-standard docs | while read -r f; do
  if held "$f"; then rm "$f"; fi
done
git checkout -q -- docs
git merge -q --ff-only FETCH_HEAD
