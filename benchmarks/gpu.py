"""GPU speed in one command (issue 11): the bare training step and the real `genie train` loop per stage,
achieved FLOP/s against a bf16 matmul rate measured in the same run, and sampling frames/s.

    python benchmarks/gpu.py                          # CUDA, comparison setting + coinrun-paper presets
    python benchmarks/gpu.py --device cpu --quick     # a dry run of the whole script on the CPU (debug presets)

Settings: batch 32 × 16 frames at 64×64, bf16 autocast on CUDA (fp32 on the CPU). FLOPs of one training
step are counted with torch.utils.flop_counter (6·params·tokens is the usual estimate of the same thing).
The `genie train` loop rate is the median of the `train/frames_per_s` values the ThroughputCallback logs
(every 25 steps, the first interval dropped as warm-up) in a real run on synthetic data, validation off.
Sampling: the dynamics model alone (tokens), batch 1, KV cache on, frames/s over `--sample-frames` frames.
Writes benchmarks/results/gpu_<device>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import save  # noqa: E402
from benchmarks.run_all import COMPARISON  # noqa: E402
from benchmarks.train_speed import build, loss_fn, make_batch  # noqa: E402
from genie.core.device import generator_for, resolve_device  # noqa: E402
from genie.core.registry import STAGES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def autocast(dev: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else nullcontext()


def matmul_rate(dev: torch.device, n: int, reps: int) -> float:
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    for _ in range(3):
        a @ b
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bare_step(stage: str, preset: str, over: dict, dev: torch.device, b: int, t: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build(stage, preset, over).to(dev)
    batch = make_batch(stage, model, b, t)
    batch = tuple(x.to(dev) for x in batch) if isinstance(batch, tuple) else batch.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")

    def step():
        with autocast(dev):
            loss = loss_fn(stage, model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as fc:
        with autocast(dev):
            loss = loss_fn(stage, model, batch)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    dt = (time.perf_counter() - t0) / steps
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "batch": b, "frames": t, "step_s": dt, "train_frames_per_s": b * t / dt,
            "flops_per_step": fc.get_total_flops(), "achieved_flops_per_s": fc.get_total_flops() / dt}


def synthetic_data(root: Path, stage: str, model_cfg, episodes: int = 24, n: int = 64) -> Path:
    """Random frames (tokenizer, LAM) or random tokens + actions (dynamics) in the dataset layout."""
    from data_pipelines.storage import DatasetWriter, Episode

    rng = np.random.default_rng(0)
    out = root / f"synthetic-{stage}"
    if out.exists():
        return out
    card = {"source": "synthetic"}
    if stage == "dynamics":
        card.update(vocab_size=model_cfg.vocab_size, num_actions=model_cfg.num_actions)
    with DatasetWriter(out, chunk_len=64, card=card) as w:
        for e in range(episodes + 2):
            if stage == "dynamics":
                frames = rng.integers(0, model_cfg.vocab_size, (n, *model_cfg.grid, 1)).astype(np.uint16)
                acts = rng.integers(0, model_cfg.num_actions, n).astype(np.int16)
            else:
                frames = rng.integers(0, 256, (n, model_cfg.image_size, model_cfg.image_size, 3)).astype(np.uint8)
                acts = None
            w.add_episode(Episode(frames=frames, actions=acts, level_seed=e), "train" if e < episodes else "val")
        w.close()
    return out


def train_loop(stage: str, preset: str, dev: torch.device, b: int, t: int, steps: int, tmp: Path, model_cfg) -> dict:
    data = synthetic_data(tmp, stage, model_cfg)
    run = tmp / f"run-{stage}-{preset}"
    accel = ["--trainer.accelerator", "gpu", "--trainer.devices", f"[{dev.index or 0}]", "--trainer.precision",
             "bf16-mixed", "--data.num_workers", "6"] if dev.type == "cuda" else \
        ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--data.num_workers", "0"]
    cmd = [sys.executable, "-m", "genie", "train", stage, "--config", str(ROOT / "configs" / STAGES[stage].package / f"{preset}.yaml"),
           "--data.data", str(data), "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(steps),
           "--trainer.max_time", "null", "--trainer.limit_val_batches", "0", "--trainer.val_check_interval", str(steps),
           "--trainer.enable_progress_bar", "false", "--data.batch_size", str(b), "--data.clip_len", str(t), *accel]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else f"exit {p.returncode}"}
    rows = list(csv.DictReader(open(next(run.glob("csv/version_*/metrics.csv")))))
    rates = [float(r["train/frames_per_s"]) for r in rows if r.get("train/frames_per_s")]
    return {"steps": steps, "wall_s": wall, "logged_rates": rates,
            "train_frames_per_s": statistics.median(rates[1:] or rates) if rates else None}


@torch.no_grad()
def sampling(preset: str, dev: torch.device, steps: int, ctx: int, frames: int) -> float:
    from dynamics.config import DynamicsConfig
    from dynamics.model import DynamicsModel
    from genie.sampling import rollout_tokens

    torch.manual_seed(0)
    model = DynamicsModel(DynamicsConfig.preset(preset)).to(dev).eval()
    cfg = model.config
    frames = max(1, min(frames, cfg.num_frames - ctx))
    prompt = torch.randint(0, cfg.vocab_size, (1, ctx, *cfg.grid), device=dev)
    prompt_actions = torch.randint(0, cfg.num_actions, (1, ctx - 1), device=dev)
    actions = torch.randint(0, cfg.num_actions, (1, frames), device=dev)

    def go():
        with autocast(dev):
            rollout_tokens(model, prompt, actions, steps=steps, generator=generator_for(dev, 0),
                           prompt_actions=prompt_actions if ctx > 1 else None)

    go()  # warm-up
    sync(dev)
    t = time.perf_counter()
    go()
    sync(dev)
    return frames / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="debug presets, small batch: a dry run of the script")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default 32; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=10, help="timed bare steps")
    ap.add_argument("--loop-steps", type=int, default=150, help="steps of each `genie train` run")
    ap.add_argument("--sample-frames", type=int, default=8)
    a = ap.parse_args()
    dev = resolve_device(a.device)
    b = a.batch or (2 if a.quick else 32)
    t = 4 if a.quick else 16
    settings = [("debug", "debug", {})] if a.quick else \
        [("comparison", "cpu", dict(o.split("=") for o in COMPARISON["tokenizer"])), ("coinrun-paper", "coinrun-paper", {})]
    n = 512 if dev.type == "cpu" else 8192
    peak = matmul_rate(dev, n, 3 if dev.type == "cpu" else 50)
    print(f"{dev}: measured {'bf16' if dev.type == 'cuda' else 'fp32'} matmul rate {peak / 1e12:.1f} TFLOP/s ({n}×{n})")
    res = {"settings": {"device": str(dev), "batch": b, "frames": t, "quick": a.quick,
                        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None},
           "matmul_flops_per_s": peak, "train": [], "sampling": []}
    lines = ["| setting | stage | params | bare step frames/s | achieved TFLOP/s (of matmul) | `genie train` frames/s "
             "(of bare) |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="genie-gpu-bench-") as tmp:
        for name, preset, over in settings:
            for stage in STAGES:
                if name == "comparison" and stage == "lam":
                    continue  # the comparison setting covers the tokenizer and the dynamics model
                stage_over = dict(o.split("=") for o in COMPARISON["dynamics"]) if (name == "comparison" and stage == "dynamics") \
                    else (over if stage == "tokenizer" else {})
                bare = bare_step(stage, preset, stage_over, dev, b, t, a.steps)
                row = {"setting": name, "stage": stage, "bare": bare, "fraction_of_matmul_rate": bare["achieved_flops_per_s"] / peak}
                if not stage_over:  # the YAML presets: the real training loop too
                    cfg = build(stage, preset, {}).config
                    loop = train_loop(stage, preset, dev, b, t, a.loop_steps if not a.quick else 30, Path(tmp), cfg)
                    row["genie_train"] = loop
                    if loop.get("train_frames_per_s"):
                        row["loop_fraction_of_bare"] = loop["train_frames_per_s"] / bare["train_frames_per_s"]
                res["train"].append(row)
                loop_txt = (f"{row['genie_train']['train_frames_per_s']:.0f} ({row['loop_fraction_of_bare']:.0%})"
                            if "loop_fraction_of_bare" in row else row.get("genie_train", {}).get("error", "—"))
                lines.append(f"| {name} | {stage} | {bare['params'] / 1e6:.1f}M | {bare['train_frames_per_s']:.0f} | "
                             f"{bare['achieved_flops_per_s'] / 1e12:.2f} ({row['fraction_of_matmul_rate']:.0%}) | {loop_txt} |")
                print(lines[-1], flush=True)
    sample_preset = "debug" if a.quick else "coinrun-paper"
    lines += ["", f"| sampling ({sample_preset} dynamics, batch 1, KV cache) | context 4 | context 15 |", "|---|---|---|"]
    for steps in (8, 25):
        fps = {}
        for ctx in (4, 15):
            c = min(ctx, 3) if a.quick else ctx
            fps[ctx] = sampling(sample_preset, dev, steps, c, a.sample_frames)
            res["sampling"].append({"preset": sample_preset, "steps": steps, "context": c, "frames_per_s": fps[ctx]})
        lines.append(f"| {steps} MaskGIT steps | {fps[4]:.2f} frames/s | {fps[15]:.2f} frames/s |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    res["table"] = table
    path = save(f"gpu_{dev.type}{'_quick' if a.quick else ''}", res)
    print(f"\n{table}\n\nwrote {path}")


if __name__ == "__main__":
    main()
