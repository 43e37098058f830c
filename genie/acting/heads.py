"""Reward and continuation heads: what a frame of tokens says about the game's reward and the episode's end.

Dreamer scores imagined trajectories with reward and continuation heads; genie's planner (`genie.acting.plan`) and
dream-trained controller (`genie.acting.dream`) do the same. The heads read **tokens**, not the dynamics model's
features: the planner's rollouts are token-only (decoded only for display), the heads then train on tokenised
recordings without running the dynamics model, and the dynamics model (whose internals other work changes) stays
untouched. Input: the tokens of the previous and the current frame (motion: a fall reads differently from a stand).

Targets, per recorded frame i (a CoinRun recording's `rewards[i]` and `dones[i]` belong to the step taken from
frame i; the frame after an episode's last belongs to the next episode):
- `reward`: rewards[i] > 0 (in CoinRun, the coin: +10 and the episode ends);
- `end`: dones[i] (the coin or a death; an episode cut at max_steps has no end).

A heads folder holds `config.json` (HeadsConfig, the tokenizer's fingerprint-free shape facts, held-out metrics)
and `model.safetensors`.

Shape legend: b batch, h w token grid, e embedding width, c channels.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from data_pipelines.clips import ClipDataset
from genie.core.atomic import replace_dir, temp_dir_beside, write_text
from genie.core.device import generator_for, module_device
from genie.core.errors import GenieInputError
from genie.core.frames import frames_to_video

HEADS_FORMAT = 1
HEAD_NAMES = ("reward", "end")


@dataclass
class HeadsConfig:
    """vocab_size, grid: the tokenizer's codebook size and token grid; embed: token embedding width; channels: the
    conv trunk's width (also the pooled feature width the dream controller reads)."""

    vocab_size: int
    grid: tuple[int, int]
    embed: int = 16
    channels: int = 32

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)
        if self.vocab_size < 1 or len(self.grid) != 2 or min(self.grid) < 1 or self.embed < 1 or self.channels < 1:
            raise ValueError(f"bad HeadsConfig {self}")


class RewardHeads(nn.Module):
    """(previous, current) frame tokens → pooled features → logits of `reward` and `end`."""

    def __init__(self, config: HeadsConfig):
        super().__init__()
        self.config = config
        e, c = config.embed, config.channels
        self.embed = nn.Embedding(config.vocab_size, e)
        self.trunk = nn.Sequential(nn.Conv2d(2 * e, c, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GELU(),
                                   nn.Conv2d(c, c, 3, stride=2, padding=1), nn.GELU())
        self.out = nn.Linear(2 * c, len(HEAD_NAMES))
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.5)
        nn.init.zeros_(self.out.weight)  # starts at p = 1/2 for both heads; the bias learns the base rates first
        nn.init.zeros_(self.out.bias)

    def features(self, prev: Tensor, cur: Tensor) -> Tensor:
        """prev, cur: (b, h, w) token ids → (b, 2c) pooled features (mean and max over the grid)."""
        x = torch.cat([self.embed(prev.long()), self.embed(cur.long())], dim=-1)  # (b, h, w, 2e)
        x = self.trunk(rearrange(x, "b h w e -> b e h w"))  # (b, c, h/4, w/4)
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)

    def forward(self, prev: Tensor, cur: Tensor) -> Tensor:
        """(b, 2) logits: reward, end."""
        return self.out(self.features(prev, cur))

    @torch.no_grad()
    def probs(self, prev: Tensor, cur: Tensor) -> tuple[Tensor, Tensor]:
        """P(reward) and P(end) of each (prev, cur) pair: (b,), (b,)."""
        p = self(prev, cur).float().sigmoid()
        return p[:, 0], p[:, 1]


# ---- examples from a recording ------------------------------------------------------------------------------

@dataclass
class HeadExamples:
    """Frame pairs as tokens: prev, cur (n, h, w) int64; targets (n, 2) float (reward, end)."""

    prev: Tensor
    cur: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.cur)


