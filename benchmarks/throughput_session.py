"""Before/after training throughput of the real `genie train` loop (issue 26), for a quiet machine.

    python benchmarks/throughput_session.py --before /tmp/genie-before [--scale 1.0] [--stages tokenizer lam dynamics]
        [--tokens data/tokens] [--skip-extras] [--name throughput_session]

(benchmarks/throughput_session.sh sets it up and runs it.) For each stage, the code before (a git worktree of
the earlier commit) and the code here each run `genie train STAGE --config configs/<stage>/cpu.yaml` — the same
YAML file for both — for a fixed number of steps on the same data, one after the other (before, after), with
two validations (at 1/3 and 2/3 of the steps) and a step timer (benchmarks/timing/step_timer.py). From the time
stamps:

- steady step time: the mean interval between consecutive steps after the first `warmup` ones, the two that
  hold a validation and checkpoint left out (data fetch, callbacks and logging are in every interval);
- validation + checkpoint: the second one's interval less the steady step (the first also pays one-off costs,
  e.g. compiling the eval-mode graph); charged at the recipe's `val_check_interval`;
- loop frames/s = frames per step / (steady step + validation and checkpoint per step);
- start-up: the first `warmup` steps less as many steady ones (k-means init, compilation), and the
  minutes of training after which the new code is ahead despite it.

Then (unless --skip-extras) `benchmarks/train_speed.py --name comparison` settings for the tokenizer and the
dynamics model, and `benchmarks/sampling_speed.py` at contexts 4 and 15, both trees. Writes
benchmarks/results/<name>.json and <name>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TIMER = ROOT / "benchmarks" / "timing"
CONFIGS = {"tokenizer": "configs/tokenizer/cpu.yaml", "lam": "configs/latent_actions/cpu.yaml",
           "dynamics": "configs/dynamics/cpu.yaml"}
STEPS = {"tokenizer": 60, "lam": 150, "dynamics": 36}  # about 3 minutes each on the quiet 2-core machine, before
WARMUP = 6
COMPARISON = {
    "tokenizer": ["patch_size=4", "width=256", "num_heads=8", "depth_encoder=4", "depth_decoder=4", "codebook_size=1024"],
    "dynamics": ["width=256", "num_heads=8", "depth=4", "vocab_size=1024", "grid=16x16"],
}


def run(cmd: list[str], tree: Path, log: Path) -> str:
    """Run `cmd` with `tree`'s packages first on the path, from `tree` (so `python -m` finds no other copy)."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{TIMER}"}
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}) after {time.perf_counter() - t:.0f} s: {' '.join(cmd)}\n"
                         f"{(p.stdout + p.stderr)[-3000:]}")
    return p.stdout + p.stderr


