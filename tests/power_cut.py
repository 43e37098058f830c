"""A power cut for tests/test_resume.py, given to `genie train` as one more callback:
`--trainer.callbacks+=tests.power_cut.KillAtStep --trainer.callbacks.step=N`."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL the training process as training step `step` starts: nothing is flushed or saved."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
