"""The stages' classes, resolved from the core registry's module paths (`genie.core.registry.STAGES`)."""

from __future__ import annotations

import importlib

from genie.core.registry import STAGES


def stage_class(stage: str, part: str) -> type:
    """The `part` ("config", "model" or "module") class of a registered stage, imported on first use.

    A failed import is re-raised as is: a missing dependency must not look like a missing stage."""
    if stage not in STAGES:
        raise ValueError(f"unknown genie stage {stage!r}")
    module, _, name = getattr(STAGES[stage], part).partition(":")
    return getattr(importlib.import_module(module), name)