def train_loop(stage: str, tree: Path, steps: int, tokens: Path, out: Path) -> dict:
    recipe = yaml.safe_load((ROOT / CONFIGS[stage]).read_text())
    overlay = out / "timer.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": "step_timer.StepTimer"}]}}))
    data = tokens if stage == "dynamics" else (ROOT / recipe["data"]["data"])
    root = out / f"{tree.name}-{stage}"
    every = max(steps // 3, 2)
    cmd = [sys.executable, "-m", "genie", "train", stage, "--config", str(ROOT / CONFIGS[stage]), "--config", str(overlay),
           "--data.data", str(data.resolve()), "--trainer.default_root_dir", str(root),
           "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(every), "--trainer.max_time", "null",
           "--trainer.enable_progress_bar", "false"]
    t = time.perf_counter()
    run(cmd, tree, out / f"{tree.name}-{stage}.log")
    wall = time.perf_counter() - t
    st = json.loads((root / "step_times.json").read_text())
    ends = [st["start"], *st["ends"]]
    gaps = [b - a for a, b in zip(ends, ends[1:])]  # gaps[i]: step i+1, and whatever ran since step i ended
    val_steps = [int(v[0]) for v in st["validations"]]  # validation after step k sits in gaps[k]
    steady = [g for i, g in enumerate(gaps) if i >= WARMUP and i not in val_steps]
    step_s = statistics.mean(steady)
    vc = [gaps[k] - step_s for k in val_steps if k < len(gaps)]
    vc_s = vc[-1] if vc else 0.0
    interval = recipe["trainer"]["val_check_interval"]
    frames = st["frames_per_step"]
    loop_step = step_s + vc_s / interval
    return {"steps": steps, "wall_s": wall, "steady_step_s": step_s, "steady_step_sd_s": statistics.pstdev(steady),
            "validation_and_checkpoint_s": vc, "startup_s": sum(gaps[:WARMUP]) - WARMUP * step_s,
            "frames_per_step": frames, "train_frames_per_s": frames / step_s,
            "loop_frames_per_s": frames / loop_step, "recipe_val_check_interval": interval}


def extras(tree: Path, out: Path) -> dict:
    """train_speed at the comparison setting (fp32) and sampling speed, in `tree`'s own scripts."""
    res = {}
    for stage, over in COMPARISON.items():
        text = run([sys.executable, "benchmarks/train_speed.py", "--stage", stage, "--override", *over, "--skip-bf16",
                    "--name", f"_session_train_speed_{stage}"], tree, out / f"{tree.name}-train_speed-{stage}.log")
        res[f"train_speed_{stage}_comparison"] = float(re.search(r"fp32: train ([\d.]+) frames/s", text).group(1))
    text = run([sys.executable, "benchmarks/sampling_speed.py", "--steps", "8", "25", "--context", "4", "15",
                "--name", "_session_sampling_speed"], tree, out / f"{tree.name}-sampling.log")
    for m in re.finditer(r"steps\s+(\d+), context\s+(\d+).*?cached ([\d.]+) frames/s, uncached ([\d.]+)", text):
        res[f"sampling_steps{m.group(1)}_context{m.group(2)}"] = {"cached": float(m.group(3)), "uncached": float(m.group(4))}
    for f in (tree / "benchmarks" / "results").glob("_session_*.json"):
        f.unlink()
    return res


def markdown(res: dict) -> str:
    lines = [f"# Training throughput before/after ({res['date']}, {res['cpu']}, load before {res['load_before']})", "",
             f"before: {res['before']} · after: {res['after']} · each stage's `cpu` YAML of the after tree for both", "",
             "| stage | steps | before loop frames/s | after loop frames/s | ratio | before steady | after steady "
             "| after start-up s (before) | after ahead from |", "|---|---|---|---|---|---|---|---|---|"]
    for stage, r in res["stages"].items():
        b, a = r["before"], r["after"]
        lines.append(f"| {stage} | {b['steps']} | {b['loop_frames_per_s']:.1f} | {a['loop_frames_per_s']:.1f} | "
                     f"×{r['ratio']:.2f} | {b['train_frames_per_s']:.1f} | {a['train_frames_per_s']:.1f} | "
                     f"{a['startup_s']:.0f} ({b['startup_s']:.0f}) | {r['break_even_min']:.1f} min |")
    if res.get("extras"):
        lines += ["", "| benchmark | before | after |", "|---|---|---|"]
        for k, v in res["extras"]["after"].items():
            w = res["extras"]["before"].get(k)
            fmt = (lambda x: f"cached {x['cached']:.2f}, uncached {x['uncached']:.2f}") if isinstance(v, dict) else "{:.1f}".format
            lines.append(f"| {k} | {fmt(w) if w is not None else '—'} | {fmt(v)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="/tmp/genie-before", help="worktree of the commit before the change")
    ap.add_argument("--stages", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the step counts (a dry run: 0.15)")
    ap.add_argument("--tokens", default="data/tokens")
    ap.add_argument("--skip-extras", action="store_true")
    ap.add_argument("--name", default="throughput_session")
    a = ap.parse_args()
    before, after = Path(a.before).resolve(), ROOT
    tokens = (ROOT / a.tokens).resolve()
    import platform

    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": platform.processor() or platform.machine(),
           "load_before": os.getloadavg()[0], "before": str(before), "after": str(after), "scale": a.scale,
           "threads_env": os.environ.get("OMP_NUM_THREADS"), "stages": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genie-throughput-") as tmp:
        out = Path(tmp)
        for stage in a.stages:
            steps = max(int(STEPS[stage] * a.scale), 3 * 2 + WARMUP)
            r = {label: train_loop(stage, tree, steps, tokens, out) for label, tree in (("before", before), ("after", after))}
            b, f = r["before"], r["after"]
            r["ratio"] = f["loop_frames_per_s"] / b["loop_frames_per_s"]
            saved_per_step = b["steady_step_s"] - f["steady_step_s"]
            extra = f["startup_s"] - b["startup_s"]
            r["break_even_min"] = (extra / saved_per_step * b["steady_step_s"] / 60) if saved_per_step > 0 else float("inf")
            res["stages"][stage] = r
            print(f"{stage}: loop {b['loop_frames_per_s']:.1f} -> {f['loop_frames_per_s']:.1f} frames/s (×{r['ratio']:.2f}); "
                  f"start-up {b['startup_s']:.0f} -> {f['startup_s']:.0f} s", flush=True)
        if not a.skip_extras:
            res["extras"] = {label: extras(tree, out) for label, tree in (("before", before), ("after", after))}
    res["minutes"] = (time.perf_counter() - t0) / 60
    res["load_after"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(res, indent=2))
    (RESULTS / f"{a.name}.md").write_text(markdown(res))
    print(markdown(res))
    print(f"session took {res['minutes']:.1f} min")


if __name__ == "__main__":
    main()
