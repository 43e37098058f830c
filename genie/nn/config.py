"""What every stage config shares: JSON round trip, strict loading, named presets."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any


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
