"""Optional or heavy dependencies (decord, PyAV), imported where they are used: a missing one is one clear line.

procgen (`genie data coinrun`) and the browser stack (`genie play`) have their own checks beside their code,
which also name the pip extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from genie.core.errors import GenieInputError


def optional_import(module: str, purpose: str, package: str | None = None) -> ModuleType:
    """`module`, imported now; a GenieInputError naming the package to install when it cannot be."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = package or module
        raise GenieInputError(f"{purpose} needs the {pkg} package, which failed to import ({e}): pip install {pkg}") from None
