"""Reading prompts and writing clips: PNG/JPEG via Pillow, video via PyAV (mp4) and Pillow (gif)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines.video import VIDEO_EXTENSIONS, VideoDecodeError, decode_video, resize_frames, target_hw
from genie.core.atomic import atomic_file
from genie.core.errors import GenieInputError
from genie.core.optional import optional_import

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
OUTPUT_EXTENSIONS = (".mp4", ".gif")


def read_prompt(path: str | os.PathLike, resolution: int | tuple[int, int], max_frames: int,
                fit: str = "pad") -> np.ndarray:
    """Prompt frames uint8 (t, H, W, 3): an image (t=1) or the last `max_frames` frames of a video.

    `resolution` is the model's image_size: H for square frames or (H, W). A prompt of another size is
    fitted to it as `genie data import --fit` does (default pad: the whole frame, letterboxed to the
    model's aspect), with a note on stderr."""
    p = Path(path)
    if not p.is_file():
        raise GenieInputError(f"{p}: no such prompt file")
    ext = p.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        try:
            with Image.open(p) as im:
                frames = np.asarray(im.convert("RGB"))[None]
        except (UnidentifiedImageError, OSError) as e:
            raise GenieInputError(f"{p}: unreadable image ({e})") from None
    elif ext in VIDEO_EXTENSIONS:
        try:
            frames = decode_video(p)[-max_frames:]
        except VideoDecodeError as e:
            raise GenieInputError(f"{p}: unreadable video ({e})") from None
    else:
        raise GenieInputError(f"{p}: unknown prompt type {ext or '(none)'}; use an image "
                              f"({', '.join(IMAGE_EXTENSIONS)}) or a video ({', '.join(VIDEO_EXTENSIONS)})")
    h, w = frames.shape[1:3]
    H, W = target_hw(resolution)
    if (h, w) != (H, W):
        done = {"pad": "padded to the model's aspect", "crop": "centre-cropped to the model's aspect",
                "stretch": "stretched"}.get(fit, fit)
        print(f"genie: note: prompt {p} is {w}×{h} (width×height); {done} and resized to {W}×{H}", file=sys.stderr)
        frames = resize_frames(frames, (H, W), fit)
    return frames


def check_output_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise GenieInputError(f"{p}: unknown output type {p.suffix or '(none)'}; use .mp4 or .gif")
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_clip(path: str | os.PathLike, frames: np.ndarray, fps: int = 10, scale: int = 1) -> Path:
    """Write uint8 (t, H, W, 3) frames to .mp4 (H.264 via PyAV) or .gif (Pillow), atomically."""
    p = check_output_path(path)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with atomic_file(p) as tmp:
        tmp = str(tmp)
        if p.suffix.lower() == ".gif":
            ims = [Image.fromarray(f) for f in frames]
            ims[0].save(tmp, save_all=True, append_images=ims[1:], duration=int(1000 / fps), loop=0)
        else:
            av = optional_import("av", "writing mp4")
            with av.open(tmp, "w") as c:
                s = c.add_stream("libx264", rate=fps)
                s.height, s.width = frames.shape[1:3]
                s.pix_fmt = "yuv420p"
                s.options = {"crf": "12"}
                for f in frames:
                    for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                        c.mux(pkt)
                for pkt in s.encode():
                    c.mux(pkt)
    return p
