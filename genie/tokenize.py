"""`genie tokenize`: pre-tokenise a video dataset with a trained tokenizer into uint16 token shards.

The output has the dataset layout of `data_pipelines.storage` with `frames` holding token ids
(n, h, w, 1) uint16, the same episodes, splits, actions, rewards, done flags and level seeds, so the
dynamics stage reads tokens with the same clip machinery and never re-encodes video.

Episodes are encoded in consecutive windows of the tokenizer's `num_frames` frames (the tokenizer
is causal, so each window's tokens depend on that window's frames up to each frame only); the LAM's
actions come from windows of its `num_frames` that overlap by one frame (`encode_windows`, both).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import SPLITS, DatasetWriter, Episode, read_card
from genie.core.config import format_hw
from genie.core.device import module_device, resolve_device, to_device
from genie.core.errors import GenieInputError
from genie.core.frames import frames_to_video
from genie.distributed import process_state
from genie.export import load_export


@torch.no_grad()
def tokenize_dataset(tokenizer_dir: str | Path, data: str | Path, out: str | Path, *, lam_dir: str | Path | None = None,
                     batch_size: int = 16, max_episodes: int | dict[str, int] | None = None, overwrite: bool = False,
                     progress: bool = True, device: str | torch.device = "auto") -> dict:
    """Tokenise every split of `data`. With `lam_dir`, the stored actions are the LAM's latent actions
    (inferred over windows of the LAM's num_frames that overlap by one frame, so every transition,
    window boundaries included, gets one); without it, the dataset's own actions are carried along.
    `max_episodes` keeps only the first that many episodes of each split (a quicker, smaller dataset); a
    dict {split: n} limits the splits it names. `device`: 'auto' | 'cpu' | 'cuda[:N]' where the windows are
    encoded, `batch_size` windows at a time."""
    limits = max_episodes if isinstance(max_episodes, dict) else {s: max_episodes for s in SPLITS}
    if any(n is not None and n < 1 for n in limits.values()):
        raise GenieInputError(f"--max-episodes must be >= 1, got {max_episodes}")
    dev = resolve_device(device)
    model = to_device(load_export(tokenizer_dir, "tokenizer"), dev, f"{tokenizer_dir} (tokenizer)")
    lam = to_device(load_export(lam_dir, "lam"), dev, f"{lam_dir} (LAM)") if lam_dir is not None else None
    if lam is not None and (lam.config.frame_size, lam.config.channels) != (model.config.frame_size, model.config.channels):
        raise GenieInputError(f"{lam_dir}: LAM frames {format_hw(lam.config.image_size)} (width×height) do not match "
                              f"the tokenizer's {format_hw(model.config.image_size)}")
    cfg = model.config
    card = read_card(data)
    if card.get("dtype", "uint8") != "uint8":
        raise GenieInputError(f"{data}: already a token dataset")
    if (card["height"], card["width"], card["channels"]) != (*cfg.frame_size, cfg.channels):
        raise GenieInputError(f"{data}: frames are {card['width']}×{card['height']}×{card['channels']} "
                              f"(width×height×channels) but the tokenizer expects "
                              f"{format_hw(cfg.image_size)}×{cfg.channels}")
    if cfg.codebook_size > 65536:
        raise GenieInputError(f"{tokenizer_dir}: codebook of {cfg.codebook_size} does not fit uint16")
    window = cfg.num_frames
    splits = [s for s in SPLITS if s in card.get("splits", {})]
    sets = {s: ClipDataset(data, s, clip_len=1) for s in splits}
    episodes = {s: range(min(sets[s].num_episodes, limits.get(s) or sets[s].num_episodes)) for s in splits}
    total = sum(len(sets[s].episode_frames(e)) for s in splits for e in episodes[s])
    new_card = {k: card[k] for k in ("source", "num_actions", "action_names", "merged_action", "split_key") if k in card}
    if lam is not None:
        new_card.update(num_actions=lam.num_actions, actions="latent", lam={"path": str(lam_dir), "num_actions": lam.num_actions})
        new_card.pop("action_names", None)
        new_card.pop("merged_action", None)
    if max_episodes is not None:
        new_card["max_episodes_per_split"] = max_episodes
    new_card.update(tokenizer={"path": str(tokenizer_dir), "codebook_size": cfg.codebook_size, "grid": cfg.grid[0] if cfg.grid[0] == cfg.grid[1] else list(cfg.grid),
                               "window": window}, source_dataset=str(data), vocab_size=cfg.codebook_size)
    bar = None
    if progress:
        bar = tqdm(total=total, unit="frame", desc="tokenizing", dynamic_ncols=True, mininterval=0.5)
    state, dev = process_state(dev)
    if state is not None:
        model, lam = model.to(dev), (lam.to(dev) if lam is not None else None)
    def encode(split: str, e: int) -> Episode:
        ds = sets[split]
        ep = ds.episode(e)
        n = len(ep)
        ids = np.empty((n, *cfg.grid), np.uint16)
        for s, tok in encode_windows(model.encode, ep.frames, window, window, batch_size, dev):
            ids[s:s + len(tok)] = tok
        acts = ep.actions if lam is None else _latent_actions(lam, ep.frames, batch_size)
        if bar is not None:
            bar.update(n * (state.num_processes if state is not None else 1))
        return Episode(frames=ids[..., None], actions=acts if (ds.has_actions or lam is not None) else None,
                       rewards=ep.rewards, dones=ep.dones, level_seed=ep.level_seed, source=ep.source)

    work = [(split, e) for split in splits for e in episodes[split]]
    main = state is None or state.is_main_process
    if not main and bar is not None:
        bar.close()
        bar = None
    t0 = time.perf_counter()
    if state is None:  # one process: write each episode as soon as it is encoded
        with DatasetWriter(out, overwrite=overwrite, chunk_len=card.get("chunk_len", 64), card=new_card) as w:
            for split, e in work:
                w.add_episode(encode(split, e), split)
            path = w.close()
    else:  # several processes: contiguous shares of the episodes, gathered in order, written by the main process
        with state.split_between_processes(work) as mine:
            done = [(split, encode(split, e)) for split, e in mine]
        done = gather_object(done)
        path = Path(out)
        if main:
            with DatasetWriter(out, overwrite=overwrite, chunk_len=card.get("chunk_len", 64), card=new_card) as w:
                for split, ep in done:
                    w.add_episode(ep, split)
                path = w.close()
        state.wait_for_everyone()
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    return {"path": str(path), "frames": total, "seconds": dt, "frames_per_s": total / dt if dt else 0.0, "device": str(dev),
            "processes": state.num_processes if state is not None else 1, "main_process": main}


def encode_windows(fn, frames: np.ndarray, window: int, hop: int, batch_size: int,
                   device: torch.device) -> Iterator[tuple[int, np.ndarray]]:
    """(start, `fn` of the window) for windows of `window` frames every `hop` frames of an episode's uint8
    frames (t, H, W, c); the last window may be shorter. `fn` maps video (b, t, c, H, W) on `device` to a
    per-window result; full windows go through it `batch_size` at a time."""
    n = len(frames)
    starts = list(range(0, n - (window - hop), hop))
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        full = [s for s in group if s + window <= n]
        if full:
            out = fn(torch.stack([frames_to_video(frames[s:s + window]) for s in full]).to(device)).cpu().numpy()
            yield from zip(full, out)
        for s in group:
            if s + window > n:  # the shorter last window
                yield s, fn(frames_to_video(frames[s:])[None].to(device))[0].cpu().numpy()


@torch.no_grad()
def _latent_actions(lam, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """LAM action ids for every transition of an episode, in the storage layout (one per frame; the
    last frame, which has no next frame in the episode, gets -1). Windows overlap by one frame, so the
    transitions at window boundaries get an action too."""
    n, w = len(frames), lam.config.num_frames
    out = np.full(n, -1, np.int16)
    if n < 2:
        return out
    for s, a in encode_windows(lam.infer_actions, frames, w, w - 1, batch_size, module_device(lam)):
        out[s:s + len(a)] = a
    return out
