#!/usr/bin/env bash
# Genie §3.3 on CoinRun, rerunnable end to end: record a search demonstrator, clone it on true actions (oracle BC)
# and on the LAM's latent actions (latent BC, decoded through maps fitted on N = 25, 100, 200, 1000 labels), play
# each agent once on 200 held-out levels (seeds 1,000,000-1,000,199; training levels are 0-99,999), and draw the
# table and the success-against-N figure (Genie Fig. 15).
#
#   pretrained/agents/reproduce.sh [LAM_OR_WORLD_MODEL_DIR] [OUT]      (defaults: pretrained/lam, runs/agents)
#   POLICY=search-right pretrained/agents/reproduce.sh pretrained/lam runs/agents-right
#
# EPISODES: demonstrator episodes to record (default 2,000).
# POLICY: the demonstrator, search (default move RIGHT+UP, 0.79 of its steps) or search-right (default RIGHT: it
# jumps only where its look-ahead says so). A new LAM only needs this script rerun with its folder: the latent
# agents are relabelled and refitted; the recording (DATA) and the oracle are reused when present (delete them to
# redo them), and so are the baselines' evaluations.
set -euo pipefail
MODEL=${1:-pretrained/lam}
OUT=${2:-runs/agents}
POLICY=${POLICY:-search}
DATA=${DATA:-data/coinrun-$POLICY}
EPISODES=${EPISODES:-2000}
STEPS=${STEPS:-6000}
EVAL=(--start-level 1000000 --num-levels 200 --seed 0 --quiet)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/eval"

[ -d "$DATA" ] || genie data coinrun --policy "$POLICY" --out "$DATA" --episodes "$EPISODES" --start-level 0 \
    --num-levels 100000 --seed 0 --quiet
[ -d "$OUT/oracle" ] || genie agent train --kind oracle --data "$DATA" --out "$OUT/oracle" --steps "$STEPS" --quiet
genie agent train --kind latent --data "$DATA" --model "$MODEL" --labels 200 --out "$OUT/latent-n200" \
    --steps "$STEPS" --overwrite --quiet
for N in 25 100 1000; do
    genie agent train --kind latent --data "$DATA" --model "$MODEL" --labels "$N" --policy-from "$OUT/latent-n200" \
        --steps 0 --out "$OUT/latent-n$N" --overwrite --quiet
done

for A in random held right right-up "$POLICY"; do
    [ -f "$OUT/eval/$A.json" ] || genie agent eval --agent "$A" "${EVAL[@]}" --out "$OUT/eval/$A.json"
done
for A in sample argmax; do
    [ -f "$OUT/eval/oracle-act-$A.json" ] || genie agent eval --agent "$OUT/oracle" --act "$A" "${EVAL[@]}" \
        --out "$OUT/eval/oracle-act-$A.json"
done
for N in 25 100 200 1000; do
    for D in sample argmax; do
        genie agent eval --agent "$OUT/latent-n$N" --decode "$D" "${EVAL[@]}" --out "$OUT/eval/latent-n$N-$D.json"
    done
done
genie agent report --evals "$OUT"/eval/*.json --out "$OUT/report" --decode "${DECODE:-sample}"
