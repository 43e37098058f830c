"""Device choice for the commands that run a model (architecture §5: `--device auto|cpu|cuda[:N]`).

`resolve_device` turns the user's string into a `torch.device`, or raises one clear
`GenieInputError` naming the flag and the problem (CUDA asked for but absent, an index out of
range, a string that is not a device). Random generators are made with `generator_for`, on the
device of the tensors they draw for (architecture §7.11); `module_device` says where a model's parameters live.
"""

from __future__ import annotations

import torch

from genie.core.errors import GenieInputError

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's parameters live (genie's models keep all of theirs on one device)."""
    return next(module.parameters()).device


def resolve_device(spec: str | torch.device | None = "auto", flag: str = "--device") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' → a usable torch.device (auto: cuda:0 when CUDA is available)."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise GenieInputError(f"{flag} {spec!r}: not a device; use {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise GenieInputError(f"{flag} {spec!r}: device type {dev.type!r} is not supported; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise GenieInputError(f"{flag} {spec}: CUDA is not available on this machine (torch {torch.__version__}, "
                              f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
    count = torch.cuda.device_count()
    index = 0 if dev.index is None else dev.index
    if index >= count:
        raise GenieInputError(f"{flag} {spec}: device index {index} is out of range "
                              f"(this machine has {count} CUDA device{'s' if count != 1 else ''}: 0..{count - 1})")
    return torch.device("cuda", index)


def generator_for(device: torch.device | str, seed: int | None) -> torch.Generator:
    """A torch.Generator on `device`, seeded (a fresh random seed when `seed` is None)."""
    g = torch.Generator(device=torch.device(device))
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def out_of_memory_error(what: str, device: torch.device, err: BaseException) -> GenieInputError:
    """One line for a model or batch that does not fit in the device's memory."""
    return GenieInputError(f"{what}: does not fit in the memory of {device} ({str(err).splitlines()[0][:160]}); "
                           "use a smaller --batch-size, or --device cpu")


def to_device(model: torch.nn.Module, device: torch.device, what: str) -> torch.nn.Module:
    """Move a model to `device`; a model too large for it is one clear GenieInputError, not a traceback."""
    try:
        return model.to(device)
    except torch.OutOfMemoryError as e:
        raise out_of_memory_error(what, device, e) from None
