"""Tokenizer quality on held-out CoinRun levels: PSNR, SSIM, codebook usage; the training curve.

    python benchmarks/tokenizer_quality.py --export runs/tokenizer-cpu/export \
        --data data/coinrun-heldout --split test --run runs/tokenizer-cpu [--clips 256]

The held-out dataset is recorded from levels the training recording never drew
(`genie data coinrun --start-level 1000000 ... --split test`).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import save  # noqa: E402


def curve(run: Path) -> list[dict]:
    """(step, minutes, val PSNR) from the run's CSV logs (all versions, so resumed runs continue)."""
    minutes, out = {}, []
    for f in sorted(run.glob("csv/version_*/metrics.csv")):
        for r in csv.DictReader(open(f)):
            if r.get("train/minutes"):
                minutes[int(r["step"])] = float(r["train/minutes"])
            if r.get("val/psnr"):
                step = int(r["step"])
                known = [s for s in minutes if s <= step]
                out.append({"step": step, "minutes": round(minutes[max(known)], 2) if known else None,
                            "val_psnr": round(float(r["val/psnr"]), 3), "val_ssim": round(float(r["val/ssim"]), 4),
                            "val_codebook_usage": round(float(r.get("val/codebook_usage") or "nan"), 4)})
    return out


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--run", default=None)
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--name", default="tokenizer_quality_cpu")
    a = ap.parse_args()
    from data_pipelines.clips import ClipDataset
    from genie.core.metrics import psnr, ssim
    from genie.export import load_export
    from genie.nn import codebook_usage

    model = load_export(a.export, "tokenizer")
    cfg = model.config
    ds = ClipDataset(a.data, a.split, clip_len=cfg.num_frames, num_clips=a.clips, seed=0)
    psnrs, ssims, ids = [], [], []
    for i in range(0, len(ds), a.batch):
        video = torch.stack([ds[j]["video"] for j in range(i, min(len(ds), i + a.batch))])
        out = model(video)
        p, s = psnr(out.recon, video).mean(), ssim(out.recon, video).mean()
        psnrs.append(p * len(video))
        ssims.append(s * len(video))
        ids.append(out.indices.flatten())
    n = len(ds)
    usage = codebook_usage(torch.cat(ids), model.codebook_size)
    res = {"export": a.export, "data": a.data, "split": a.split, "clips": n, "clip_len": cfg.num_frames,
           "psnr_db": float(sum(psnrs) / n), "ssim": float(sum(ssims) / n),
           "codebook_usage": float(usage.usage), "codebook_perplexity": float(usage.perplexity),
           "params": sum(p.numel() for p in model.parameters()), "config": cfg.to_dict()}
    if a.run:
        res["curve"] = curve(Path(a.run))
    print(f"held-out {a.split}: PSNR {res['psnr_db']:.2f} dB, SSIM {res['ssim']:.4f}, codebook usage "
          f"{res['codebook_usage']:.1%} (perplexity {res['codebook_perplexity']:.1f}) over {n} clips of {cfg.num_frames} frames")
    for c in res.get("curve", []):
        print(f"  step {c['step']:5d}  {c['minutes']} min  val PSNR {c['val_psnr']:.2f} dB  SSIM {c['val_ssim']:.3f}  usage {c['val_codebook_usage']:.1%}")
    save(a.name, res)


if __name__ == "__main__":
    main()
