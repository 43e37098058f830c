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
from functools import lru_cache
from pathlib import Path
from typing import Any

from torch import nn

from genie.core.atomic import disk_full_error, is_disk_full, replace_dir, temp_dir_beside
from genie.core.errors import GenieInputError

EXPORT_FILES = ("config.json", "model.safetensors")


def _stage_classes(stage: str):
    """(ConfigCls, ModelCls) of a stage: its config dataclass and its plain nn.Module."""
    if stage == "tokenizer":
        from tokenizer.config import TokenizerConfig
        from tokenizer.model import VideoTokenizer

        return TokenizerConfig, VideoTokenizer
    if stage == "lam":
        from latent_actions.config import LatentActionConfig
        from latent_actions.model import LatentActionModel

        return LatentActionConfig, LatentActionModel
    if stage == "dynamics":
        from dynamics.config import DynamicsConfig
        from dynamics.model import DynamicsModel

        return DynamicsConfig, DynamicsModel
    raise ValueError(f"unknown genie stage {stage!r}")


@lru_cache(maxsize=None)
def pretrained_classes(stage: str):
    """`transformers` PretrainedConfig / PreTrainedModel pair for a stage (built once, lazily)."""
    from transformers import PretrainedConfig, PreTrainedModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per tiny file is noise on the command line
    config_cls, model_cls = _stage_classes(stage)

    class GenieStageConfig(PretrainedConfig):
        model_type = f"genie-{stage}"

        def __init__(self, genie_config: dict | None = None, genie_stage: str = stage, **kwargs):
            self.genie_config = genie_config if genie_config is not None else config_cls().to_dict()
            self.genie_stage = genie_stage
            super().__init__(**kwargs)

    class GenieStageModel(PreTrainedModel):
        config_class = GenieStageConfig
        base_model_prefix = "model"
        main_input_name = "video"

        def __init__(self, config: GenieStageConfig):
            super().__init__(config)
            self.model = model_cls(config_cls.from_dict(config.genie_config))
            self.post_init()

        def _init_weights(self, module: nn.Module) -> None:
            pass  # each genie model initialises itself in its own `_init_weights`

        def forward(self, *args, **kwargs):
            return self.model(*args, **kwargs)

    GenieStageConfig.__name__ = f"Genie{stage.capitalize()}Config"
    GenieStageModel.__name__ = f"Genie{stage.capitalize()}PreTrained"
    return GenieStageConfig, GenieStageModel


def save_export(model: nn.Module, out: str | os.PathLike, stage: str, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` (a stage's plain nn.Module with a `.config`) to `out`, atomically (temp folder, rename)."""
    cfg_cls, pre_cls = pretrained_classes(stage)
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
    cfg_cls, pre_cls = pretrained_classes(stage)
    config_cls, _ = _stage_classes(stage)
    try:
        config_cls.from_dict(raw.get("genie_config") or {})
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
    return wrapper.model.eval()
