"""Prompt frames for `genie play`: held-out dataset frames (--data) and uploaded images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import SPLITS, read_card
from data_pipelines.video import resize_frames
from genie.core.errors import GenieInputError
from genie.play.errors import PlayRequestError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096  # decoded size; a small file can still claim a huge image
UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}  # Content-Type → the format Pillow must find


def dataset_prompts(data: str | Path, image_size: int, count: int = 16, split: str | None = None) -> list[np.ndarray]:
    """Up to `count` prompt frames uint8 (H, W, 3) from a dataset folder: the first frame of episodes
    spread over the split (default: test, else val, else train), resized like `genie generate` does."""
    card = read_card(data)
    if np.dtype(card.get("dtype", "uint8")) != np.uint8 or card.get("channels", 3) != 3:
        raise GenieInputError(f"{data}: --data must be an RGB video dataset (this one holds "
                              f"{card.get('dtype')} × {card.get('channels')} channels, e.g. tokens)")
    if split is not None and split not in SPLITS:
        raise GenieInputError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    have = [s for s in ("test", "val", "train") if card.get("splits", {}).get(s)]
    if split is None and not have:
        raise GenieInputError(f"{data}: the dataset has no episodes")
    ds = ClipDataset(data, split or have[0], clip_len=1)
    episodes = np.unique(np.linspace(0, ds.num_episodes - 1, min(count, ds.num_episodes)).round().astype(int))
    frames = np.stack([ds.clip_frames(int(e), 0)[0] for e in episodes])  # a copy, not the memory map
    return list(resize_frames(frames, image_size))


def upload_type(content_type: str | None) -> str:
    """The upload's media type, or PlayRequestError 415 for anything but PNG/JPEG."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype not in UPLOAD_TYPES:
        raise PlayRequestError(415, f"upload type {ctype or '(none)'} is not accepted; send a PNG or JPEG image "
                                    f"(Content-Type image/png or image/jpeg)")
    return ctype


def decode_upload(body: bytes, content_type: str | None, image_size: int) -> np.ndarray:
    """An uploaded PNG/JPEG → uint8 (H, W, 3) letterboxed (fit pad) and resized to the model's size, as
    `genie generate` reads a prompt (genie.video_io.read_prompt). Raises PlayRequestError 413/415/400."""
    ctype = upload_type(content_type)
    if len(body) > MAX_UPLOAD_BYTES:
        raise PlayRequestError(413, f"upload of {len(body)} bytes is over the limit of {MAX_UPLOAD_BYTES} bytes")
    if not body:
        raise PlayRequestError(400, "empty upload: send the image file as the request body")
    try:
        with Image.open(io.BytesIO(body)) as im:
            if im.format != UPLOAD_TYPES[ctype]:
                raise PlayRequestError(415, f"the upload is {im.format or 'not an image'}, not the "
                                            f"{UPLOAD_TYPES[ctype]} its Content-Type {ctype} says")
            w, h = im.size
            if w * h > MAX_UPLOAD_PIXELS:
                raise PlayRequestError(413, f"image of {w}×{h} pixels is over the limit of {MAX_UPLOAD_PIXELS} pixels")
            rgb = np.array(im.convert("RGB"))
    except UnidentifiedImageError:
        raise PlayRequestError(400, f"the upload is not a readable {UPLOAD_TYPES[ctype]} image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated or corrupt data
        raise PlayRequestError(400, f"unreadable {UPLOAD_TYPES[ctype]} image ({str(e).splitlines()[0][:120]})") from None
    return resize_frames(rgb[None], image_size, "pad")[0]


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()
