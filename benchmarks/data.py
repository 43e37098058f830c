"""Data benchmarks: CoinRun recording speed, loader clips/s, size on disk per million frames.

    python benchmarks/data.py [--episodes 100] [--data benchmarks/tmp/coinrun100]

Records `--episodes` CoinRun episodes (unless the folder exists), then times random 16-frame 64×64
clips from the on-disk dataset in one process and through the DataModule with 2 workers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--data", default="benchmarks/tmp/coinrun100")
    ap.add_argument("--clips", type=int, default=5000)
    a = ap.parse_args()

    from data_pipelines.clips import ClipDataset
    from data_pipelines.coinrun import record_coinrun
    from data_pipelines.datamodule import VideoDataModule
    from data_pipelines.storage import info

    result: dict = {"settings": {"episodes": a.episodes, "clip_len": 16, "resolution": 64}}
    if not Path(a.data).exists():
        s = record_coinrun(a.data, a.episodes, seed=0, progress=False)
        result["recording"] = {"episodes": s["episodes"], "frames": s["frames"], "seconds": round(s["seconds"], 2),
                               "frames_per_s": round(s["frames_per_s"], 1), "num_envs": 16}
        print(f"recording: {s['frames']} frames in {s['seconds']:.1f} s = {s['frames_per_s']:.0f} frames/s")
    d = info(a.data)
    result["size"] = {"frames": d["frames"], "bytes": d["size_bytes"], "bytes_per_million_frames": d["bytes_per_million_frames"]}
    print(f"size: {d['size_bytes'] / 1e6:.1f} MB for {d['frames']} frames = {d['bytes_per_million_frames'] / 1e9:.2f} GB per million frames")

    t0 = time.perf_counter()
    ds = ClipDataset(a.data, "train", clip_len=16)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), a.clips)
    for i in idx[:200]:
        ds[int(i)]
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    one = a.clips / (time.perf_counter() - t0)
    print(f"one process: {one:.0f} clips/s (float (16,3,64,64) in [-1,1] + actions), open {open_s:.2f} s")

    dm = VideoDataModule(a.data, clip_len=16, batch_size=32, num_workers=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(5):
        next(it)
    n, t0 = 0, time.perf_counter()
    while n < a.clips:
        n += next(it)["video"].shape[0]
    two = n / (time.perf_counter() - t0)
    print(f"DataModule, 2 workers, batch 32: {two:.0f} clips/s")
    result["loader"] = {"one_process_clips_per_s": round(one, 1), "datamodule_2_workers_clips_per_s": round(two, 1),
                        "open_seconds": round(open_s, 2), "target_clips_per_s": 1000}
    save("data", result)


if __name__ == "__main__":
    main()
