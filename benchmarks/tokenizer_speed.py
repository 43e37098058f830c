"""Tokenizer speed: training frames/s in bf16-mixed and fp32, achieved FLOP/s against the matmul rates
measured in the same run, and encode/decode frames/s.

    python benchmarks/tokenizer_speed.py [--preset cpu] [--batch 4] [--frames 16] [--steps 3]

FLOPs of a training step are counted with torch.utils.flop_counter (matmuls and attention).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import save  # noqa: E402


def matmul_rate(dtype: torch.dtype, n: int = 1024, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def train_rate(model, x, bf16: bool, steps: int) -> tuple[float, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast(bf16):
            out = model(x)
            loss = (out.recon.float() - x).pow(2).mean() + out.quant_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # k-means init and warm-up
    with FlopCounterMode(display=False) as fc:
        with autocast(bf16):
            out = model(x)
            loss = (out.recon.float() - x).pow(2).mean() + out.quant_loss
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    dt = min(times)
    return x.shape[0] * x.shape[1] / dt, flops / dt


@torch.no_grad()
def codec_rate(model, x, bf16: bool, reps: int = 2) -> tuple[float, float]:
    model.eval()
    with autocast(bf16):
        ids = model.encode(x)
        model.decode(ids)
        t = time.perf_counter()
        for _ in range(reps):
            ids = model.encode(x)
        enc = x.shape[0] * x.shape[1] * reps / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(reps):
            model.decode(ids)
        dec = x.shape[0] * x.shape[1] * reps / (time.perf_counter() - t)
    model.train()
    return enc, dec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16-batch", type=int, default=1, help="bf16 is slow on CPUs without AMX/AVX512-BF16")
    ap.add_argument("--override", nargs="*", default=[], help="config overrides key=value")
    a = ap.parse_args()
    from tokenizer.config import TokenizerConfig
    from tokenizer.model import VideoTokenizer

    over = {k: type(getattr(TokenizerConfig(), k))(v) for k, v in (o.split("=") for o in a.override)}
    cfg = TokenizerConfig.preset(a.preset, **over)
    torch.manual_seed(0)
    res = {"settings": {"preset": a.preset, "overrides": over, "batch": a.batch, "frames": a.frames,
                        "threads": torch.get_num_threads()}}
    rates = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16, n=512, reps=1)}
    res["matmul_flops_per_s"] = rates
    print(f"matmul: fp32 {rates['fp32'] / 1e9:.1f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.2f} GFLOP/s")
    for name, bf16, batch in (("fp32", False, a.batch), ("bf16-mixed", True, a.bf16_batch)):
        model = VideoTokenizer(cfg)
        x = torch.rand(batch, a.frames, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
        fps, flops = train_rate(model, x, bf16, a.steps if not bf16 else 1)
        enc, dec = codec_rate(model, x, bf16)
        res[name] = {"batch": batch, "train_frames_per_s": fps, "achieved_flops_per_s": flops,
                     "fraction_of_bf16_matmul_rate": flops / rates["bf16"], "fraction_of_fp32_matmul_rate": flops / rates["fp32"],
                     "encode_frames_per_s": enc, "decode_frames_per_s": dec}
        print(f"{name}: train {fps:.1f} frames/s, {flops / 1e9:.1f} GFLOP/s achieved "
              f"({flops / rates['fp32']:.0%} of fp32 matmul, {flops / rates['bf16']:.0%} of bf16 matmul); "
              f"encode {enc:.0f} frames/s, decode {dec:.0f} frames/s")
    save(f"tokenizer_speed_{a.preset}" + ("_" + "_".join(a.override) if a.override else ""), res)


if __name__ == "__main__":
    main()
