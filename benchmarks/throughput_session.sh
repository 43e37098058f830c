#!/usr/bin/env bash
# Issue 26's before/after throughput, to run on a quiet machine (nothing else on the 2 cores): ~20-25 minutes.
#
#   bash benchmarks/throughput_session.sh            # from the repository root, with the project's venv
#   SCALE=0.15 bash benchmarks/throughput_session.sh # a dry run with tiny step counts (a few minutes)
#
# It makes the worktree of the code before (BEFORE_SHA, default the commit before issue 26) at BEFORE_DIR if it
# is missing, makes the dynamics token dataset (data/tokens, as pretrained/README.md says) if it is missing,
# then runs benchmarks/throughput_session.py: each stage's real `genie train` loop with its cpu YAML, before and
# after, then train_speed's comparison setting and sampling speed for both. Results: benchmarks/results/
# throughput_session.{json,md}. Threads are PyTorch's default (all cores) unless OMP_NUM_THREADS is set.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE_SHA=${BEFORE_SHA:-f4df8bde87b2dadfe5b4208ed5bc81a7b06c0565}
BEFORE_DIR=${BEFORE_DIR:-/tmp/genie-before}
SCALE=${SCALE:-1.0}
NAME=${NAME:-throughput_session}
PY=${PY:-$(command -v python)}
[ -f .venv/bin/activate ] && . .venv/bin/activate && PY=python

echo "load: $(uptime)"
if [ "$(awk '{print int($1)}' /proc/loadavg)" -ge 1 ]; then
  echo "warning: the 1-minute load is $(cut -d' ' -f1 /proc/loadavg); the figures assume a quiet machine" >&2
fi
if [ ! -d "$BEFORE_DIR/genie" ]; then
  git worktree add "$BEFORE_DIR" "$BEFORE_SHA"
fi
if [ ! -f data/tokens/genie_dataset.json ]; then
  $PY -m genie tokenize --tokenizer pretrained/tokenizer --lam pretrained/lam --data data/coinrun --out data/tokens \
    --max-episodes 80 --quiet
fi
EXTRA=()
[ -n "${SKIP_EXTRAS:-}" ] && EXTRA+=(--skip-extras)
$PY benchmarks/throughput_session.py --before "$BEFORE_DIR" --scale "$SCALE" --name "$NAME" "${EXTRA[@]}"
echo "load: $(uptime)"
