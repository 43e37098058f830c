"""Training machinery every stage shares: optimiser + schedule, throughput logging, export, the CLI.

`genie train STAGE --config YAML [overrides]` runs LightningCLI `fit` on the stage's LightningModule
and `VideoDataModule`. bf16-mixed, AdamW with linear warmup + cosine decay (transformers' schedule),
gradient clipping, TensorBoard + CSV logs, step-based validation, `last.ckpt` for `--ckpt_path last`,
and an export folder (config.json + model.safetensors) at the end of fitting.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from genie.core.atomic import atomic_file

from genie.core.errors import GenieInputError


class GenieModule(L.LightningModule):
    """Base of the stage modules: AdamW + warmup/cosine, the export hook, data checks.

    Subclasses set `self.model` (the plain nn.Module with a `.config`) and `stage`, take
    `lr, weight_decay, betas, warmup_steps, min_lr_ratio` as init arguments and call
    `save_hyperparameters()`.
    """

    stage = ""

    def configure_optimizers(self):
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        h = self.hparams
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # no weight decay on norms, biases, embeddings tables' gains
            (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=tuple(h.betas))
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

    def export(self, out: str | os.PathLike) -> Path:
        from genie.export import save_export

        return save_export(self.model, out, self.stage,
                           extra={"global_step": int(self.global_step), "stage": self.stage})


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


class ExportCallback(Callback):
    """Write the export folder at the end of fitting (rank 0 only). Default: `<default_root_dir>/export`."""

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: GenieModule) -> None:
        if trainer.is_global_zero:
            out = Path(self.dirpath or Path(trainer.default_root_dir) / "export")
            pl_module.export(out)
            print(f"exported {pl_module.stage} (step {pl_module.global_step}) → {out}")


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
        if os.environ.get("GENIE_TEST_KILL_AT_STEP") == str(trainer.global_step):  # test hook: a power cut
            os.kill(os.getpid(), signal.SIGKILL)
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


def export_checkpoint(stage: str, ckpt: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export on demand from a Lightning checkpoint (weights only: no pickle is executed)."""
    import importlib

    if not Path(ckpt).is_file():
        raise GenieInputError(f"{ckpt}: no such checkpoint")
    mod_name, cls_name = STAGES[stage]
    module_cls = getattr(importlib.import_module(mod_name), cls_name)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        module = module_cls(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
        module.load_state_dict(state["state_dict"])
    except Exception as e:
        raise GenieInputError(f"{ckpt}: not a {stage} checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return module.export(out)


STAGES = {
    "tokenizer": ("tokenizer.module", "TokenizerModule"),
    "lam": ("latent_actions.module", "LatentActionModule"),
    "dynamics": ("dynamics.module", "DynamicsModule"),
}


def run_train(stage: str, args: list[str]) -> None:
    """`genie train STAGE --config YAML [overrides]` → LightningCLI fit."""
    import importlib

    from lightning.pytorch.cli import LightningCLI

    from data_pipelines.datamodule import VideoDataModule

    if stage not in STAGES:
        raise GenieInputError(f"unknown stage {stage!r}; choose tokenizer, lam or dynamics")
    mod_name, cls_name = STAGES[stage]
    try:
        module_cls = getattr(importlib.import_module(mod_name), cls_name)
    except ImportError as e:  # name what failed: a missing dependency must not look like a missing feature
        missing = f"package {e.name!r}" if e.name else "a module"
        raise GenieInputError(f"training the {stage} stage needs {missing}, which failed to import ({e}); "
                              f"install it, e.g. `pip install {(e.name or '').split('.')[0] or '<package>'}`") from None
    for i, a in enumerate(args):  # a missing --config file is named plainly, not by a parser stack
        if a == "--config" and i + 1 < len(args) and not Path(args[i + 1]).is_file():
            raise GenieInputError(f"{args[i + 1]}: no such config file")
    torch.set_float32_matmul_precision("high")
    try:
        GenieCLI(module_cls, VideoDataModule, args=["fit", *args], save_config_kwargs={"overwrite": True})
    except ValueError as e:
        if _raised_by_config_validation(e):
            raise GenieInputError(f"model.config: {e}") from None
        raise


def _raised_by_config_validation(e: BaseException) -> bool:
    """True when a config dataclass rejected its values (its __post_init__ / from_dict raised)."""
    tb, last = e.__traceback__, None
    while tb is not None:
        last = tb.tb_frame.f_code.co_name
        tb = tb.tb_next
    return last in ("__post_init__", "from_dict", "preset")


def _genie_cli_cls():
    from lightning.pytorch.cli import LightningCLI

    class _GenieCLI(LightningCLI):
        """LightningCLI whose logs, checkpoints and export all live under `trainer.default_root_dir`.

        Unless the YAML names its own: TensorBoard + CSV loggers, a ModelCheckpoint that keeps
        `last.ckpt` (so `--ckpt_path last` resumes) every validation interval, throughput logging,
        and the export at the end of fitting.
        """

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument("--checkpoint_every", type=Optional[int], default=None,
                                help="write checkpoints/last.ckpt every N training steps (default: every "
                                     "trainer.val_check_interval steps); resume with --ckpt_path last")

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand].trainer
            root = cfg.default_root_dir or "runs/default"
            cfg.default_root_dir = root
            if cfg.logger in (None, True):
                cfg.logger = [
                    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": root, "name": "tensorboard"}},
                    {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root, "name": "csv"}},
                ]
            callbacks = list(cfg.callbacks or [])
            names = {c["class_path"].rsplit(".", 1)[-1] if isinstance(c, dict) else type(c).__name__ for c in callbacks}
            # --checkpoint_every N: last.ckpt every N optimizer steps (default: every validation interval)
            every = self.config[self.subcommand].get("checkpoint_every") or \
                (cfg.val_check_interval if isinstance(cfg.val_check_interval, int) else 500)
            defaults = {
                "ModelCheckpoint": {"class_path": "genie.training.AtomicModelCheckpoint",
                                    "init_args": {"dirpath": f"{root}/checkpoints", "save_last": True,
                                                  "every_n_train_steps": every, "save_top_k": 0}},
                "LearningRateMonitor": {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                                        "init_args": {"logging_interval": "step"}},
                "ThroughputCallback": {"class_path": "genie.training.ThroughputCallback"},
                "ResumeStateCallback": {"class_path": "genie.training.ResumeStateCallback"},
                "ExportCallback": {"class_path": "genie.training.ExportCallback"},
            }
            callbacks += [v for k, v in defaults.items() if k not in names]
            cfg.callbacks = callbacks

    return _GenieCLI


def GenieCLI(*args, **kwargs):
    return _genie_cli_cls()(*args, **kwargs)
