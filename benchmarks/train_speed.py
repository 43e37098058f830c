"""Training speed of a stage: frames/s in fp32 and bf16-mixed, achieved FLOP/s against the matmul rates
measured in the same run, and (tokenizer) encode/decode frames/s.

    python benchmarks/train_speed.py --stage tokenizer [--preset cpu] [--batch 4] [--frames 16]
    python benchmarks/train_speed.py --stage tokenizer --override patch_size=4 width=256 depth_encoder=4 \
        depth_decoder=4 codebook_size=1024 num_heads=8 --name comparison     # the fixed comparison setting

FLOPs of one training step are counted with torch.utils.flop_counter (matmuls and attention).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.common import save  # noqa: E402
from genie.core.registry import STAGES  # noqa: E402
from genie.core.training import COMPILE_DEFAULT, adamw_kernel  # noqa: E402
from genie.core.training import compile_model as compile_blocks  # noqa: E402
from genie.stages import stage_class  # noqa: E402


def matmul_rate(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def build(stage: str, preset: str, over: dict):
    C, M = stage_class(stage, "config"), stage_class(stage, "model")
    base = C.preset(preset)
    typed = {k: (tuple(int(x) for x in v.split("x")) if isinstance(getattr(base, k), tuple) else type(getattr(base, k))(v))
             for k, v in over.items()}
    return M(C.preset(preset, **typed))


def loss_fn(stage: str, model, batch):
    if stage == "tokenizer":
        out = model(batch)
        return F.mse_loss(out.recon.float(), batch) + out.quant_loss
    if stage == "lam":
        out = model(batch)
        return F.mse_loss(out.pred.float(), batch[:, 1:]) + out.quant_loss
    tokens, actions = batch
    from dynamics.maskgit import training_mask
    from genie.core.device import generator_for

    mask = training_mask(tokens.shape, keep_first_frames=1, generator=generator_for(tokens.device, 0), device=tokens.device)
    # as dynamics.module does: the logits of the masked positions only
    logits = model(tokens.masked_fill(mask, model.mask_id), actions, where=mask)
    return F.cross_entropy(logits.float(), tokens[mask])


def make_batch(stage: str, model, b: int, t: int):
    cfg = model.config
    if stage == "dynamics":
        return (torch.randint(0, cfg.vocab_size, (b, t, *cfg.grid)), torch.randint(0, cfg.num_actions, (b, t - 1)))
    return torch.rand(b, t, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1


def train_rate(stage, model, batch, bf16: bool, steps: int, flops: float | None = None,
               compile_model: bool = False) -> tuple[float, float]:
    """Train frames/s (best of `steps` timed steps) and achieved FLOP/s, with the optimizer `genie train` uses
    (`adamw_kernel`) and, with `compile_model`, its ST blocks compiled as `genie train --compile true` does. The
    FLOPs of one step are counted once (FlopCounterMode, in eager mode) unless given: they do not depend on the
    precision, so the bf16 run reuses the fp32 count. The warm-up step (allocator, k-means codebook init,
    compilation) always runs in fp32: on CPUs without bf16 matmul units a bf16 step takes minutes, and its
    one-off kernel set-up is negligible beside that."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, **adamw_kernel(params))
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def step(c=ctx):
        with c():
            loss = loss_fn(stage, model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(nullcontext)  # warm-up
    if flops is None:
        with FlopCounterMode(display=False) as fc:
            loss = loss_fn(stage, model, batch)
            loss.backward()
        opt.zero_grad(set_to_none=True)
        flops = fc.get_total_flops()
    if compile_model:
        compile_blocks(model)
        for _ in range(2):  # compilation, then the first compiled step
            step(nullcontext)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    dt = min(times)
    frames = (batch[0] if isinstance(batch, tuple) else batch).shape[:2].numel()
    return frames / dt, flops / dt


@torch.no_grad()
def codec_rate(model, x) -> tuple[float, float]:
    model.eval()
    ids = model.encode(x)
    t = time.perf_counter()
    ids = model.encode(x)
    enc = x.shape[0] * x.shape[1] / (time.perf_counter() - t)
    t = time.perf_counter()
    model.decode(ids)
    dec = x.shape[0] * x.shape[1] / (time.perf_counter() - t)
    model.train()
    return enc, dec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=list(STAGES), default="tokenizer")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--bf16-batch", type=int, default=1, help="bf16 is slow on CPUs without AMX/AVX512-BF16")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--override", nargs="*", default=[], help="config overrides key=value (tuples as 16x16)")
    ap.add_argument("--compile", type=lambda v: v.lower() in ("1", "true", "yes"), default=COMPILE_DEFAULT,
                    help="compile the ST blocks for the fp32 run, as `genie train --compile` (default: its default)")
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    over = dict(o.split("=") for o in a.override)
    res = {"settings": {"stage": a.stage, "preset": a.preset, "overrides": over, "batch": a.batch, "frames": a.frames,
                        "threads": torch.get_num_threads(), "compile": a.compile}}
    rates = {"fp32": matmul_rate(torch.float32, 1024, 3), "bf16": matmul_rate(torch.bfloat16, 512, 1)}
    res["matmul_flops_per_s"] = rates
    print(f"matmul: fp32 {rates['fp32'] / 1e9:.1f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.2f} GFLOP/s")
    runs = [("fp32", False, a.batch)] + ([] if a.skip_bf16 else [("bf16-mixed", True, a.bf16_batch)])
    flops_per_frame = None
    for name, bf16, b in runs:
        torch.manual_seed(0)
        model = build(a.stage, a.preset, over)
        batch = make_batch(a.stage, model, b, a.frames)
        step_flops = flops_per_frame * b * a.frames if flops_per_frame else None
        fps, flops = train_rate(a.stage, model, batch, bf16, a.steps if not bf16 else 1, step_flops,
                                compile_model=a.compile and not bf16)
        flops_per_frame = flops_per_frame or flops / fps
        row = {"batch": b, "params": sum(p.numel() for p in model.parameters()), "train_frames_per_s": fps,
               "achieved_flops_per_s": flops, "fraction_of_bf16_matmul_rate": flops / rates["bf16"],
               "fraction_of_fp32_matmul_rate": flops / rates["fp32"]}
        msg = (f"{name}: train {fps:.1f} frames/s, {flops / 1e9:.1f} GFLOP/s achieved "
               f"({flops / rates['fp32']:.0%} of the fp32 matmul rate, {flops / rates['bf16']:.0%} of the bf16 rate)")
        if a.stage == "tokenizer" and not bf16:  # inference runs in fp32 in both cases
            row["encode_frames_per_s"], row["decode_frames_per_s"] = codec_rate(model, batch)
            msg += f"; encode {row['encode_frames_per_s']:.0f} frames/s, decode {row['decode_frames_per_s']:.0f} frames/s"
        res[name] = row
        print(msg)
    save(a.name or f"train_speed_{a.stage}_{a.preset}", res)


if __name__ == "__main__":
    main()
