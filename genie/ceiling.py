"""The supervised inverse-dynamics ceiling: how well latent actions could match true ones at best (architecture §8).

The LAM learns its actions without labels; how close it gets to the controls is only meaningful next to
what a model that *sees* the labels reaches from the same two frames. The ceiling is that model: a small
CNN that reads frames t and t+1 and their difference and predicts the (merged) true action between them.
It is trained on the labelled transitions of a dataset's `train` split and scored on the held-out clips
the LAM is scored on (genie.evaluate, genie.grounding). Evaluation only: it never touches LAM training.

Trained models are cached (safetensors + a JSON key naming the data, its card, the settings and the seed)
so repeated evaluations of the same data cost nothing.

Shapes: `b` batch, `t` frames, `c` channels, `H W` pixels, `k` action classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import read_card
from genie.core.atomic import atomic_file, write_text
from genie.core.errors import GenieInputError
from genie.core.metrics import merge_actions, merged_action_table

CEILING_VERSION = 3  # bump when the architecture or training changes: old cache entries are then ignored


@dataclass
class CeilingSettings:
    """How the ceiling is trained. `max_steps` bounds it, so the model is the same on any machine for a seed;
    `max_seconds` is only a safety cap, loose enough that a busy machine still runs the steps (the steps actually
    run are reported with the result). Fewer steps report a ceiling far below the real one on uniform-random
    CoinRun (README, *Measured here*); the cache pays for them once per dataset."""

    max_steps: int = 8000
    max_seconds: float = 3600.0
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 32

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.width < 1:
            raise GenieInputError("ceiling max_steps, batch_size and width must be >= 1")
        if not (self.max_seconds > 0 and self.lr > 0):
            raise GenieInputError("ceiling max_seconds and lr must be > 0")


class InverseDynamicsModel(nn.Module):
    """Frames x_t, x_{t+1} and x_{t+1} - x_t (3c channels) → logits over `num_classes` actions.

    Three stride-2 convolutions, then a 4×4 average pool that keeps coarse position (where the agent
    is matters: the difference image alone mixes the agent with the scrolling background)."""

    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3 * channels, w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, num_classes),
        )

    def forward(self, before: Tensor, after: Tensor) -> Tensor:
        """before, after: (b, c, H, W) in [-1, 1] → logits (b, k)."""
        return self.net(torch.cat([before, after, after - before], dim=1))

    @torch.no_grad()
    def predict_clip(self, video: Tensor) -> Tensor:
        """Predicted class of each transition of (b, t, c, H, W) clips → (b, t-1) int64."""
        b = video.shape[0]
        before = rearrange(video[:, :-1], "b t c h w -> (b t) c h w")
        after = rearrange(video[:, 1:], "b t c h w -> (b t) c h w")
        return rearrange(self(before, after).argmax(-1), "(b t) -> b t", b=b)


def _card_hash(card: dict) -> str:
    return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()


def _cache_key(data: Path, card: dict, settings: CeilingSettings, seed: int) -> dict:
    # the key and file names keep the module's old name (idm_probe), so models cached before the rename still load
    return {"probe_version": CEILING_VERSION, "data": str(data.resolve()), "card_sha256": _card_hash(card),
            "split": "train", "settings": dataclasses.asdict(settings), "seed": seed}


def _lr(settings: CeilingSettings, step: int, seconds: float) -> float:
    """Linear warmup over 5% then cosine decay, over whichever budget (steps or seconds) runs out first, so a
    ceiling stopped by the time cap on a slow or busy machine still ends its schedule instead of mid-warmup."""
    progress = min(1.0, max(step / settings.max_steps, seconds / settings.max_seconds))
    if progress < 0.05:
        return settings.lr * (step + 1) / max(1.0, 0.05 * settings.max_steps)
    return settings.lr * 0.5 * (1 + math.cos(math.pi * (progress - 0.05) / 0.95))


def train_ceiling(data: str | os.PathLike, settings: CeilingSettings, seed: int = 0,
                  device: torch.device | str = "cpu", progress: bool = False) -> tuple[InverseDynamicsModel, dict]:
    """Train the ceiling on the labelled transitions of `data`'s train split (merged actions if the card has a table).

    Deterministic in `seed` on a given device while the step budget, not the time cap, paces the schedule
    (on a slow or busy machine the cap stops it early and shortens the schedule: `info` has the steps run)."""
    ds = ClipDataset(data, "train", clip_len=2)
    merge = merged_action_table(ds.card)
    num_classes = int(merge.max()) + 1 if merge is not None else int(ds.card["num_actions"])
    torch.manual_seed(seed)
    model = InverseDynamicsModel(ds.frame_shape[2], num_classes, settings.width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    t0, step, loss = time.perf_counter(), 0, float("nan")
    model.train()
    # minutes the first time for a dataset: say so, with a bar (or a line every 10% when stderr is not a terminal;
    # an infinite maxinterval keeps tqdm's monitor thread from dropping miniters to 1 after 10 s without a line)
    tty = sys.stderr.isatty()
    bar = tqdm(total=settings.max_steps, unit="step", desc=f"training the supervised ceiling on {data} (once, then cached)",
               dynamic_ncols=True, disable=not progress, mininterval=1.0,
               miniters=None if tty else max(1, settings.max_steps // 10), maxinterval=10.0 if tty else float("inf"))
    with torch.enable_grad():  # callers evaluate under no_grad
        while step < settings.max_steps and time.perf_counter() - t0 < settings.max_seconds:
            items = [ds[int(i)] for i in rng.integers(0, len(ds), settings.batch_size)]
            video = torch.stack([it["video"] for it in items]).to(device)  # (b, 2, c, H, W)
            y = torch.stack([it["actions"][0] for it in items])
            if merge is not None:
                y = torch.from_numpy(merge_actions(y.numpy(), ds.card))
            logits = model(video[:, 0], video[:, 1])
            ce = F.cross_entropy(logits, y.to(device))
            opt.zero_grad(set_to_none=True)
            ce.backward()
            for group in opt.param_groups:
                group["lr"] = _lr(settings, step, time.perf_counter() - t0)
            opt.step()
            step, loss = step + 1, float(ce.detach())
            bar.update(1)
    bar.close()
    model.eval()
    info = {"steps": step, "seconds": round(time.perf_counter() - t0, 1), "final_loss": loss,
            "train_transitions": len(ds), "num_classes": num_classes}
    return model, info


def ceiling_for(data: str | os.PathLike, settings: CeilingSettings | None = None, seed: int = 0,
                device: torch.device | str = "cpu", cache_dir: str | os.PathLike | None = None, progress: bool = False
                ) -> tuple[InverseDynamicsModel | None, dict]:
    """The ceiling for `data` (its train split), from the cache when the key matches, else trained and cached.

    Returns (model, info); (None, {"reason": ...}) when the data has no labelled train split.
    The cache defaults to `<data>/.genie-cache/`; a cache that cannot be written is skipped, not an error."""
    settings = settings or CeilingSettings()
    data = Path(data)
    card = read_card(data)  # a folder that is no dataset is a user error (exit 2), not "not computed"
    if not card.get("has_actions"):
        return None, {"reason": f"{data} has no true actions"}
    if "train" not in card.get("splits", {}):
        return None, {"reason": f"{data} has no labelled train split to train it on (splits: "
                                f"{', '.join(card.get('splits', {})) or 'none'}); pass --probe-data DIR"}
    key = _cache_key(data, card, settings, seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else data / ".genie-cache"
    weights, meta = cache / f"idm-probe-{digest}.safetensors", cache / f"idm-probe-{digest}.json"
    if weights.is_file() and meta.is_file():
        try:
            stored = json.loads(meta.read_text())
            if stored.get("key") == key:
                info = stored["info"]
                model = InverseDynamicsModel(card["channels"], info["num_classes"], settings.width)
                model.load_state_dict(load_file(weights))
                return model.to(device).eval(), {**info, "cached": True, "cache_file": str(weights)}
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # unreadable or stale entry: retrain and overwrite it
    model, info = train_ceiling(data, settings, seed, device, progress=progress)
    info = {**info, "data": str(data), "seed": seed, "settings": dataclasses.asdict(settings)}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_file(weights) as tmp:
            save_file(state, str(tmp))
        write_text(meta, json.dumps({"key": key, "info": info}, indent=2))
        info["cache_file"] = str(weights)
    except (OSError, GenieInputError) as e:  # a cache that cannot be written costs a retrain next time, no more
        info["cache_file"] = f"not written: {e}"
    return model, {**info, "cached": False}


def check_same_classes(probe_data: str | os.PathLike, eval_card: dict) -> str | None:
    """Why a ceiling trained on `probe_data` cannot score data with `eval_card`, or None when it can."""
    a, b = merged_action_table(read_card(probe_data)), merged_action_table(eval_card)
    if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
        return f"{probe_data} and the evaluated data merge actions differently (dataset cards' merged_action)"
    return None