@torch.no_grad()
def head_examples(tokenizer, data: str | Path, split: str, max_episodes: int | None = None, windows: int = 2,
                  seed: int = 0, progress=None) -> HeadExamples:
    """Token frame pairs of `data`'s `split` with their reward/end targets: per episode its last window of the
    tokenizer's length (where the rewards and ends are) and up to `windows - 1` earlier windows drawn with `seed`
    (the negatives an agent sees most). Each window is tokenised whole, as the world model tokenises its prompts."""
    ds = ClipDataset(data, split, clip_len=2)
    if ds.is_tokens:
        raise GenieInputError(f"{data}: a token dataset; give the recorded frames (the heads tokenise them with --model's "
                              "tokenizer)")
    device = module_device(tokenizer)
    win = tokenizer.config.num_frames
    rng = np.random.default_rng(seed)
    episodes = np.arange(ds.num_episodes)
    if max_episodes is not None and len(episodes) > max_episodes:
        episodes = np.sort(rng.choice(episodes, max_episodes, replace=False))
    prev, cur, targets = [], [], []
    for e in episodes:
        ep = ds.episode(int(e))
        n = len(ep.frames)
        if n < 2:
            continue
        w = min(win, n)
        starts = {n - w} | {int(s) for s in rng.integers(0, n - w + 1, size=max(windows - 1, 0))}
        for s in sorted(starts):
            video = frames_to_video(ep.frames[s:s + w])[None].to(device)  # (1, w, c, H, W)
            tok = tokenizer.encode(video)[0].cpu()  # (w, h, w)
            prev.append(tok[:-1])
            cur.append(tok[1:])
            targets.append(torch.stack([torch.as_tensor(ep.rewards[s + 1:s + w] > 0),
                                        torch.as_tensor(ep.dones[s + 1:s + w])], dim=1).float())
        if progress:
            progress(1)
    if not cur:
        raise GenieInputError(f"{data}: split {split} has no episode of 2 frames or more")
    return HeadExamples(torch.cat(prev), torch.cat(cur), torch.cat(targets))


def _concat(parts: list[HeadExamples]) -> HeadExamples:
    return HeadExamples(*(torch.cat([getattr(p, k) for p in parts]) for k in ("prev", "cur", "targets")))


# ---- scores -------------------------------------------------------------------------------------------------

def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None without both classes."""
    labels = np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = np.asarray(scores)[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


@torch.no_grad()
def score_heads(heads: RewardHeads, ex: HeadExamples, batch: int = 256) -> dict:
    """Per head: accuracy at p = 1/2 against always-the-majority's, AUC, positives and the base rate."""
    heads.eval()
    dev = module_device(heads)
    probs = torch.cat([heads(ex.prev[i:i + batch].to(dev), ex.cur[i:i + batch].to(dev)).float().sigmoid().cpu()
                       for i in range(0, len(ex), batch)])
    out = {}
    for k, name in enumerate(HEAD_NAMES):
        y, p = ex.targets[:, k].numpy() > 0.5, probs[:, k].numpy()
        base = float(y.mean())
        out[name] = {"accuracy": float(((p > 0.5) == y).mean()), "majority_accuracy": max(base, 1 - base),
                     "auc": roc_auc(p, y), "positives": int(y.sum()), "examples": len(y), "base_rate": base}
    return out


def fit_heads(heads: RewardHeads, ex: HeadExamples, steps: int, batch: int = 64, lr: float = 3e-3,
              seed: int = 0, progress=None) -> list[float]:
    """AdamW on the binary cross-entropy of both heads, each positive weighted by its head's negatives/positives
    (ends and rewards are one frame in tens: unweighted, always-no is a good first answer). Returns the losses."""
    heads.train()
    dev = module_device(heads)
    g = generator_for("cpu", seed)  # batch indices into the examples, which stay in CPU memory
    pos = ex.targets.sum(0)
    pos_weight = ((len(ex) - pos) / pos.clamp_min(1)).clamp(1, 100).to(dev)
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=1e-4)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(ex), (min(batch, len(ex)),), generator=g)
        logits = heads(ex.prev[idx].to(dev), ex.cur[idx].to(dev))
        loss = F.binary_cross_entropy_with_logits(logits, ex.targets[idx].to(dev), pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for group in opt.param_groups:  # cosine to a tenth
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps)))
        losses.append(float(loss.detach()))
        if progress:
            progress(step, losses[-1])
    heads.eval()
    return losses


# ---- folders ------------------------------------------------------------------------------------------------

