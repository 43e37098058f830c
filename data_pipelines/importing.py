"""`genie data import`: a folder of video files (recursively) into the genie dataset format.

Each file becomes one episode without actions. Files are split into train/val/test by a hash of their
path relative to the folder, so one file never lands in two splits, with at least one file for val
(2+ files) and for test (3+ files) whenever those fractions are above 0 (`assign_splits`). A file that
cannot be opened or decoded is skipped, named on stderr and counted in the summary.

Frames are fitted to the target size (`--resolution 64` square, or `64x48`: width × height) by `fit`:
"pad" (default) letterboxes the whole frame to the target aspect, "crop" cuts the centre (and says how
many rows/columns it dropped), "stretch" scales each axis. The card records the mode, every source size
and what was added or dropped.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from data_pipelines.storage import DEFAULT_CHUNK_LEN, DatasetWriter, Episode
from data_pipelines.video import (
    FITS,
    VideoDecodeError,
    assign_splits,
    fit_plan,
    list_videos,
    parse_resolution,
    probe_video,
    read_video_fitted,
)
from genie.core.errors import GenieInputError


def _crop_note(plan: dict, files: int) -> str | None:
    """One line saying what `--fit crop` dropped from frames of one source size, or None."""
    (h, w), (t, b), (l, r) = plan["source"], plan["crop_rows"], plan["crop_cols"]
    if t + b:
        return (f"genie: note: --fit crop drops {t + b} of {h} rows ({t} top, {b} bottom) of {w}×{h} frames "
                f"({files} file{'s' * (files != 1)}); --fit pad keeps them")
    if l + r:
        return (f"genie: note: --fit crop drops {l + r} of {w} columns ({l} left, {r} right) of {w}×{h} frames "
                f"({files} file{'s' * (files != 1)}); --fit pad keeps them")
    return None


@contextmanager
def time_limit(seconds: float | None):
    """Raise VideoDecodeError when the body runs longer than `seconds` (SIGALRM; only in the main thread of a
    Unix process, elsewhere no limit). The alarm fires between Python bytecodes, so a decoder stuck inside one
    C call is stopped when that call returns."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expired(signum, frame):
        raise VideoDecodeError(f"decoding took longer than {seconds:g} s (--decode-timeout)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def import_videos(videos: str | Path, out: str | Path, *, resolution: int | str | tuple[int, int] = 64,
                  fit: str = "pad", val_fraction: float = 0.05, test_fraction: float = 0.05, overwrite: bool = False,
                  chunk_len: int = DEFAULT_CHUNK_LEN, parquet: bool = False, backend: str = "auto",
                  progress: bool = True, decode_timeout: float = 120.0) -> dict:
    """Import every video under `videos` into a dataset at `out`. `resolution`: an int (square), a
    (height, width) pair, or the command line's text 'N' / 'WIDTHxHEIGHT'. A file whose header or frames take
    longer than `decode_timeout` seconds to decode is skipped and named like an unreadable one."""
    H, W = parse_resolution(resolution)
    if fit not in FITS:
        raise GenieInputError(f"--fit must be one of {', '.join(FITS)}, got {fit!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GenieInputError("--val-fraction and --test-fraction must be in [0,1) and sum below 1")
    root = Path(videos)
    files, others = list_videos(root)
    skipped: list[tuple[str, str]] = []

    def skip(f: Path, why: str) -> None:
        skipped.append((f.relative_to(root).as_posix(), why))
        print(f"genie: skipping {f}: {why}", file=sys.stderr)

    readable = []
    for f in files:  # headers only: splits are assigned among the files that open
        try:
            with time_limit(decode_timeout):
                probe_video(f)
            readable.append(f)
        except VideoDecodeError as e:
            skip(f, str(e))
    splits = assign_splits([f.relative_to(root).as_posix() for f in readable], val_fraction, test_fraction)
    card = {
        "source": "video-folder",
        "num_actions": 0,
        "recipe": {"videos": str(root), "resolution": [H, W], "fit": fit, "files": len(files),
                   "resize": f"fit {fit}, antialiased bilinear", "val_fraction": val_fraction,
                   "test_fraction": test_fraction, "decoder": backend},
        "split_key": "file",
    }
    sizes: Counter = Counter()
    t0, frames = time.perf_counter(), 0
    it = readable
    if progress:
        it = tqdm(readable, unit="file", desc="importing videos", dynamic_ncols=True)
    with DatasetWriter(out, overwrite=overwrite, chunk_len=chunk_len, card=card, parquet=parquet) as w:
        for f in it:
            rel = f.relative_to(root).as_posix()
            try:
                with time_limit(decode_timeout):
                    arr, src = read_video_fitted(f, (H, W), fit=fit, backend=backend)
            except VideoDecodeError as e:
                skip(f, str(e))
                continue
            w.add_episode(Episode(frames=arr, source=rel), splits[rel])
            sizes[src] += 1
            frames += len(arr)
            if progress:
                it.set_postfix(fps=f"{frames / (time.perf_counter() - t0):.0f}")
        if frames == 0:
            raise GenieInputError(f"{root}: none of the {len(files)} video files could be decoded "
                                  f"(first: {skipped[0][0]}: {skipped[0][1]})")
        plans = []
        for src, n in sorted(sizes.items()):
            plan = fit_plan(src, (H, W), fit)
            plans.append({**plan, "files": n})
            note = _crop_note(plan, n) if fit == "crop" else None
            if note:
                print(note, file=sys.stderr)
        w.card["fit"] = {"mode": fit, "target": {"height": H, "width": W}, "sources": plans}
        w.card["skipped"] = [{"file": r, "reason": why} for r, why in skipped]
        empty = [s for s, needed in (("val", 2), ("test", 3)) if len(readable) >= needed
                 and (val_fraction if s == "val" else test_fraction) > 0 and not w.stats.get(s, {}).get("episodes")]
        if empty:  # a file chosen for a held-out split opened but did not decode
            print(f"genie: warning: no {' or '.join(empty)} file could be decoded; `genie evaluate` falls back to "
                  "another split", file=sys.stderr)
        path = w.close()
    return {"path": str(path), "imported": len(files) - len(skipped), "skipped": skipped,
            "ignored_non_video": [p.relative_to(root).as_posix() for p in others], "frames": frames,
            "seconds": time.perf_counter() - t0, "fit": w.card["fit"],
            "splits": {s: w.stats[s]["episodes"] for s in w.stats if w.stats[s]["episodes"]}}
