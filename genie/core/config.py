"""What every stage config shares: JSON round trip, strict loading, named presets."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


def check_image_size(value: Any, patch_size: int) -> int | tuple[int, int]:
    """`image_size` as a config holds it: an int (square frames, the default and every older export) or
    a pair (height, width). A JSON list becomes a tuple; both sides must be divisible by `patch_size`."""
    if isinstance(value, list):
        value = tuple(value)
    sides = value if isinstance(value, tuple) else (value,)
    if (isinstance(value, tuple) and len(sides) != 2) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sides):
        raise ValueError(f"image_size must be a positive integer or a pair (height, width), got {value!r}")
    if isinstance(patch_size, int) and patch_size >= 1 and any(s % patch_size for s in sides):
        raise ValueError(f"image_size ({value}) must be divisible by patch_size ({patch_size})")
    return value


def frame_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) of an `image_size` that is an int (square) or a pair (height, width)."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def format_hw(image_size: int | tuple[int, int] | list[int]) -> str:
    """'64×48' as people write video sizes: width × height."""
    h, w = frame_hw(image_size)
    return f"{w}×{h}"


class PatchGridConfig:
    """Mixin for configs with `image_size` (int or (H, W)) and `patch_size`: the frame's patch grid."""

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of a frame in pixels."""
        return frame_hw(self.image_size)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) = (H / patch_size, W / patch_size): the patches (tokens) of a frame."""
        H, W = self.frame_size
        return H // self.patch_size, W // self.patch_size

    @property
    def grid_size(self) -> int:
        """Patches per side of a square frame (h = w); use `grid` for frames of any shape."""
        h, w = self.grid
        if h != w:
            raise ValueError(f"grid_size is for square frames; this config's grid is {h}×{w}: use `grid`")
        return h

    @property
    def tokens_per_frame(self) -> int:
        """n = h * w."""
        h, w = self.grid
        return h * w


class StageConfig:
    """Mixin for the stage config dataclasses. Presets live in the config module's `PRESETS` dict;
    `PRESET_KIND` names the stage in error messages."""

    PRESET_KIND = "model"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Inverse of `to_dict`; unknown keys are an error (a typo must not silently fall back)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A named preset (the module's PRESETS), optionally with some fields overridden."""
        presets = sys.modules[cls.__module__].PRESETS
        if name not in presets:
            raise ValueError(f"unknown {cls.PRESET_KIND} preset {name!r}; choose from {sorted(presets)}")
        return cls.from_dict({**presets[name], **overrides})
