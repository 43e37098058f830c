"""What every stage config shares: JSON round trip, strict loading, named presets, the checks of its values."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


def check_positive_ints(config: Any, *names: str) -> None:
    """Each named field is an int >= 1 (a bool is not)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_at_least(config: Any, name: str, low: int) -> None:
    value = getattr(config, name)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def check_unit_interval(config: Any, *names: str) -> None:
    """Each named field is in [0, 1) (dropout, decays, mask ratios)."""
    for name in names:
        value = getattr(config, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def check_non_negative(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def check_transformer(config: Any) -> None:
    """`width` splits into `num_heads` heads; `mlp_ratio` > 0; `dropout` in [0, 1)."""
    if config.width % config.num_heads != 0:
        raise ValueError(f"width ({config.width}) must be divisible by num_heads ({config.num_heads})")
    if config.mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be > 0, got {config.mlp_ratio}")
    check_unit_interval(config, "dropout")


def check_vector_quantizer(config: Any) -> None:
    """The VQ settings of vector-quantize-pytorch (commitment, EMA decay, dead-code threshold)."""
    check_non_negative(config, "commitment_weight")
    check_unit_interval(config, "vq_decay")
    check_non_negative(config, "threshold_ema_dead_code")
    if hasattr(config, "code_entropy_weight"):
        check_non_negative(config, "code_entropy_weight")


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
    def tokens_per_frame(self) -> int:
        """n = h * w."""
        h, w = self.grid
        return h * w


class StageConfig:
    """Mixin for the stage config dataclasses. `PRESETS` (set by each config module beside its class) holds
    the named presets; `PRESET_KIND` names the stage in error messages."""

    PRESET_KIND = "model"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @property
    def context_frames(self) -> int:
        """Most past frames a model of `num_frames` conditions on when it predicts one more: the last frame of
        its window is only ever a target (Genie §2.2-2.3)."""
        return self.num_frames - 1

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
        """A named preset (`PRESETS`), optionally with some fields overridden."""
        presets = cls.PRESETS
        if name not in presets:
            raise ValueError(f"unknown {cls.PRESET_KIND} preset {name!r}; choose from {sorted(presets)}")
        return cls.from_dict({**presets[name], **overrides})
