"""`genie probe`: what does each latent action do?

For several prompt frames, roll out each latent action repeated k times and write:
    grid.png           rows: prompts, columns: actions (the frame after k repeats; the prompt first)
    action_<a>.gif     all prompts side by side, animated over the k steps of action a
    confusion.json/png latent code vs true action counts, when the data has true actions
    keymap.json        latent id → the true action it most often corresponds to
    index.html         a page that shows all of it
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

from data_pipelines.clips import ClipDataset, video_to_frames
from data_pipelines.errors import GenieInputError
from genie.device import resolve_device, to_device


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


@torch.no_grad()
def probe(model_dir: str | Path, data: str | Path, out: str | Path, *, prompts: int = 4, repeat: int = 4,
          split: str = "test", steps: int = 25, seed: int = 0, num_clips: int = 64, scale: int = 2,
          device: str | torch.device = "auto") -> dict:
    from PIL import Image

    from genie.video_io import write_clip
    from genie.world_model import WorldModel

    dev = resolve_device(device)
    wm = to_device(WorldModel.from_pretrained(model_dir), dev, str(model_dir))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenieInputError(f"{out}: --out must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    if prompts < 1 or repeat < 1:
        raise GenieInputError("--prompts and --repeat must be >= 1")
    clip_len = min(wm.lam.config.num_frames, 16)
    ds = ClipDataset(data, split, clip_len=clip_len, num_clips=max(prompts, num_clips), seed=seed)
    first = torch.stack([ds[i]["video"][0] for i in range(prompts)])  # (p, c, H, W)
    A = wm.num_actions
    rollouts = []  # per action: (p, repeat + 1, c, H, W)
    for a in range(A):
        rollouts.append(wm.generate(first[:, None], [a] * repeat, steps=steps, seed=seed))
    frames = [video_to_frames(r) for r in rollouts]  # per action (p, repeat+1, H, W, c)

    # grid: prompt column, then the frame after `repeat` steps of each action
    rows = [np.concatenate([frames[0][i, 0]] + [frames[a][i, -1] for a in range(A)], axis=1) for i in range(prompts)]
    Image.fromarray(_upscale(np.concatenate(rows, axis=0), scale)).save(out / "grid.png")
    for a in range(A):
        strip = np.concatenate([frames[a][i] for i in range(prompts)], axis=2)  # (repeat+1, H, p*W, c)
        write_clip(out / f"action_{a}.gif", strip, fps=4, scale=scale)

    result = {"model": str(model_dir), "data": str(data), "split": split, "prompts": prompts, "repeat": repeat,
              "num_actions": A, "files": ["grid.png"] + [f"action_{a}.gif" for a in range(A)]}
    confusion_html = "<p>The data has no true actions: no confusion matrix or keymap.</p>"
    if ds.has_actions:
        codes, true = [], []
        for i in range(len(ds)):
            item = ds[i]
            codes.append(wm.lam.infer_actions(item["video"][None].to(dev))[0].cpu())
            true.append(item["actions"])
        codes, true = torch.cat(codes).numpy(), torch.cat(true).numpy()
        merge = ds.card.get("merged_action")
        names = ds.card.get("action_names")
        if merge:
            true = np.asarray(merge)[true]
        classes = sorted(np.unique(true).tolist()) if not merge else sorted(set(merge))
        counts = np.zeros((A, len(classes)), np.int64)
        for c, t in zip(codes, true):
            counts[c, classes.index(int(t))] += 1
        label = [names[c] if names and c < len(names) else str(c) for c in classes]
        keymap = {str(a): (label[int(counts[a].argmax())] if counts[a].sum() else None) for a in range(A)}
        (out / "confusion.json").write_text(json.dumps({"rows": "latent action", "columns": label,
                                                        "counts": counts.tolist()}, indent=2))
        (out / "keymap.json").write_text(json.dumps(keymap, indent=2))
        Image.fromarray(_heatmap(counts)).save(out / "confusion.png")
        result.update(files=result["files"] + ["confusion.json", "confusion.png", "keymap.json"], keymap=keymap)
        head = "".join(f"<th>{html.escape(x)}</th>" for x in label)
        body = "".join(f"<tr><th>{a}</th>" + "".join(f"<td>{v}</td>" for v in counts[a]) + "</tr>" for a in range(A))
        confusion_html = (f"<h2>Latent vs true actions ({len(codes)} transitions)</h2><img src='confusion.png'>"
                          f"<table border=1><tr><th>latent</th>{head}</tr>{body}</table>"
                          f"<h2>Suggested keymap</h2><pre>{html.escape(json.dumps(keymap, indent=2))}</pre>")
    gifs = "".join(f"<figure><img src='action_{a}.gif'><figcaption>action {a}</figcaption></figure>" for a in range(A))
    page = (f"<!doctype html><meta charset=utf-8><title>genie probe</title><h1>What each latent action does</h1>"
            f"<p>{html.escape(str(model_dir))} on {html.escape(str(data))} ({split}), each action repeated {repeat}×.</p>"
            f"<h2>Grid (rows: prompts; columns: prompt, then actions 0..{A - 1})</h2><img src='grid.png'>"
            f"<h2>Per action</h2>{gifs}{confusion_html}")
    (out / "index.html").write_text(page)
    result["files"].append("index.html")
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    return result
