#!/usr/bin/env bash
# Dynamics levers for stable rollouts (issue 24 item 2) on CPU: the same number of steps per lever, one run at a time
# on one thread, each scored with the committed tokenizer + LAM on held-out CoinRun, then one table.
#   STEPS=99 CLIPS=16 MARGIN=4 benchmarks/dynamics_levers.sh            (from the repository root)
# Runs go to runs/dyn-levers/NAME (training) and runs/dyn-levers/eval/NAME.json (scores); a lever already trained
# (its export/ exists) is not trained again, one already scored is not scored again.
set -euo pipefail
. .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
STEPS=${STEPS:-99} CLIPS=${CLIPS:-16} MARGIN=${MARGIN:-4} OUT=runs/dyn-levers
A=configs/dynamics/ablations
train() {  # NAME [OVERLAY]
  local name=$1; shift
  [ -d "$OUT/$name/export" ] && return
  genie train dynamics --config configs/dynamics/cpu.yaml ${1:+--config "$1"} --data.data data/tokens \
    --trainer.default_root_dir "$OUT/$name" --trainer.max_steps "$STEPS" --model.warmup_steps 30 \
    --trainer.val_check_interval 60 --data.val_clips 32 > "$OUT/$name.log" 2>&1
}
score() {  # NAME RUN [ARGS]
  local name=$1 run=$2; shift 2
  [ -f "$OUT/eval/$name.json" ] && return
  python benchmarks/dynamics_levers.py score --name "$name" --run "$OUT/$run" --num-clips "$CLIPS" \
    --margin-clips "$MARGIN" --out-dir "$OUT/eval" "$@"
}
mkdir -p "$OUT"
train baseline;        score baseline baseline
train context_noise  $A/cpu-context-noise.yaml;  score context_noise context_noise
train action_dropout $A/cpu-action-dropout.yaml; score action_dropout action_dropout
score action_dropout_w1.5 action_dropout --guidance 1.5
train action_token   $A/cpu-action-token.yaml;   score action_token action_token
python benchmarks/dynamics_levers.py table --evals "$OUT/eval" \
  --order baseline context_noise action_dropout action_dropout_w1.5 action_token \
  --notes "Each lever trained $STEPS steps from scratch (configs/dynamics/cpu.yaml + its overlay, warmup 30, batch 8, 1 thread) on data/tokens; scored on $CLIPS held-out CoinRun clips (data/coinrun-heldout), 8 MaskGIT steps, temperature 1, seed 0, margin on the first $MARGIN clips."
