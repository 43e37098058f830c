"""Run every speed benchmark and write benchmarks/results/*.json plus a summary table (results/SUMMARY.md).

    python benchmarks/run_all.py [--quick]

Besides the `cpu` presets, every figure is also measured at one fixed comparison setting: 64×64,
patch 4, width 256, tokenizer 4+4 layers, dynamics 4 layers, 1024 codes, 16 frames, batch 4.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from genie.core.registry import STAGES

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COMPARISON = {
    "tokenizer": ["patch_size=4", "width=256", "num_heads=8", "depth_encoder=4", "depth_decoder=4", "codebook_size=1024"],
    "dynamics": ["width=256", "num_heads=8", "depth=4", "vocab_size=1024", "grid=16x16"],
}


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=HERE.parent)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip bf16 (very slow on CPUs without AMX) and the data benchmark")
    a = ap.parse_args()
    t0 = time.time()
    bf16 = ["--skip-bf16"] if a.quick else []
    if not a.quick:
        run("benchmarks/data.py")
    for stage in STAGES:
        run("benchmarks/train_speed.py", "--stage", stage, "--preset", "cpu", *bf16)
    for stage, over in COMPARISON.items():
        run("benchmarks/train_speed.py", "--stage", stage, "--preset", "cpu", "--batch", "4", "--frames", "16",
            "--override", *over, "--name", f"train_speed_{stage}_comparison", *bf16)
    run("benchmarks/sampling_speed.py", "--preset", "cpu")
    run("benchmarks/sampling_speed.py", "--preset", "cpu", "--override", *COMPARISON["dynamics"], "--name", "sampling_speed_comparison")
    lines = ["| benchmark | setting | figure |", "|---|---|---|"]
    for f in sorted(RESULTS.glob("*.json")):
        d = json.loads(f.read_text())
        if f.stem.startswith("train_speed"):
            for prec in ("fp32", "bf16-mixed"):
                if prec in d:
                    r = d[prec]
                    extra = (f", encode {r['encode_frames_per_s']:.0f} / decode {r['decode_frames_per_s']:.0f} frames/s"
                             if "encode_frames_per_s" in r else "")
                    lines.append(f"| {f.stem} | {prec}, batch {r['batch']} | {r['train_frames_per_s']:.1f} train frames/s, "
                                 f"{r['fraction_of_fp32_matmul_rate']:.0%} of fp32 / {r['fraction_of_bf16_matmul_rate']:.0%} "
                                 f"of bf16 matmul rate{extra} |")
        elif f.stem.startswith("sampling_speed"):
            for r in d["rows"]:
                lines.append(f"| {f.stem} | {r['steps']} steps, context {r['context']} | cached {r['cached']:.2f} frames/s, "
                             f"uncached {r['uncached']:.2f} frames/s (×{r['speedup']:.1f}) |")
        elif f.stem == "data":
            lines.append(f"| data | loader | {d['loader']['one_process_clips_per_s']:.0f} clips/s one process, "
                         f"{d['loader']['datamodule_2_workers_clips_per_s']:.0f} clips/s DataModule 2 workers |")
    machine = json.loads(next(RESULTS.glob("*.json")).read_text())["machine"]
    text = (f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}.\n\n"
            + "\n".join(lines) + "\n")
    (RESULTS / "SUMMARY.md").write_text(text)
    print(text)
    print(f"all benchmarks in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
