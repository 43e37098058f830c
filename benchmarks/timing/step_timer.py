"""`StepTimer`: a Lightning callback that records the wall time of every step of the real training loop.

Kept apart from the project's packages so that one class path (`step_timer.StepTimer`, with this folder on
PYTHONPATH) serves the code of any commit: benchmarks/throughput_session.py trains the tree before a change and
the tree after it with the same YAML overlay and reads `<default_root_dir>/step_times.json` from both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    """Time stamps at the end of each training batch (data fetch, step, callbacks and checkpoint included) and the
    duration of each validation run (`validations`: [steps done before it, seconds])."""

    def __init__(self):
        self.start = None
        self.ends: list[float] = []
        self.validations: list[list[float]] = []
        self.frames_per_step = 0
        self._v0 = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())
        if not self.frames_per_step:
            clips = next(batch[k] for k in ("video", "tokens") if k in batch)
            self.frames_per_step = int(clips.shape[0] * clips.shape[1]) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._v0 is not None and not trainer.sanity_checking:
            self.validations.append([len(self.ends), time.perf_counter() - self._v0])

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir) / "step_times.json"
            out.write_text(json.dumps({"start": self.start, "ends": self.ends, "validations": self.validations,
                                       "frames_per_step": self.frames_per_step, "threads": torch.get_num_threads()}))
