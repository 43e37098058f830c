"""`genie train STAGE --config YAML [overrides]`: LightningCLI `fit` of a stage with the video/token DataModule.

bf16-mixed or fp32 as the YAML says, gradient clipping, TensorBoard + CSV logs, step-based validation,
`last.ckpt` for `--ckpt_path last`, and an export folder (config.json + model.safetensors) at the end of
fitting. The stages' base class and the callbacks they share live in the core (`genie.core.training`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI

from data_pipelines.datamodule import VideoDataModule
from data_pipelines.storage import read_card
from genie.core.errors import GenieInputError
from genie.core.registry import STAGES, stage_list
from genie.core.training import COMPILE_DEFAULT, GenieModule
from genie.export import export_module, load_export
from genie.stages import stage_class


class ExportCallback(Callback):
    """Write the export folder at the end of fitting (rank 0 only). Default: `<default_root_dir>/export`."""

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: GenieModule) -> None:
        if trainer.is_global_zero:
            out = Path(self.dirpath or Path(trainer.default_root_dir) / "export")
            export_module(pl_module, out)
            print(f"exported {pl_module.stage} (step {pl_module.global_step}) → {out}")


class InitFromExportCallback(Callback):
    """`genie train --init_from DIR`: start fitting from the weights of an export of the same stage and config
    (fine-tuning, e.g. a dynamics model moved onto a new LAM's actions). A resumed run (`--ckpt_path`) still gets
    its checkpoint's weights: Lightning restores those after `setup`."""

    def __init__(self, path: str):
        self.path = path

    def setup(self, trainer: L.Trainer, pl_module: GenieModule, stage: str) -> None:
        if stage != "fit":
            return
        src = load_export(self.path, pl_module.stage)
        ours, theirs = pl_module.model.config.to_dict(), src.config.to_dict()
        differ = [k for k in sorted(ours | theirs) if ours.get(k) != theirs.get(k)]
        # options that only add modules (e.g. the dynamics model's copy gate) may be switched on for the fine-tuning
        # and sizes that only add to the decoder side (a deeper tokenizer decoder, a conv refinement head) may grow
        added = getattr(pl_module.model, "ADDITIVE_OPTIONS", ())
        growable = getattr(pl_module.model, "GROWABLE_SIZES", ())

        def grows(k: str) -> bool:
            if k in growable:
                return isinstance(theirs.get(k), int) and ours[k] > theirs[k]
            return k in added and ours[k] is True and theirs.get(k) is False

        if differ and all(grows(k) for k in differ):
            try:
                pl_module.model.load_grown(src.state_dict())
            except ValueError as e:
                raise GenieInputError(f"--init_from {self.path}: {e}") from None
            print(f"initialised the {pl_module.stage} weights from {self.path}, adding {', '.join(differ)}")
            return
        if differ:
            diff = ", ".join(f"{k} {theirs.get(k)!r} (training: {ours.get(k)!r})" for k in differ)
            raise GenieInputError(f"--init_from {self.path}: its {pl_module.stage} config differs: {diff}")
        pl_module.model.load_state_dict(src.state_dict())
        print(f"initialised the {pl_module.stage} weights from {self.path}")


def export_checkpoint(stage: str, ckpt: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Export on demand from a Lightning checkpoint (weights only: no pickle is executed)."""
    if not Path(ckpt).is_file():
        raise GenieInputError(f"{ckpt}: no such checkpoint")
    module_cls = stage_class(stage, "module")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        module = module_cls(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
        module.load_state_dict(state["state_dict"])
    except Exception as e:
        raise GenieInputError(f"{ckpt}: not a {stage} checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return export_module(module, out, global_step=int(state.get("global_step", 0)))


def run_train(stage: str, args: list[str]) -> None:
    """`genie train STAGE --config YAML [overrides]` → LightningCLI fit."""
    if stage not in STAGES:
        raise GenieInputError(f"unknown stage {stage!r}; choose {stage_list()}")
    try:
        module_cls = stage_class(stage, "module")
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
    except MisconfigurationException as e:  # Lightning's word for a trainer setting it cannot use
        raise GenieInputError(f"trainer: {(str(e).strip().splitlines() or ['bad setting'])[0]}") from None


def _raised_by_config_validation(e: BaseException) -> bool:
    """True when a config dataclass rejected its values (its __post_init__ / from_dict raised)."""
    tb, last = e.__traceback__, None
    while tb is not None:
        last = tb.tb_frame.f_code.co_name
        tb = tb.tb_next
    return last in ("__post_init__", "from_dict", "preset") or last.startswith("check_")


class GenieCLI(LightningCLI):
    """LightningCLI whose logs, checkpoints and export all live under `trainer.default_root_dir`.

    Unless the YAML names its own: TensorBoard + CSV loggers, a ModelCheckpoint that keeps
    `last.ckpt` (so `--ckpt_path last` resumes) every validation interval, throughput logging, a line per
    validation and at the end when stdout is not a terminal, and the export at the end of fitting.
    """

    def parse_arguments(self, parser, args) -> None:
        # `args` is the one source: the `genie` command (or quickstart) already parsed sys.argv and hands on the
        # rest, so Lightning's warning against giving both args and command-line arguments does not apply
        self.config = parser.parse_args(args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--checkpoint_every", type=Optional[int], default=None,  # noqa: UP045 (a type jsonargparse reads)
                            help="write checkpoints/last.ckpt every N training steps (default: every "
                                 "trainer.val_check_interval steps); resume with --ckpt_path last")
        parser.add_argument("--init_from", type=Optional[str], default=None,  # noqa: UP045 (a type jsonargparse reads)
                            help="an export folder of this stage with the same model config: start from its weights "
                                 "(fine-tuning) instead of a fresh initialisation")
        parser.add_argument("--compile", type=bool, default=COMPILE_DEFAULT,
                            help="torch.compile the model's ST blocks (inductor) before training: the same steps, "
                                 "faster once compiled (benchmarks/results/train_levers_cpu.md)")

    def before_instantiate_classes(self) -> None:
        for_data = getattr(self.model_class, "config_for_data", None)  # options the data's card settles
        if for_data is not None:
            for_data(self.config[self.subcommand].model, read_card(self.config[self.subcommand].data.data))
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
            "ModelCheckpoint": {"class_path": "genie.core.training.AtomicModelCheckpoint",
                                "init_args": {"dirpath": f"{root}/checkpoints", "save_last": True,
                                              "every_n_train_steps": every, "save_top_k": 0}},
            "LearningRateMonitor": {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                                    "init_args": {"logging_interval": "step"}},
            "ThroughputCallback": {"class_path": "genie.core.training.ThroughputCallback"},
            "ProgressLineCallback": {"class_path": "genie.core.training.ProgressLineCallback"},
            "ResumeStateCallback": {"class_path": "genie.core.training.ResumeStateCallback"},
            "ExportCallback": {"class_path": "genie.train.ExportCallback"},
        }
        if self.config[self.subcommand].get("init_from"):
            defaults["InitFromExportCallback"] = {"class_path": "genie.train.InitFromExportCallback",
                                                  "init_args": {"path": self.config[self.subcommand].init_from}}
        if self.config[self.subcommand].get("compile"):
            defaults["CompileCallback"] = {"class_path": "genie.core.training.CompileCallback"}
        callbacks += [v for k, v in defaults.items() if k not in names]
        cfg.callbacks = callbacks
