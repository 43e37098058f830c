"""Decode-time lever for issue 24: carry the prompt's own pixels into token positions the rollout left unchanged.

    python benchmarks/pixel_carry.py --model models/coinrun-cpu --data data/coinrun-heldout [--num-clips 64]
        [--steps 8] [--seed 0] [--threads 1] [--name world_model_pixel_carry_cpu] [--grid runs/carry/grid.png]

The tokenizer loses detail (~28 dB held-out), so even a grid position whose token never changes from the prompt
comes back blurred; copy-last, the baseline, shows the true pixels. This measures what showing the prompt frame's
true pixels there would buy, on exactly the rollouts `genie evaluate` scores (same clips, same per-batch generators,
the LAM's actions, 1 prompt frame, horizon 10), with the token mask M_k (b, h, w) = "unchanged in every frame
1..k since the prompt", upsampled to patches:

- plain:  the decoded frame (what genie evaluate reports);
- pass:   the prompt frame's pixels where M_k, the decoded frame elsewhere;
- resid:  decoded + M_k · (prompt − decoded prompt): the prompt's reconstruction error added back where unchanged;
- pass_eroded: pass where the position and its 4 neighbours are unchanged (no seam next to changed patches);
- resid_all: decoded + (prompt − decoded prompt) everywhere: the true prompt plus the decoded change since it;
- copy_last: the true prompt frame repeated.

Prints and saves per variant the rollout mean PSNR (and capped at 50 dB: bit-identical frames score 100), the agent
box PSNR at steps 5 and 10, and the unchanged fraction per step. A lever measurement, not a shipped sampling option.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from einops import repeat  # noqa: E402

from benchmarks.common import save  # noqa: E402

VARIANTS = ("plain", "pass", "resid", "pass_eroded", "resid_all", "copy_last")


def carried(dec: torch.Tensor, tokens: torch.Tensor, real0: torch.Tensor, patch: int) -> tuple[dict, torch.Tensor]:
    """dec (b, 1+T, c, H, W) decoded rollout (prompt first); tokens (b, 1+T, h, w); real0 (b, 1, c, H, W) the true
    prompt frame. Returns the generated frames (b, T, c, H, W) of every variant and the unchanged mask (b, T, h, w)."""
    same = (tokens[:, 1:] == tokens[:, :1]).cummin(dim=1).values
    up = lambda m: repeat(m.float(), "b t h w -> b t 1 (h p1) (w p2)", p1=patch, p2=patch)  # noqa: E731
    sp = torch.nn.functional.pad(same.float(), (1, 1, 1, 1), value=1.0)
    eroded = sp[..., 1:-1, 1:-1] * sp[..., :-2, 1:-1] * sp[..., 2:, 1:-1] * sp[..., 1:-1, :-2] * sp[..., 1:-1, 2:]
    m, me, gen = up(same), up(eroded), dec[:, 1:]
    return {"plain": gen, "pass": gen * (1 - m) + real0 * m,
            "resid": (gen + m * (real0 - dec[:, :1])).clamp(-1, 1),
            "pass_eroded": gen * (1 - me) + real0 * me,
            "resid_all": (gen + real0 - dec[:, :1]).clamp(-1, 1),
            "copy_last": real0.expand_as(gen)}, same


def main() -> None:
    from data_pipelines.clips import ClipDataset
    from genie.core.metrics import agent_box, psnr
    from genie.evaluate import _batch_generator, _batches, _box
    from genie.sampling import SamplingSettings, decode_tokens, rollout_tokens
    from genie.world_model import WorldModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--num-clips", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default="world_model_pixel_carry_cpu")
    ap.add_argument("--grid", default=None, help="PNG of the last batch's first two clips (rows: true, plain, resid, pass, resid_all)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    wm = WorldModel.from_pretrained(a.model).eval()
    ds = ClipDataset(a.data, a.split, clip_len=11, num_clips=a.num_clips, seed=a.seed)
    box = agent_box(ds.card, tuple(ds.frame_shape[:2]))
    settings = SamplingSettings(steps=a.steps).for_dynamics(wm.dynamics)
    patch = wm.tokenizer.config.patch_size
    whole, in_box, unchanged = {k: [] for k in VARIANTS}, {k: [] for k in VARIANTS}, []
    t0 = time.perf_counter()
    for b in _batches(ds, a.batch):  # the batches and generators of genie evaluate's world-model pass
        video = b["video"]
        g = _batch_generator(video.device, a.seed, b["index"])
        acts = wm.lam.infer_actions(video)
        prompt, _ = wm.encode_prompt(video[:, :1])
        tokens = rollout_tokens(wm.dynamics, prompt, acts, generator=g, settings=settings)
        dec = decode_tokens(wm.tokenizer, tokens).clamp(-1, 1)
        outs, same = carried(dec, tokens, video[:, :1], patch)
        unchanged.append(same.float().mean((2, 3)))
        target = video[:, 1:]
        for k, o in outs.items():
            whole[k].append(psnr(o, target))
            if box is not None:
                in_box[k].append(psnr(_box(o, box), _box(target, box)))
        print(f"batch {b['index']}: " + ", ".join(f"{k} {torch.cat(v).mean():.2f}" for k, v in whole.items()), flush=True)
    rows = {}
    for k in VARIANTS:
        p = torch.cat(whole[k])
        rows[k] = {"rollout_mean_psnr_db": float(p.mean()), "rollout_mean_psnr_db_cap50": float(p.clamp_max(50).mean()),
                   "per_step_psnr_db": [float(x) for x in p.mean(0)], "frames_at_cap": int((p >= 99.99).sum())}
        if box is not None:
            q = torch.cat(in_box[k])
            rows[k].update(agent_box_psnr_db_step5=float(q[:, 4].mean()), agent_box_psnr_db_step10=float(q[:, 9].mean()))
        print(f"{k:12s} mean {rows[k]['rollout_mean_psnr_db']:.2f} dB (cap 50: {rows[k]['rollout_mean_psnr_db_cap50']:.2f})"
              + (f"  box @5 {rows[k]['agent_box_psnr_db_step5']:.2f} @10 {rows[k]['agent_box_psnr_db_step10']:.2f}"
                 if box is not None else ""))
    frac = [float(x) for x in torch.cat(unchanged).mean(0)]
    print("unchanged since the prompt, per step:", " ".join(f"{x:.3f}" for x in frac))
    save(a.name, {"model": a.model, "data": a.data, "split": a.split, "clips": len(ds), "maskgit_steps": a.steps,
                  "seed": a.seed, "threads": a.threads, "minutes": (time.perf_counter() - t0) / 60,
                  "unchanged_fraction_per_step": frac, "variants": rows})
    if a.grid:
        import numpy as np
        from PIL import Image

        def u8(x):
            return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        cols = [0, 1, 3, 5, 10]
        lines = []
        for i in range(min(2, video.shape[0])):
            shown = {"true": video[i], **{k: torch.cat([dec[i, :1] if k == "plain" else video[i, :1], outs[k][i]])
                                          for k in ("plain", "resid", "pass", "resid_all")}}
            lines += [np.concatenate([u8(v[c]) for c in cols], 1) for v in shown.values()]
        img = np.concatenate(lines, 0)
        Image.fromarray(img).resize((img.shape[1] * 3, img.shape[0] * 3), Image.NEAREST).save(a.grid)
        print(f"wrote {a.grid}")


if __name__ == "__main__":
    main()
