"""`GenieInputError` lives in the core (`genie.core.errors`); this name stays for code written against it."""

from genie.core.errors import GenieInputError

__all__ = ["GenieInputError"]
