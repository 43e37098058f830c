"""The training base every stage builds on: `GenieModule` (optimiser, schedule, data checks) and the callbacks.

The stages' LightningModules subclass `GenieModule`: AdamW with linear warmup + cosine decay (transformers'
schedule), weight decay on matrices and embedding tables only (none on biases, norms or other 1-D parameters),
and a clear error when the data does not fit the model. The callbacks write checkpoints atomically, log
throughput and make `--ckpt_path last` resume the very run that was killed. The runner that composes them
with the data (`genie train`) is `genie.train`.
"""

from __future__ import annotations

import random
import sys
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from genie.core.atomic import atomic_file
from genie.core.errors import GenieInputError
from genie.nn import STBlock


class GenieModule(L.LightningModule):
    """Base of the stage modules: AdamW + warmup/cosine and the data checks (exports: `genie.export.export_module`).

    Subclasses set `self.model` (the plain nn.Module with a `.config`) and `stage`, take
    `lr, weight_decay, betas, warmup_steps, min_lr_ratio` as init arguments and call
    `save_hyperparameters()`.
    """

    stage = ""

    def configure_optimizers(self):
        h = self.hparams
        decay, no_decay = [], []
        # The module's own parameters, not only the model's: training-only parts (the LAM's action-free
        # embedding, its few-label head) must train too; frozen upstream models have requires_grad off.
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # decay only tensors of 2+ dims (weight matrices, embedding tables, positional embeddings); 1-D ones
            # (biases, norm gains and shifts, the LAM's mask token, the dynamics' no-action vector) keep theirs
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=tuple(h.betas),
                                **adamw_kernel(decay + no_decay))
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else \
            int(self.trainer.estimated_stepping_batches)
        sched = get_cosine_with_min_lr_schedule_with_warmup(
            opt, num_warmup_steps=min(h.warmup_steps, max(total // 10, 1)), num_training_steps=max(total, 1),
            min_lr_rate=h.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def check_data(self) -> None:
        """Resolution and clip length of the data against the model config: a clear error on mismatch."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "hparams"):
            return
        cfg = self.model.config
        if dm.hparams.clip_len > cfg.num_frames:
            raise GenieInputError(f"data.clip_len {dm.hparams.clip_len} exceeds model config num_frames {cfg.num_frames}")
        ds = dm.train_set
        shape = getattr(ds, "frame_shape", None)
        if shape is None and dm.source == "videos":
            res = dm.hparams.resolution
            shape = (*((res, res) if isinstance(res, int) else tuple(res)), 3)
        size = getattr(cfg, "frame_size", None)  # (H, W)
        if shape is not None and size is not None and (tuple(shape[:2]) != tuple(size) or shape[2] != cfg.channels):
            raise GenieInputError(f"{dm.hparams.data}: frames are {shape[0]}×{shape[1]}×{shape[2]} (height×width×channels) "
                                  f"but the {self.stage} config expects {size[0]}×{size[1]}×{cfg.channels} "
                                  f"(image_size {cfg.image_size}/channels)")


def adamw_kernel(params: list[torch.Tensor]) -> dict:
    """AdamW keyword arguments that pick its fused kernel (one pass over each parameter instead of a dozen tensor
    ops per parameter) where every parameter is a plain float tensor on a device that has it (CPU, CUDA);
    otherwise PyTorch's default. The update is the same up to float rounding."""
    ok = params and all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                        for p in params)
    return {"fused": True} if ok else {}


# `genie train --compile`'s default, set by the measurements in benchmarks/results/train_levers_cpu.md.
COMPILE_DEFAULT = False


def compile_model(model: torch.nn.Module) -> int:
    """`torch.compile` (inductor; C++ kernels on CPU) each ST block of `model` in place; returns how many.

    Regional: the blocks of a stack share their code, so one compilation per input shape and mode serves all of
    them, and the quantizers, embeddings and losses around them (data-dependent code: k-means init, dead-code
    reset) stay eager. `nn.Module.compile` leaves the state-dict keys alone (no `_orig_mod.`, architecture §7.9).
    """
    blocks = [m for m in model.modules() if isinstance(m, STBlock)]
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)


class CompileCallback(Callback):
    """`genie train --compile true`: compile the model's ST blocks before fitting (`compile_model`)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            compile_model(pl_module.model)


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that writes each checkpoint under a temporary name and renames it into place.

    Lightning writes `last.ckpt` in place, so a kill during the write leaves a truncated file and
    nothing to resume from; here the previous `last.ckpt` stays whole until the new one is.
    """

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not trainer.is_global_zero:  # the other ranks take part in the collective save; rank 0 writes
            return super()._save_checkpoint(trainer, filepath)
        with atomic_file(filepath) as tmp:
            super()._save_checkpoint(trainer, str(tmp))
        self._last_checkpoint_saved = filepath


class ThroughputCallback(Callback):
    """Logs training frames/s (all ranks together) and elapsed minutes."""

    def __init__(self, every_n_steps: int = 25):
        self.every = every_n_steps
        self._t0 = self._t_last = None
        self._frames = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._t_last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # video clips (b, t, c, H, W) for the tokenizer and LAM, token clips (b, t, h, w) for the dynamics
        clips = next((batch[k] for k in ("video", "tokens") if isinstance(batch, dict) and k in batch), None)
        n = int(np.prod(clips.shape[:2])) if clips is not None else 0
        self._frames += n * trainer.world_size
        if trainer.global_step % self.every == 0 and self._frames:
            now = time.perf_counter()
            pl_module.log("train/frames_per_s", self._frames / (now - self._t_last), rank_zero_only=True)
            pl_module.log("train/minutes", (now - self._t0) / 60, rank_zero_only=True)
            self._frames, self._t_last = 0, now


class ProgressLineCallback(Callback):
    """One line on stdout per validation, and one when training ends, when stdout is not a terminal (a log file, a
    pipe, `genie quickstart`'s output), where the progress bar shows nothing readable: the step, the train loss,
    the validation metrics the stage shows in its progress bar and the training steps/s since the previous line."""

    def __init__(self):
        self._since = None  # (global_step, time) of the previous line

    def on_train_start(self, trainer, pl_module) -> None:
        self._since = (trainer.global_step, time.perf_counter())

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._line(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._since is not None and self._since[0] != trainer.global_step:  # not just said by a validation
            self._line(trainer, pl_module)

    def _line(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self._since is None or sys.stdout.isatty():
            return
        step, now = trainer.global_step, time.perf_counter()
        of = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k == "train/loss"}
        metrics.update((k, v) for k, v in trainer.progress_bar_metrics.items() if k.startswith("val/"))
        shown = "  ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
        rate = (step - self._since[0]) / max(now - self._since[1], 1e-9)
        print(f"{pl_module.stage} step {step}{of}  {shown}  {rate:.2f} steps/s", flush=True)
        self._since = (step, now)


def rng_states() -> dict:
    """Every random stream training draws from: python `random`, numpy's global, torch CPU and CUDA."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # tensors and plain numbers only, so checkpoints stay loadable with `weights_only=True`
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                    int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeStateCallback(Callback):
    """Makes `--ckpt_path last` continue the very run that was killed, not a similar one.

    - Every checkpoint carries the RNG states of the moment it is written (ModelCheckpoint writes
      in `on_train_batch_end`, before validation); a resumed run sets them back just before its
      first training batch, after its own set-up has drawn whatever it draws.
    - Validation (and the sanity check) leave the RNG states as they found them, so a run that
      validated at step N and one resumed from step N draw the same masks, dropout and k-means
      samples from step N+1 on.
    - The loggers are flushed with every checkpoint, so the metrics up to it survive a kill.
    The data position is saved by the train loader itself (a `state_dict`, see VideoDataModule).
    """

    def __init__(self):
        self._to_restore = None
        self._around_validation = None

    def state_dict(self) -> dict:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict.get("rng")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in trainer.loggers:
            logger.save()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._around_validation = rng_states()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._around_validation is not None:
            set_rng_states(self._around_validation)
            self._around_validation = None

    on_sanity_check_start = on_validation_start
    on_sanity_check_end = on_validation_end
