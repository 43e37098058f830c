"""Frames as tensors, the conversions every layer shares (architecture §4's layouts at boundaries).

Stored frames are uint8 (…, H, W, c); models read and write video (…, c, H, W) float in [-1, 1]; torchmetrics and
image writers want [0, 1] or uint8. Each conversion is written here once, so a frame written by one part and read
by another round-trips exactly. `previous_frames` is the one-frame shift that gives each frame its predecessor.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def from_uint8(x: Tensor) -> Tensor:
    """uint8 pixels 0..255 → float in [-1, 1], same layout."""
    return x.float().div_(127.5).sub_(1.0)


def to_uint8(x: Tensor) -> Tensor:
    """float in [-1, 1] (clamped) → uint8 pixels 0..255, rounded, same layout."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_unit(x: Tensor) -> Tensor:
    """float in [-1, 1] (clamped) → float32 in [0, 1], same layout."""
    return (x.float().clamp(-1, 1) + 1) / 2


def frames_to_video(frames: np.ndarray) -> Tensor:
    """Stored frames uint8 (t, H, W, c) → video float (t, c, H, W) in [-1, 1]."""
    frames = np.ascontiguousarray(frames)
    if not frames.flags.writeable:  # a read-only view (a decoded video, a memory map): torch wants its own buffer
        frames = frames.copy()
    return from_uint8(torch.from_numpy(frames).permute(0, 3, 1, 2))


def video_to_frames(video: Tensor) -> np.ndarray:
    """Video float (…, t, c, H, W) in [-1, 1] → frames uint8 (…, t, H, W, c) on the CPU."""
    return to_uint8(video).movedim(-3, -1).cpu().numpy()


def previous_frames(x: Tensor, first: float | int) -> Tensor:
    """(b, t, …) → (b, t, …) whose frame i is x's frame i-1, and whose frame 0 is filled with `first`."""
    return torch.cat([torch.full_like(x[:, :1], first), x[:, :-1]], dim=1)
