"""Exports: a folder with `config.json` + `model.safetensors`, loadable without Lightning and without pickle.

Each stage's plain `nn.Module` is wrapped in a `transformers.PreTrainedModel` so exports get
`save_pretrained` / `from_pretrained` (safetensors, hub-compatible layout) for free. The config
records which genie stage it holds; loading checks it and turns every failure into one clear
`GenieInputError` naming the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from genie.core.atomic import disk_full_error, is_disk_full, replace_dir, temp_dir_beside
from genie.core.errors import GenieInputError
from genie.core.registry import STAGES
from genie.stages import stage_class

EXPORT_FILES = ("config.json", "model.safetensors")

hf_logging.disable_progress_bar()  # one bar per tiny file is noise on the command line


class GenieStageConfig(PretrainedConfig):
    """`config.json` of an export: the stage's own config dict (`genie_config`) and its name (`genie_stage`)."""

    stage = ""  # set by each stage's subclass below

    def __init__(self, genie_config: dict | None = None, genie_stage: str | None = None, **kwargs):
        self.genie_stage = genie_stage or self.stage
        self.genie_config = genie_config if genie_config is not None else \
            stage_class(self.genie_stage, "config")().to_dict()
        super().__init__(**kwargs)


class GenieStagePreTrained(PreTrainedModel):
    """The stage's plain nn.Module as `.model` (so the safetensors keys are `model.<its own names>`)."""

    config_class = GenieStageConfig
    base_model_prefix = "model"
    main_input_name = "video"

    def __init__(self, config: GenieStageConfig):
        super().__init__(config)
        config_cls = stage_class(config.genie_stage, "config")
        self.model = stage_class(config.genie_stage, "model")(config_cls.from_dict(config.genie_config))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        pass  # each genie model initialises itself in its own `_init_weights`

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def _wrapper_classes(stage: str) -> tuple[type[GenieStageConfig], type[GenieStagePreTrained]]:
    """The stage's pair of subclasses: their names and `model_type` are what every export's config.json records
    ("GenieLamPreTrained", "genie-lam"), so they stay as the first exports wrote them."""
    title = stage.capitalize()
    config_cls = type(f"Genie{title}Config", (GenieStageConfig,), {"stage": stage, "model_type": f"genie-{stage}"})
    model_cls = type(f"Genie{title}PreTrained", (GenieStagePreTrained,), {"config_class": config_cls})
    return config_cls, model_cls


WRAPPERS = {stage: _wrapper_classes(stage) for stage in STAGES}


def save_export(model: nn.Module, out: str | os.PathLike, stage: str, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` (a stage's plain nn.Module with a `.config`) to `out`, atomically (temp folder, rename)."""
    cfg_cls, pre_cls = WRAPPERS[stage]
    out = Path(out)
    try:
        tmp = temp_dir_beside(out)
    except OSError as e:
        raise (disk_full_error(out) if is_disk_full(e) else GenieInputError(f"{out}: cannot write there ({e.strerror})")) from None
    try:
        wrapper = pre_cls(cfg_cls(genie_config=model.config.to_dict(), genie_stage=stage))
        wrapper.model.load_state_dict(model.state_dict())
        wrapper.save_pretrained(tmp)
        if extra:
            (tmp / "genie_export.json").write_text(json.dumps(extra, indent=2))
        replace_dir(tmp, out)
    except Exception as e:  # safetensors reports a full disk as its own error type, not OSError
        if is_disk_full(e):
            raise disk_full_error(out) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_module(module, out: str | os.PathLike, global_step: int | None = None) -> Path:
    """Export a stage's LightningModule (`genie.core.training.GenieModule`): its model, stage and global step
    (the trainer's, or `global_step` for a module rebuilt from a checkpoint). A model that trains in a wider form
    than it plays (the LAM's `train_codes`) exports its `reduced()` form."""
    model = module.model.reduced() if hasattr(module.model, "reduced") else module.model
    step = int(module.global_step if global_step is None else global_step)
    return save_export(model, out, module.stage, extra={"global_step": step, "stage": module.stage})


def load_export(path: str | os.PathLike, stage: str) -> nn.Module:
    """The plain nn.Module of a stage from an export folder, in eval mode. Clear errors for bad folders."""
    p = Path(path)
    if not p.is_dir():
        raise GenieInputError(f"{p}: no such export folder")
    missing = [f for f in EXPORT_FILES if not (p / f).is_file()]
    if missing:
        raise GenieInputError(f"{p}: not a genie export (missing {', '.join(missing)})")
    try:
        raw = json.loads((p / "config.json").read_text())
    except ValueError as e:
        raise GenieInputError(f"{p / 'config.json'}: not valid JSON ({e})") from None
    got = raw.get("genie_stage")
    if got != stage:
        raise GenieInputError(f"{p}: holds a {got or 'non-genie'} export, expected {stage}")
    _, pre_cls = WRAPPERS[stage]
    try:
        stage_class(stage, "config").from_dict(raw.get("genie_config") or {})
    except (TypeError, ValueError) as e:
        raise GenieInputError(f"{p / 'config.json'}: invalid {stage} config ({e})") from None
    try:
        wrapper, info = pre_cls.from_pretrained(str(p), local_files_only=True, output_loading_info=True,
                                                use_safetensors=True)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GenieInputError(f"{p}: corrupt export ({type(e).__name__}: {msg[:200]})") from None
    bad = {k: v for k, v in info.items() if k != "error_msgs" and v} | ({"errors": info["error_msgs"]} if info.get("error_msgs") else {})
    if bad:
        raise GenieInputError(f"{p}: export does not match its config ({'; '.join(f'{k}: {sorted(v)[:3]}' for k, v in bad.items())})")
    return _restore_non_persistent_buffers(wrapper.model).eval()


def _restore_non_persistent_buffers(model: nn.Module) -> nn.Module:
    """Buffers outside the state dict (FSQ's level grid, say) come from a freshly built model.

    transformers builds the model on the meta device and then allocates, uninitialised, whatever the
    checkpoint does not hold: without this an FSQ tokenizer loads with garbage levels."""
    saved = set(model.state_dict())
    missing = [name for name, _ in model.named_buffers() if name not in saved]
    if missing:
        fresh = dict(type(model)(model.config).named_buffers())
        for name in missing:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = fresh[name]
    return model
