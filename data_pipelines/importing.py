"""`genie data import`: a folder of video files (recursively) into the genie dataset format.

Each file becomes one episode without actions. Files are split into train/val/test by a hash of their
path relative to the folder, so one file never lands in two splits. A file that cannot be decoded is
skipped, named on stderr and counted in the summary.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from data_pipelines.errors import GenieInputError
from data_pipelines.storage import DEFAULT_CHUNK_LEN, DatasetWriter, Episode
from data_pipelines.video import VideoDecodeError, list_videos, read_video_resized, split_of_file


def import_videos(videos: str | Path, out: str | Path, *, resolution: int = 64, val_fraction: float = 0.05,
                  test_fraction: float = 0.05, overwrite: bool = False, chunk_len: int = DEFAULT_CHUNK_LEN,
                  parquet: bool = False, backend: str = "auto", progress: bool = True) -> dict:
    if resolution < 8:
        raise GenieInputError(f"--resolution must be >= 8, got {resolution}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GenieInputError("--val-fraction and --test-fraction must be in [0,1) and sum below 1")
    root = Path(videos)
    files, others = list_videos(root)
    card = {
        "source": "video-folder",
        "num_actions": 0,
        "recipe": {"videos": str(root), "resolution": resolution, "files": len(files), "resize": "centre square crop, antialiased bilinear",
                   "val_fraction": val_fraction, "test_fraction": test_fraction, "decoder": backend},
        "split_key": "file",
    }
    skipped: list[tuple[str, str]] = []
    t0, frames = time.perf_counter(), 0
    it = files
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(files, unit="file", desc="importing videos", dynamic_ncols=True)
    with DatasetWriter(out, overwrite=overwrite, chunk_len=chunk_len, card=card, parquet=parquet) as w:
        for f in it:
            rel = f.relative_to(root).as_posix()
            try:
                arr = read_video_resized(f, resolution, backend=backend)
            except VideoDecodeError as e:
                skipped.append((rel, str(e)))
                print(f"genie: skipping {f}: {e}", file=sys.stderr)
                continue
            w.add_episode(Episode(frames=arr, source=rel), split_of_file(rel, val_fraction, test_fraction))
            frames += len(arr)
            if progress:
                it.set_postfix(fps=f"{frames / (time.perf_counter() - t0):.0f}")
        if frames == 0:
            raise GenieInputError(f"{root}: none of the {len(files)} video files could be decoded "
                                  f"(first: {skipped[0][0]}: {skipped[0][1]})")
        w.card["skipped"] = [{"file": r, "reason": why} for r, why in skipped]
        path = w.close()
    return {"path": str(path), "imported": len(files) - len(skipped), "skipped": skipped,
            "ignored_non_video": [p.relative_to(root).as_posix() for p in others], "frames": frames,
            "seconds": time.perf_counter() - t0,
            "splits": {s: w.stats[s]["episodes"] for s in w.stats if w.stats[s]["episodes"]}}