def save_heads(heads: RewardHeads, out: str | Path, info: dict, overwrite: bool = False) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise GenieInputError(f"{out}: --out exists and is not an empty folder (pass --overwrite to replace it)")
    tmp = temp_dir_beside(out)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()},
                  str(tmp / "model.safetensors"), metadata={"format": "genie-heads"})
        write_text(tmp / "config.json", json.dumps({"format": HEADS_FORMAT, "config": asdict(heads.config), **info},
                                                   indent=1) + "\n")
        return replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_heads(path: str | Path, device: torch.device | str = "cpu", tokenizer=None) -> RewardHeads:
    """A heads folder; with `tokenizer`, its vocabulary and grid must match. Problems are one GenieInputError."""
    p = Path(path)
    if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
        raise GenieInputError(f"{p}: not a heads folder (needs config.json and model.safetensors from genie heads train)")
    try:
        cfg = json.loads((p / "config.json").read_text())
        if cfg.get("format") != HEADS_FORMAT:
            raise ValueError(f"format {cfg.get('format')!r}, expected {HEADS_FORMAT}")
        config = HeadsConfig(**cfg["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenieInputError(f"{p}/config.json: not a readable heads config ({type(e).__name__}: {e})") from None
    heads = RewardHeads(config)
    try:
        heads.load_state_dict(load_file(str(p / "model.safetensors")))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise GenieInputError(f"{p}/model.safetensors: does not hold these heads ({str(e).splitlines()[0][:160]})") from None
    if tokenizer is not None:
        t = tokenizer.config
        if (t.codebook_size, tuple(t.grid)) != (config.vocab_size, config.grid):
            raise GenieInputError(f"{p}: heads for {config.vocab_size} codes on a {config.grid} grid; the model's "
                                  f"tokenizer has {t.codebook_size} on {tuple(t.grid)}")
    return heads.to(device).eval()


def train_heads(model: str | Path, data: str | Path | list, out: str | Path, steps: int = 1500, batch: int = 64,
                lr: float = 3e-3, max_episodes: int | None = 300, windows: int = 2, seed: int = 0,
                device: str = "auto", overwrite: bool = False, progress: bool = True) -> dict:
    """`genie heads train`: tokenise frame pairs of `data`'s train split with `model`'s tokenizer, fit the heads,
    score them on the val split (else test) against the base rates, write the heads folder."""
    from tqdm.auto import tqdm

    from data_pipelines.storage import read_card
    from genie.core.device import resolve_device
    from genie.export import load_export

    if steps < 1 or batch < 1 or windows < 1:
        raise GenieInputError("--steps, --batch-size and --windows must be >= 1")
    model = Path(model)
    tok_dir = model / "tokenizer" if (model / "tokenizer").is_dir() else model
    if not (tok_dir / "config.json").is_file():
        raise GenieInputError(f"{model}: no tokenizer export (a world-model folder or a tokenizer export)")
    dev = resolve_device(device)
    tokenizer = load_export(tok_dir, "tokenizer").to(dev).eval()
    datas = [data] if isinstance(data, (str, Path)) else list(data)
    helds = []
    for d in datas:  # several recordings: a demonstrator's (coins) and random play's (deaths) teach both heads
        splits = read_card(d).get("splits") or {}
        helds.append(next((s for s in ("val", "test") if (splits.get(s) or {}).get("episodes")), None))
        if not (splits.get("train") or {}).get("episodes") or helds[-1] is None:
            raise GenieInputError(f"{d}: the heads need a train split and a val or test split")
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(desc="tokenising episodes", unit="ep", disable=not progress, dynamic_ncols=True)
    train = _concat([head_examples(tokenizer, d, "train", max_episodes, windows, seed, progress=bar.update)
                     for d in datas])
    heldout = _concat([head_examples(tokenizer, d, h, max_episodes, windows, seed + 1, progress=bar.update)
                       for d, h in zip(datas, helds)])
    bar.close()
    if train.targets[:, 0].sum() == 0 and train.targets[:, 1].sum() == 0:
        raise GenieInputError(f"{', '.join(map(str, datas))}: no reward and no episode end in the train split's frames")
    cpu_tokens = time.process_time() - c0
    torch.manual_seed(seed)
    t = tokenizer.config
    heads = RewardHeads(HeadsConfig(t.codebook_size, tuple(t.grid))).to(dev)
    bar = tqdm(total=steps, desc="training heads", unit="step", disable=not progress, dynamic_ncols=True)
    losses = fit_heads(heads, train, steps, batch, lr, seed, progress=lambda s, loss: bar.update(1))
    bar.close()
    metrics = score_heads(heads, heldout)
    info = {"model": str(model), "data": [str(d) for d in datas], "held_out_split": helds, "train_examples": len(train),
            "train_positives": {n: int(train.targets[:, k].sum()) for k, n in enumerate(HEAD_NAMES)},
            "held_out": metrics, "steps": steps, "batch": batch, "lr": lr, "seed": seed, "max_episodes": max_episodes,
            "final_loss": float(np.mean(losses[-50:])), "cpu_seconds": {"tokenise": round(cpu_tokens, 1),
                                                                       "total": round(time.process_time() - c0, 1)},
            "seconds": round(time.perf_counter() - t0, 1)}
    path = save_heads(heads, out, info, overwrite)
    return {"path": str(path), **info}
