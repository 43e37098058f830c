"""Behavioural cloning of a demonstrator's videos (Genie §3.3): on the LAM's latent actions, or on the true ones.

- **latent BC**: the frozen LAM labels every transition of the demonstrator's train split with a latent action
  (`lam.infer_actions`, clips of the LAM's length); the policy learns frames → latent action from those labels
  alone. Then N labelled transitions (genie.grounding: `collect_transitions`, `fit_action_map`) tie each latent to
  real actions, and the agent plays through that map. Only the map sees true actions, N of them.
- **oracle BC**: the same policy on the same frames, trained on the true actions (merged into the card's classes).

The policy reads the previous and the current frame and predicts the action taken at the current one (the one
that moves it to the next frame; architecture §4's alignment). Both agents use the same transitions (an episode's last
frame, with no next frame for the LAM to read, is left out of both).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import read_card
from genie.agents.agent import AGENT_FORMAT, CHOICES, KINDS, load_agent, save_agent
from genie.agents.model import PRESETS, PolicyConfig, PolicyNet, count_parameters, logits_in_batches
from genie.core.device import generator_for, module_device, resolve_device
from genie.core.errors import GenieInputError
from genie.core.frames import frames_to_video
from genie.core.metrics import merge_actions, merged_action_table
from genie.grounding import class_names, collect_transitions, fit_action_map, lam_fingerprint, load_lam


def raw_action_table(card: dict) -> list[int]:
    """The CoinRun action each real class is played as: the first raw id of each merged class (identity without a
    merge table)."""
    table = merged_action_table(card)
    if table is None:
        return list(range(int(card["num_actions"])))
    return [int(np.flatnonzero(table == m)[0]) for m in range(int(table.max()) + 1)]


class Transitions:
    """All transitions of one split in memory: frames (n_frames, H, W, c) uint8 and, per transition, the index of its
    previous frame (the frame itself at an episode's start), of its current frame, and its true action."""

    def __init__(self, data: str | Path, split: str, max_episodes: int | None = None):
        ds = ClipDataset(data, split, clip_len=2)
        frames, prev, cur, actions, self.episodes = [], [], [], [], []
        base = 0
        for e in range(ds.num_episodes if max_episodes is None else min(max_episodes, ds.num_episodes)):
            f = ds.episode_frames(e)
            n = len(f)
            if n < 2:
                continue
            frames.append(f)
            t = np.arange(n - 1)
            prev.append(base + np.maximum(t - 1, 0))
            cur.append(base + t)
            a = ds.episode_actions(e)
            if a is not None:
                actions.append(a[:n - 1])
            self.episodes.append((base, n))
            base += n
        if not frames:
            raise GenieInputError(f"{data}: the {split} split has no episode of 2 frames or more")
        self.frames = np.concatenate(frames)
        self.prev, self.cur = np.concatenate(prev), np.concatenate(cur)
        self.actions = np.concatenate(actions).astype(np.int64) if actions else None
        self.card = ds.card

    def __len__(self) -> int:
        return len(self.cur)

    def pairs(self, idx: np.ndarray) -> torch.Tensor:
        """(b, 2, H, W, c) uint8 previous and current frames of transitions `idx`."""
        return torch.from_numpy(np.stack([self.frames[self.prev[idx]], self.frames[self.cur[idx]]], axis=1))


@torch.no_grad()
def lam_labels(lam, tr: Transitions, batch: int = 16, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(n,) the LAM's latent action of every transition of `tr`, in its order. Each episode is cut into clips of
    the LAM's length that overlap by one frame, so every transition is read once, with up to num_frames - 1 frames
    of past (the LAM was trained on such clips)."""
    length = lam.config.num_frames
    device = module_device(lam)
    out = np.empty(len(tr), np.int64)
    windows: dict[int, list[tuple[int, int]]] = {}  # clip length → (first frame, first transition) of each clip
    t0 = 0
    for base, n in tr.episodes:
        for s in range(0, n - 1, length - 1):
            m = min(length, n - s)
            windows.setdefault(m, []).append((base + s, t0 + s))
        t0 += n - 1
    for m, items in windows.items():
        for i in range(0, len(items), batch):
            chunk = items[i:i + batch]
            video = torch.stack([frames_to_video(tr.frames[f:f + m]) for f, _ in chunk]).to(device)
            codes = lam.infer_actions(video).cpu().numpy()  # (b, m-1)
            for (_, t), c in zip(chunk, codes):
                out[t:t + m - 1] = c
            if progress is not None:
                progress(len(chunk))
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GenieInputError(f"{out}: --out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GenieInputError(f"{out}: --out exists and is not empty (pass --overwrite to replace it)")


def class_weights(targets: np.ndarray, num_classes: int, balance: float) -> torch.Tensor | None:
    """Cross-entropy weights count_c^-balance, scaled to a mean of 1 over the transitions (None at balance 0).
    balance 1 weighs every class equally in the loss; 0.5 halfway (in log space). A class absent from the targets
    gets weight 0 (it cannot be learned anyway)."""
    if balance == 0:
        return None
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, np.maximum(counts, 1) ** -balance, 0.0)
    w *= len(targets) / (w * counts).sum()
    return torch.as_tensor(w, dtype=torch.float32)


def fit_policy(net: PolicyNet, tr: Transitions, targets: np.ndarray, steps: int, batch: int = 64, lr: float = 1e-3,
               seed: int = 0, val: tuple[Transitions, np.ndarray] | None = None,
               progress: Callable[[int, float], None] | None = None, balance: float = 0.0) -> dict:
    """Cross-entropy on (frames → targets) for `steps` AdamW steps of `batch` random transitions (seeded), the
    learning rate decaying to a tenth (cosine); `balance` weighs the classes (class_weights). Returns the last
    losses and, with `val`, held-out accuracy."""
    device = module_device(net)
    g = generator_for("cpu", seed)  # batch indices into the transitions, which stay in CPU memory
    y = torch.as_tensor(targets, dtype=torch.long)
    weight = class_weights(targets, net.config.num_outputs, balance)
    weight = None if weight is None else weight.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    net.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(tr), (batch,), generator=g).numpy()
        loss = F.cross_entropy(net(tr.pairs(idx).to(device)), y[idx].to(device), weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, losses[-1])
    net.eval()
    res = {"final_loss": float(np.mean(losses[-100:])) if losses else None}
    if val is not None:
        vtr, vy = val
        pred = logits_in_batches(net, vtr.pairs(np.arange(len(vtr))).to(device)).argmax(-1).cpu().numpy()
        recalls = [float((pred[vy == c] == c).mean()) for c in np.unique(vy)]
        res.update(val_accuracy=float((pred == vy).mean()), val_transitions=len(vy),
                   val_majority_accuracy=float((vy == np.bincount(targets).argmax()).mean()),
                   val_balanced_accuracy=float(np.mean(recalls)))  # mean recall over the classes in val
    return res


def train_agent(kind: str, data: str | Path, out: str | Path, model: str | Path | None = None, labels: int = 200,
                steps: int = 4000, batch: int = 64, lr: float = 1e-3, preset: str = "cpu", seed: int = 0,
                act: str = "sample", decode: str = "sample", policy_from: str | Path | None = None,
                max_episodes: int | None = None, device: str = "auto", overwrite: bool = False,
                progress: bool = True, balance: float = 0.0) -> dict:
    """Clone the demonstrator in `data`'s train split into an agent folder at `out` (see the module doc).

    `model`: the LAM (a world-model folder or a LAM export) for latent BC. `labels`: N, the labelled transitions the
    latent agent's map is fitted on. `policy_from`: a latent agent whose policy (cloned on the same LAM's labels)
    is reused, so only the map is fitted (the policy does not depend on N: Genie Fig. 15's sweep is one policy).
    `balance`: class weighting of the cloning loss (class_weights; 0 plain cross-entropy), for a demonstrator whose
    default action dominates its labels.
    """
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise GenieInputError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if act not in CHOICES or decode not in CHOICES:
        raise GenieInputError(f"--act and --decode must be one of {', '.join(CHOICES)}")
    if preset not in PRESETS:
        raise GenieInputError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if policy_from is not None and kind != "latent":
        raise GenieInputError("--policy-from reuses a latent agent's policy; it applies to --kind latent only")
    if not 0 <= balance <= 1:
        raise GenieInputError(f"--balance must be in [0, 1], got {balance}")
    if steps < (0 if policy_from is not None else 1) or batch < 1 or not lr > 0:
        raise GenieInputError("--steps must be >= 1 (0 only with --policy-from), --batch-size >= 1 and --lr > 0")
    if kind == "latent" and model is None:
        raise GenieInputError("--kind latent needs --model: the LAM (world-model folder or LAM export) that labels the videos")
    if kind == "latent" and labels < 1:
        raise GenieInputError(f"--labels must be >= 1, got {labels}")
    out = Path(out)
    _check_out(out, overwrite)
    card = read_card(data)
    if not card.get("has_actions"):
        need = "oracle BC clones the true actions" if kind == "oracle" else \
            f"latent BC's map needs {labels} labelled transitions"
        raise GenieInputError(f"{data}: the dataset has no true actions ({need})")
    if not (card.get("splits", {}).get("train") or {}).get("episodes"):
        raise GenieInputError(f"{data}: no train split to clone")
    dev = resolve_device(device)
    names, raw = class_names(card), raw_action_table(card)
    cpu, t_start = {}, time.perf_counter()

    def clock(name: str, since: float) -> float:
        now = time.process_time()
        cpu[name] = round(now - since, 1)
        return now

    c0 = time.process_time()
    lam = sha = None
    if kind == "latent":
        lam = load_lam(model).to(dev).eval()
        if tuple(lam.config.frame_size) != (card["height"], card["width"]):
            h, w = lam.config.frame_size
            raise GenieInputError(f"{model}: the LAM reads {w}×{h} frames, {data} has {card['width']}×{card['height']}")
        sha = lam_fingerprint(lam)

    recipe = {"data": str(data), "data_policy": (card.get("recipe") or {}).get("policy"),
              "train_levels": _level_range(card), "seed": seed}
    if policy_from is not None:
        src = load_agent(policy_from, dev)
        if src.kind != "latent" or src.config.get("lam_sha256") != sha:
            raise GenieInputError(f"--policy-from {policy_from}: not a latent agent cloned on this LAM's labels")
        net, pcfg = src.net, src.net.config
        recipe.update({k: v for k, v in src.config["recipe"].items() if k not in ("labels", "map_seconds_cpu")})
        recipe["policy_from"] = str(policy_from)
        fit_info = src.config.get("training", {})
    else:
        bar = tqdm(desc="loading transitions", unit="ep", disable=not progress, dynamic_ncols=True)
        tr = Transitions(data, "train", max_episodes)
        has_val = bool((card.get("splits", {}).get("val") or {}).get("episodes"))
        vtr = Transitions(data, "val", max_episodes) if has_val else None
        bar.close()
        c0 = clock("load", c0)
        if kind == "oracle":
            targets = merge_actions(tr.actions, card)
            vtargets = merge_actions(vtr.actions, card) if vtr is not None else None
            pcfg = PolicyConfig(num_outputs=len(names), image_size=card["height"], channels=card["channels"],
                                **PRESETS[preset])
        else:
            bar = tqdm(desc="labelling with the LAM", unit="clip", disable=not progress, dynamic_ncols=True)
            targets = lam_labels(lam, tr, progress=bar.update)
            vtargets = lam_labels(lam, vtr, progress=bar.update) if vtr is not None else None
            bar.close()
            c0 = clock("lam_labels", c0)
            pcfg = PolicyConfig(num_outputs=lam.num_actions, image_size=card["height"], channels=card["channels"],
                                **PRESETS[preset])
        torch.manual_seed(seed)
        net = PolicyNet(pcfg).to(dev)
        bar = tqdm(total=steps, desc=f"cloning ({kind})", unit="step", disable=not progress, dynamic_ncols=True)

        def tick(step: int, loss: float) -> None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")

        fit_info = fit_policy(net, tr, targets, steps, batch, lr, seed,
                              val=(vtr, vtargets) if vtr is not None else None, progress=tick, balance=balance)
        bar.close()
        c0 = clock("train", c0)
        fit_info.update(train_transitions=len(tr), steps=steps, batch=batch, lr=lr, preset=preset,
                        parameters=count_parameters(net),
                        target_counts=np.bincount(targets, minlength=pcfg.num_outputs).tolist())
        recipe.update(steps=steps, batch=batch, lr=lr, preset=preset, balance=balance)

    amap = None
    if kind == "latent":
        # twice N: clips drawn at random may overlap (a transition counts once), so asking for exactly N can
        # return fewer while the data holds more; the map takes N of them (a seeded shuffle, as genie ground)
        fit = collect_transitions(lam, data, "train", 2 * labels, seed)
        source = {"data": str(data), "split": "train", "seed": seed}
        amap = fit_action_map(fit, names, lam.num_actions, labels, sha, source, seed)
        c0 = clock("map", c0)
        recipe["labels"] = labels
    config = {"format": AGENT_FORMAT, "kind": kind, "policy": pcfg.to_dict(), "class_names": names,
              "raw_action": raw, "act": act, "decode": decode, "lam_sha256": sha,
              "lam": None if model is None else str(model), "recipe": recipe, "training": fit_info,
              "cpu_seconds": cpu}
    path = save_agent(out, net, config, amap, overwrite=overwrite)
    return {"path": str(path), "kind": kind, "labels": labels if kind == "latent" else None,
            "seconds": time.perf_counter() - t_start, "cpu_seconds": cpu, "training": fit_info,
            "code_to_action": None if amap is None else [names[c] for c in amap.code_to_class()]}


def _level_range(card: dict) -> list[int] | None:
    """[first, last + 1) of the level seeds a CoinRun recording drew from (None when unbounded or unknown)."""
    r = card.get("recipe") or {}
    start, num = r.get("start_level"), r.get("num_levels")
    if isinstance(start, int) and isinstance(num, int) and num > 0:
        return [start, start + num]
    return None
