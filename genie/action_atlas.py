"""The latent-action atlas that `genie probe` writes: what does each latent action do?

For several prompt frames, roll out each latent action repeated k times and write:
    grid.png           rows: prompts, columns: actions (the frame after k repeats; the prompt first)
    action_<a>.gif     all prompts side by side, animated over the k steps of action a
    confusion.json/png latent code vs true action counts, when the data has true actions
    keymap.json        latent id → the true action it most often corresponds to
    index.html         a page that shows all of it

`--model` is a world-model folder (rollouts by the dynamics model, decoded by the tokenizer) or a LAM
export on its own: then each step is the LAM decoder's next-frame prediction for the chosen latent
action (`decode_with_actions`) from the frames so far, so a LAM can be looked at before any dynamics
model is trained.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import pick_split
from genie.core import atomic
from genie.core.device import resolve_device, to_device
from genie.core.errors import GenieInputError
from genie.core.frames import video_to_frames
from genie.core.metrics import merge_actions, merged_action_table, normalized_mutual_info
from genie.export import load_export
from genie.video_io import write_clip
from genie.world_model import WorldModel


def _upscale(img: np.ndarray, s: int) -> np.ndarray:
    return img.repeat(s, axis=0).repeat(s, axis=1) if s > 1 else img


def _heatmap(counts: np.ndarray, cell: int = 24) -> np.ndarray:
    """Row-normalised counts as a white→blue image (rows: latent codes, columns: true actions)."""
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    img = np.empty((*counts.shape, 3), np.uint8)
    img[..., 0] = (255 * (1 - norm)).astype(np.uint8)
    img[..., 1] = (255 * (1 - 0.7 * norm)).astype(np.uint8)
    img[..., 2] = 255
    return _upscale(img, cell)


def lam_rollout(lam, first: torch.Tensor, action: int, repeat: int) -> torch.Tensor:
    """first (p, 1, c, H, W) -> (p, repeat + 1, c, H, W): the LAM decoder's next-frame prediction for
    `action`, fed back `repeat` times (the last num_frames - 1 frames are its context)."""
    video = first
    for _ in range(repeat):
        context = video[:, -lam.config.context_frames:]
        actions = torch.full(context.shape[:2], action, dtype=torch.long, device=context.device)
        nxt = lam.decode_with_actions(context, actions)[:, -1:].clamp(-1, 1)
        video = torch.cat([video, nxt], dim=1)
    return video


def _load(model_dir: str | Path, dev: torch.device):
    """(world model or None, LAM) from a world-model folder or a LAM export."""
    p = Path(model_dir)
    if (p / "config.json").is_file():
        stage = json.loads((p / "config.json").read_text()).get("genie_stage")
        if stage != "lam":
            raise GenieInputError(f"{p}: a {stage or 'non-genie'} export; --model must be a world-model folder "
                                  "or a LAM export")
        return None, to_device(load_export(p, "lam"), dev, str(p)).eval()
    wm = to_device(WorldModel.from_pretrained(p), dev, str(p))
    return wm, wm.lam


@torch.no_grad()
def write_atlas(model_dir: str | Path, data: str | Path, out: str | Path, *, prompts: int = 4, repeat: int = 4,
                split: str | None = None, steps: int = 25, seed: int = 0, num_clips: int = 64, scale: int = 2,
                device: str | torch.device = "auto", progress: bool = True) -> dict:
    """Write the atlas of the model in `model_dir` on `data` to the folder `out` (the files above, and probe.json
    with what was written); returns probe.json's content. `split` None: test, else val, else train (said on stderr).
    `progress`: a bar on stderr over the rollouts, then over the clips whose actions are inferred."""
    dev = resolve_device(device)
    wm, lam = _load(model_dir, dev)
    split, note = pick_split(data, split)
    if note:
        print(note, file=sys.stderr)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenieInputError(f"{out}: --out must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    if prompts < 1 or repeat < 1:
        raise GenieInputError("--prompts and --repeat must be >= 1")
    clip_len = min(lam.config.num_frames, 16)
    ds = ClipDataset(data, split, clip_len=clip_len, num_clips=max(prompts, num_clips), seed=seed)
    first = torch.stack([ds[i % len(ds)]["video"][0] for i in range(prompts)])  # (p, c, H, W)
    A = lam.num_actions
    rollouts = []  # per action: (p, repeat + 1, c, H, W)
    for a in tqdm(range(A), unit="action", desc=f"rolling out {prompts} prompts × {repeat} steps", dynamic_ncols=True,
                  disable=not progress):
        if wm is not None:
            rollouts.append(wm.generate(first[:, None], [a] * repeat, steps=steps, seed=seed))
        else:
            rollouts.append(lam_rollout(lam, first[:, None].to(dev), a, repeat).cpu())
    frames = [video_to_frames(r) for r in rollouts]  # per action (p, repeat+1, H, W, c)

    # grid: prompt column, then the frame after `repeat` steps of each action
    rows = [np.concatenate([frames[0][i, 0]] + [frames[a][i, -1] for a in range(A)], axis=1) for i in range(prompts)]
    with atomic.atomic_file(out / "grid.png") as tmp:
        Image.fromarray(_upscale(np.concatenate(rows, axis=0), scale)).save(tmp)
    for a in range(A):
        strip = np.concatenate([frames[a][i] for i in range(prompts)], axis=2)  # (repeat+1, H, p*W, c)
        write_clip(out / f"action_{a}.gif", strip, fps=4, scale=scale)

    result = {"model": str(model_dir), "data": str(data), "split": split, "prompts": prompts, "repeat": repeat,
              "num_actions": A, "rollouts": "world model" if wm is not None else "LAM decoder (next-frame predictions)", "files": ["grid.png"] + [f"action_{a}.gif" for a in range(A)]}
    confusion_html = "<p>The data has no true actions: no confusion matrix or keymap.</p>"
    if ds.has_actions:
        codes, true = [], []
        for i in tqdm(range(len(ds)), unit="clip", desc="inferring latent actions", dynamic_ncols=True,
                      disable=not progress):
            item = ds[i]
            codes.append(lam.infer_actions(item["video"][None].to(dev))[0].cpu())
            true.append(item["actions"])
        codes, true = torch.cat(codes).numpy(), torch.cat(true).numpy()
        merge = merged_action_table(ds.card)
        names = ds.card.get("action_names")
        true = merge_actions(true, ds.card)
        classes = sorted(np.unique(true).tolist()) if merge is None else sorted(set(merge.tolist()))
        counts = np.zeros((A, len(classes)), np.int64)
        for c, t in zip(codes, true):
            counts[c, classes.index(int(t))] += 1
        label = [names[c] if names and c < len(names) else str(c) for c in classes]
        keymap = {str(a): (label[int(counts[a].argmax())] if counts[a].sum() else None) for a in range(A)}
        # how well the keymap names the true action: each latent read as its most frequent true action
        total = max(int(counts.sum()), 1)
        scores = {"accuracy": round(float(counts.max(axis=1).sum()) / total, 4),
                  "majority_accuracy": round(float(counts.sum(axis=0).max()) / total, 4),
                  "nmi": round(float(normalized_mutual_info(codes, true)), 4), "transitions": len(codes)}
        atomic.write_text(out / "confusion.json", json.dumps({"rows": "latent action", "columns": label,
                                                              "counts": counts.tolist(), **scores}, indent=2))
        atomic.write_text(out / "keymap.json", json.dumps(keymap, indent=2))
        with atomic.atomic_file(out / "confusion.png") as tmp:
            Image.fromarray(_heatmap(counts)).save(tmp)
        result.update(files=result["files"] + ["confusion.json", "confusion.png", "keymap.json"], keymap=keymap,
                      confusion=scores)
        head = "".join(f"<th>{html.escape(x)}</th>" for x in label)
        body = "".join(f"<tr><th>{a}</th>" + "".join(f"<td>{v}</td>" for v in counts[a]) + "</tr>" for a in range(A))
        confusion_html = (f"<h2>Latent vs true actions ({len(codes)} transitions)</h2><img src='confusion.png'>"
                          f"<p>Keymap accuracy (each latent read as its most frequent true action): "
                          f"{scores['accuracy']:.3f} against {scores['majority_accuracy']:.3f} for always the most "
                          f"frequent action; NMI {scores['nmi']:.3f}.</p>"
                          f"<table border=1><tr><th>latent</th>{head}</tr>{body}</table>"
                          f"<h2>Suggested keymap</h2><pre>{html.escape(json.dumps(keymap, indent=2))}</pre>")
    gifs = "".join(f"<figure><img src='action_{a}.gif'><figcaption>action {a}</figcaption></figure>" for a in range(A))
    page = (f"<!doctype html><meta charset=utf-8><title>genie probe</title><h1>What each latent action does</h1>"
            f"<p>{html.escape(str(model_dir))} on {html.escape(str(data))} ({split}), each action repeated {repeat}×; "
            f"frames from the {html.escape(result['rollouts'])}.</p>"
            f"<h2>Grid (rows: prompts; columns: prompt, then actions 0..{A - 1})</h2><img src='grid.png'>"
            f"<h2>Per action</h2>{gifs}{confusion_html}")
    atomic.write_text(out / "index.html", page)
    result["files"].append("index.html")
    atomic.write_text(out / "probe.json", json.dumps(result, indent=2))
    return result
