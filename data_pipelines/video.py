"""Reading video files: decord first (random access), PyAV as the fallback; square crop + resize.

Frames are returned as uint8 (n, H, W, 3) RGB. Resizing is done here (torch, antialiased bilinear) and
not by the decoder, so decord and PyAV give identical frames after resizing too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from data_pipelines.errors import GenieInputError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".gif")


class VideoDecodeError(Exception):
    """A single file could not be decoded (corrupt, truncated, empty, not a video)."""


def list_videos(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(video files, other files) under `folder`, recursively, sorted. Errors for unusable folders."""
    d = Path(folder)
    if not d.exists():
        raise GenieInputError(f"{d}: no such folder")
    if not d.is_dir():
        raise GenieInputError(f"{d}: not a folder")
    if not os.access(d, os.R_OK | os.X_OK):
        raise GenieInputError(f"{d}: folder is not readable (permission denied)")
    videos, others = [], []
    for root, dirs, files in os.walk(d, onerror=None):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in sorted(files):
            if f.startswith("."):
                continue
            p = Path(root) / f
            (videos if p.suffix.lower() in VIDEO_EXTENSIONS else others).append(p)
    if not videos:
        what = "is empty" if not others else f"has no video files ({len(others)} other files; looked for {', '.join(VIDEO_EXTENSIONS)})"
        raise GenieInputError(f"{d}: folder {what}")
    return videos, others


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise VideoDecodeError("empty file (0 bytes)")
    except OSError as e:
        raise VideoDecodeError(f"unreadable ({e.strerror})") from None
    return path


def _decode_decord(path: Path) -> np.ndarray:
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise VideoDecodeError("zero frames")
    return vr.get_batch(list(range(n))).asnumpy()


def _decode_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        if not c.streams.video:
            raise VideoDecodeError("no video stream")
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    if not frames:
        raise VideoDecodeError("zero frames")
    return np.stack(frames)


def decode_video(path: str | os.PathLike, backend: str = "auto") -> np.ndarray:
    """All frames of one file as uint8 (n,H,W,3). Raises VideoDecodeError with the reason."""
    path = _check_file(path)
    errors = []
    backends = {"auto": ("decord", "pyav"), "decord": ("decord",), "pyav": ("pyav",)}[backend]
    for b in backends:
        try:
            frames = _decode_decord(path) if b == "decord" else _decode_pyav(path)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
                raise VideoDecodeError(f"unexpected frame array {frames.shape}")
            return frames
        except VideoDecodeError as e:
            errors.append(f"{b}: {e}")
        except Exception as e:  # decord raises DECORDError, PyAV its own hierarchy
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            errors.append(f"{b}: {msg[:160]}")
    raise VideoDecodeError("; ".join(errors))


def resize_frames(frames: np.ndarray, resolution: int) -> np.ndarray:
    """Centre-crop to a square, then resize to resolution×resolution (antialiased bilinear), uint8."""
    import torch
    import torch.nn.functional as F

    n, h, w, c = frames.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    frames = frames[:, top:top + s, left:left + s]
    if s == resolution:
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    out = []
    for i in range(0, n, 256):  # bounded memory for long videos
        y = F.interpolate(x[i:i + 256], size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def split_of_file(relpath: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a file by its path relative to the import root."""
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "little") / 2**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def read_video_resized(path: str | os.PathLike, resolution: int, backend: str = "auto",
                       window: int = 256) -> np.ndarray:
    """Decode and resize one file window by window (bounded memory at the source resolution)."""
    path = _check_file(path)
    if backend in ("auto", "decord"):
        try:
            import decord

            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            n = len(vr)
            if n == 0:
                raise VideoDecodeError("zero frames")
            parts = [resize_frames(vr.get_batch(list(range(i, min(n, i + window)))).asnumpy(), resolution)
                     for i in range(0, n, window)]
            return np.concatenate(parts)
        except Exception as e:
            if backend == "decord":
                raise VideoDecodeError(f"decord: {str(e).strip()[:160] or type(e).__name__}") from None
            first_error = f"decord: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}"
    else:
        first_error = None
    try:
        return resize_frames(_decode_pyav(path), resolution)
    except Exception as e:
        msg = f"pyav: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}"
        raise VideoDecodeError(f"{first_error}; {msg}" if first_error else msg) from None
