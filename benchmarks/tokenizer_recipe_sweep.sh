#!/usr/bin/env bash
# Tokenizer recipe sweep at the 2-core CPU budget, on a lent GPU (fp32, as on the CPU), + tests/gpu + play frames/s
# (benchmarks/results/tokenizer_recipe_sweep.json, play_fps_gpu.json). Each variant trains for the steps it gets in
# 2 hours on the reference 2-core machine (see that JSON for how they were measured); all run side by side.
# Carried to the GPU machine: .whl/ (cp312 wheels of what its image lacks) and .gpudata/ with
# coinrun.tar.zst (data/coinrun) and heldout.tar.zst (data/coinrun-heldout), zstd tars unpacked with pyarrow there.
#   TRAIN_LIMIT=450 bash benchmarks/tokenizer_recipe_sweep.sh                      # on the GPU machine
#   ACC=cpu DIV=460 VAL=5 NCLIPS=4 TRAIN_LIMIT=200 PY=python bash benchmarks/tokenizer_recipe_sweep.sh   # CPU dry run
set -u
cd "$(dirname "$0")/.."
ACC=${ACC:-gpu}; DIV=${DIV:-1}; TRAIN_LIMIT=${TRAIN_LIMIT:-420}; OUT=${OUT:-runs/gpu-out}
R=runs/gpu; mkdir -p $R "$OUT"
T0=$(date +%s)
if [ "$ACC" = gpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $R/pip.log 2>&1 || { cat $R/pip.log; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $R/nvidia-smi.txt 2>&1
fi
PY=${PY:-python3}
unz() { $PY -c "import pyarrow as pa,sys,shutil; shutil.copyfileobj(pa.CompressedInputStream(pa.OSFile(sys.argv[1]),'zstd'), sys.stdout.buffer, 1<<22)" "$1" | tar -C data -x; }
mkdir -p data
[ -d data/coinrun/train ] || unz .gpudata/coinrun.tar.zst
[ -d data/coinrun-heldout/test ] || unz .gpudata/heldout.tar.zst
echo "setup $(( $(date +%s) - T0 )) s" | tee $R/summary.txt
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
if [ "$ACC" = gpu ]; then
  (start=$(date +%s); timeout 330 $PY -m pytest -q -x tests/gpu > $R/tests_gpu.log 2>&1; echo "tests/gpu exit $? in $(( $(date +%s) - start )) s" >> $R/tests_gpu.log) &
  (timeout 200 $PY benchmarks/play_compute_speed.py cuda $R/play_fps.json > $R/play_fps.log 2>&1) &
fi
# name  steps(2 CPU-h at the measured 2-core rate)  overrides
VARIANTS=(
 "base 4600"
 "lr2e-3 4600 --model.lr 0.002"
 "fsq 4220 --model.config.quantizer fsq --model.config.fsq_levels [8,8,4,4]"
 "conv16 3870 --model.config.conv_channels 16"
 "conv32 3100 --model.config.conv_channels 32"
 "w96 5500 --model.config.width 96"
 "bs8 2300 --data.batch_size 8"
 "conv16-lr2e-3 3870 --model.config.conv_channels 16 --model.lr 0.002"
)
for v in "${VARIANTS[@]}"; do
  set -- $v; name=$1; steps=$(( $2 / DIV )); shift 2
  (timeout $TRAIN_LIMIT $PY -m genie train tokenizer --config configs/tokenizer/cpu.yaml --data.data data/coinrun \
     --trainer.accelerator $ACC --trainer.max_steps $steps --trainer.max_time $(printf "00:00:%02d:%02d" $(( (TRAIN_LIMIT - 15) / 60 )) $(( (TRAIN_LIMIT - 15) % 60 ))) \
     --trainer.val_check_interval ${VAL:-500} --trainer.enable_progress_bar false \
     --trainer.default_root_dir $R/$name "$@" > $R/$name.train.log 2>&1
   echo "$name train exit $? after $(( $(date +%s) - T0 )) s" >> $R/$name.train.log
   $PY -m genie evaluate --model $R/$name/export --data data/coinrun-heldout --split test --num-clips ${NCLIPS:-128} --seed 0 \
     --device $([ $ACC = gpu ] && echo cuda || echo cpu) --out $R/$name.eval.json --quiet > $R/$name.eval.log 2>&1
   echo "$name eval exit $?" >> $R/$name.eval.log) &
done
wait
$PY - "$R" <<'PYEOF' | tee -a $R/summary.txt
import json, sys, glob, csv, os
R = sys.argv[1]; rows = []
for f in sorted(glob.glob(f"{R}/*.eval.json")):
    name = os.path.basename(f)[:-len(".eval.json")]
    d = json.load(open(f)); t = d.get("tokenizer", d)
    step = None
    for m in glob.glob(f"{R}/{name}/csv/version_*/metrics.csv"):
        for r in csv.DictReader(open(m)):
            step = max(step or 0, int(r["step"]))
    rows.append((name, step, json.dumps({k: v for k, v in t.items() if not isinstance(v, (list, dict))})[:400]))
for r in rows: print(*r)
PYEOF
grep -h "passed\|failed\|error\|exit" $R/tests_gpu.log 2>/dev/null | tail -3 | tee -a $R/summary.txt
cat $R/play_fps.log 2>/dev/null | tail -4 | tee -a $R/summary.txt
best=$($PY -c "
import json,glob,os
b=max(glob.glob('$R/*.eval.json'), key=lambda f: json.load(open(f)).get('tokenizer',{}).get('psnr_db',0) if isinstance(json.load(open(f)).get('tokenizer'),dict) else 0)
print(os.path.basename(b)[:-10])" 2>/dev/null)
echo "best: $best" | tee -a $R/summary.txt
tar -czf "$OUT/logs.tar.gz" --exclude='*.ckpt' --exclude='export' --exclude='tensorboard' $R
[ -n "$best" ] && tar -czf "$OUT/best_export.tar.gz" -C $R/$best export
for n in base conv16 fsq; do [ -d $R/$n/export ] && tar -czf "$OUT/export_$n.tar.gz" -C $R/$n export; done
ls -la "$OUT"; echo "total $(( $(date +%s) - T0 )) s"
