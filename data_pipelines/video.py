"""Reading video files: decord first (random access), PyAV as the fallback; fitting to a size (pad, crop, stretch).

Frames are returned as uint8 (n, H, W, 3) RGB. Resizing is done here (torch, antialiased bilinear) and
not by the decoder, so decord and PyAV give identical frames after resizing too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genie.core.errors import GenieInputError
from genie.core.optional import optional_import

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
    decord = optional_import("decord", "decoding video with decord")

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(vr)
    if n == 0:
        raise VideoDecodeError("zero frames")
    return vr.get_batch(list(range(n))).asnumpy()


def _decode_pyav(path: Path) -> np.ndarray:
    av = optional_import("av", "decoding video with PyAV")

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


FITS = ("pad", "crop", "stretch")


def target_hw(resolution: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) of a target size: an int is a square side, a pair is (height, width)."""
    if isinstance(resolution, (int, np.integer)):
        return int(resolution), int(resolution)
    h, w = resolution
    return int(h), int(w)


def fit_plan(src_hw: tuple[int, int], resolution: int | tuple[int, int], fit: str) -> dict:
    """How frames of size src_hw = (h, w) become resolution = (H, W) under `fit`:

    - "pad": scale the whole frame to fit inside H×W (aspect kept) and letterbox it with black bars;
      `pad_rows` / `pad_cols` = (before, after) in target pixels. Nothing of the frame is dropped.
    - "crop": cut the centre of the frame to the target aspect, then scale; `crop_rows` / `crop_cols`
      = (before, after) in source pixels are what is dropped.
    - "stretch": scale each axis on its own (aspect changes), nothing dropped or added.
    `scaled` is the (height, width) the kept content is resized to."""
    if fit not in FITS:
        raise GenieInputError(f"unknown fit {fit!r}; choose from {', '.join(FITS)}")
    (h, w), (H, W) = src_hw, target_hw(resolution)
    plan = {"fit": fit, "source": [h, w], "target": [H, W], "crop_rows": [0, 0], "crop_cols": [0, 0],
            "pad_rows": [0, 0], "pad_cols": [0, 0], "scaled": [H, W]}
    if fit == "crop":
        if w * H > W * h:  # source wider than the target: drop columns
            keep = max(1, round(h * W / H))
            plan["crop_cols"] = [(w - keep) // 2, w - keep - (w - keep) // 2]
        elif w * H < W * h:  # source taller: drop rows
            keep = max(1, round(w * H / W))
            plan["crop_rows"] = [(h - keep) // 2, h - keep - (h - keep) // 2]
    elif fit == "pad":
        if w * H > W * h:  # wider: full width, bars above and below
            sh = max(1, min(H, round(h * W / w)))
            plan["scaled"] = [sh, W]
            plan["pad_rows"] = [(H - sh) // 2, H - sh - (H - sh) // 2]
        elif w * H < W * h:  # taller: full height, bars left and right
            sw = max(1, min(W, round(w * H / h)))
            plan["scaled"] = [H, sw]
            plan["pad_cols"] = [(W - sw) // 2, W - sw - (W - sw) // 2]
    return plan


def _resize(frames: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8 (n, h, w, c) -> (n, H, W, c), antialiased bilinear in bounded memory."""
    if tuple(frames.shape[1:3]) == tuple(hw):
        return np.ascontiguousarray(frames)
    frames = np.ascontiguousarray(frames)
    if not frames.flags.writeable:  # a read-only decoded buffer: torch wants its own
        frames = frames.copy()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    out = []
    for i in range(0, len(frames), 256):  # bounded memory for long videos
        y = F.interpolate(x[i:i + 256], size=tuple(hw), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def resize_frames(frames: np.ndarray, resolution: int | tuple[int, int], fit: str = "crop") -> np.ndarray:
    """uint8 (n, h, w, c) -> (n, H, W, c) for resolution = H (square) or (H, W), under `fit` (see
    `fit_plan`; "crop" by default: the centre at the target aspect). Antialiased bilinear."""
    n, h, w, c = frames.shape
    plan = fit_plan((h, w), resolution, fit)
    (ct, cb), (cl, cr) = plan["crop_rows"], plan["crop_cols"]
    frames = frames[:, ct:h - cb, cl:w - cr]
    scaled = _resize(frames, plan["scaled"])
    if fit != "pad" or plan["scaled"] == plan["target"]:
        return scaled
    H, W = plan["target"]
    (pt, _), (pl, _) = plan["pad_rows"], plan["pad_cols"]
    out = np.zeros((n, H, W, c), np.uint8)
    out[:, pt:pt + scaled.shape[1], pl:pl + scaled.shape[2]] = scaled
    return out


def _file_hash(relpath: str) -> float:
    """A stable number in [0, 1) for a file's path relative to the import root."""
    return int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "little") / 2**64


def split_of_file(relpath: str, val_fraction: float, test_fraction: float) -> str:
    """The split a file's path hash picks on its own (see `assign_splits` for the guarantees)."""
    h = _file_hash(relpath)
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_splits(relpaths: list[str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Split files (never frames of one file) into train/val/test by their path hash, so a file keeps its
    split when others are added. A small folder would often get no val or test file at all, so:
    with a fraction > 0, at least one file goes to val when there are >= 2 files, and one to test when
    there are >= 3; train keeps at least one. The files moved are the train files whose hash lies
    nearest the split boundary (deterministic)."""
    splits = {r: split_of_file(r, val_fraction, test_fraction) for r in relpaths}
    by_hash = sorted(relpaths, key=_file_hash)
    n = len(relpaths)

    def members(split: str) -> list[str]:
        return [r for r in by_hash if splits[r] == split]

    if n and not members("train"):  # fractions summing near 1 on a few files
        donor = max(("val", "test"), key=lambda d: len(members(d)))
        splits[members(donor)[-1]] = "train"
    # val before test: with 2 files the second one is for validation
    for split, fraction, needed, donors in (("val", val_fraction, 2, ("train", "test")),
                                            ("test", test_fraction, 3, ("train", "val"))):
        if fraction <= 0 or n < needed or members(split):
            continue
        for donor in donors:
            have = members(donor)
            if len(have) > 1 or (donor == "test" and have and n < 3):
                splits[have[0]] = split
                break
    return splits


def probe_video(path: str | os.PathLike) -> int:
    """Frame count from the file's header (decord, else PyAV), without decoding; VideoDecodeError when
    neither can open it. Lets import assign splits among the files that can be read."""
    path = _check_file(path)
    errors = []
    try:
        import decord

        n = len(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1))
        if n > 0:
            return n
        errors.append("decord: zero frames")
    except Exception as e:
        errors.append(f"decord: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}")
    try:
        import av

        with av.open(str(path)) as c:
            if not c.streams.video:
                raise VideoDecodeError("no video stream")
            return int(c.streams.video[0].frames or 1)
    except Exception as e:
        errors.append(f"pyav: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}")
    raise VideoDecodeError("; ".join(errors))


def parse_resolution(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """'64' -> (64, 64); '64x48' is width × height as video sizes are written -> (H, W) = (48, 64)."""
    if isinstance(text, (tuple, list)):
        return target_hw(text)
    s = str(text).strip().lower().replace("×", "x")
    try:
        if "x" in s:
            w, h = (int(v) for v in s.split("x"))
        else:
            w = h = int(s)
    except ValueError:
        raise GenieInputError(f"--resolution must be N or WIDTHxHEIGHT (e.g. 64 or 64x48), got {text!r}") from None
    if min(h, w) < 8:
        raise GenieInputError(f"--resolution must be at least 8 pixels on each side, got {w}x{h} (width x height)")
    return h, w


def read_video_fitted(path: str | os.PathLike, resolution: int | tuple[int, int], fit: str = "pad",
                      backend: str = "auto", window: int = 256) -> tuple[np.ndarray, tuple[int, int]]:
    """(frames resized under `fit`, source (h, w)) of one file, decoded window by window."""
    path = _check_file(path)
    if backend in ("auto", "decord"):
        try:
            import decord

            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            n = len(vr)
            if n == 0:
                raise VideoDecodeError("zero frames")
            parts, src = [], None
            for i in range(0, n, window):
                raw = vr.get_batch(list(range(i, min(n, i + window)))).asnumpy()
                src = src or tuple(int(x) for x in raw.shape[1:3])
                parts.append(resize_frames(raw, resolution, fit))
            return np.concatenate(parts), src
        except Exception as e:
            if isinstance(e, GenieInputError):
                raise
            if backend == "decord":
                raise VideoDecodeError(f"decord: {str(e).strip()[:160] or type(e).__name__}") from None
            first_error = f"decord: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}"
    else:
        first_error = None
    try:
        raw = _decode_pyav(path)
        return resize_frames(raw, resolution, fit), tuple(int(x) for x in raw.shape[1:3])
    except GenieInputError:
        raise
    except Exception as e:
        msg = f"pyav: {(str(e).strip().splitlines() or [type(e).__name__])[0][:160]}"
        raise VideoDecodeError(f"{first_error}; {msg}" if first_error else msg) from None
