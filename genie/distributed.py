"""Several processes for inference (`torchrun --nproc-per-node N -m genie tokenize|...`), with accelerate.

Under torchrun (WORLD_SIZE > 1) `process_state` starts accelerate's `PartialState` (gloo on the CPU,
NCCL on GPUs, one GPU per local rank) so a command can split its work with `split_between_processes`
and collect it with `gather_object`; launched plainly, it returns None and the command runs alone.
"""

from __future__ import annotations

import atexit
import os

import torch
from accelerate import PartialState


def launched() -> bool:
    """True when this process is one of several started by torchrun (or another launcher that sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: torch.device):
    """(accelerate PartialState or None, the device this process uses).

    On CUDA each process takes the GPU of its local rank; on the CPU the processes talk over gloo."""
    if not launched():
        return None, device
    atexit.register(_shutdown)
    if device.type == "cuda":
        state = PartialState()
        return state, state.device
    return PartialState(cpu=True, backend="gloo"), torch.device("cpu")


def _shutdown() -> None:
    """Tear the process group down before the interpreter does: left to exit, gloo's threads were sometimes
    destroyed while joinable and aborted both processes ("terminate called without an active exception",
    SIGABRT) after the work had been written."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
