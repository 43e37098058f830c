"""Metrics shared by training validation, `genie evaluate` and the benchmarks: one computation of each number.

PSNR and SSIM come from torchmetrics, on frames mapped from [-1, 1] to [0, 1], so a stage's validation
figure and `genie evaluate`'s agree to the last digit on the same frames.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import reduce
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from genie.core.frames import to_unit

# PSNR of identical frames (an MSE below 1e-10): a finite cap, so means over frames stay finite
MAX_PSNR_DB = 100.0


def _unit_frames(x: torch.Tensor) -> torch.Tensor:
    """(…, c, H, W) in [-1, 1] → (n, c, H, W) in [0, 1], float32."""
    return to_unit(x).reshape(-1, *x.shape[-3:])


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB) of frames (…, c, H, W) in [-1, 1], computed on [0, 1]; returns (…) values."""
    v = peak_signal_noise_ratio(_unit_frames(pred), _unit_frames(target), data_range=1.0, reduction="none",
                                dim=(1, 2, 3))
    return v.clamp_max(MAX_PSNR_DB).reshape(pred.shape[:-3])


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM of frames (…, c, H, W) in [-1, 1], computed on [0, 1]; returns (…) values."""
    v = structural_similarity_index_measure(_unit_frames(pred), _unit_frames(target), data_range=1.0, reduction="none")
    return v.reshape(pred.shape[:-3])


def merged_action_table(card: dict) -> np.ndarray | None:
    """The dataset card's `merged_action` table (true action id → class of actions with the same effect,
    e.g. CoinRun's 15 → 9), or None when the card has none."""
    table = card.get("merged_action")
    return np.asarray(table, dtype=np.int64) if table else None


def merge_actions(actions: np.ndarray, card: dict) -> np.ndarray:
    """True action ids as the classes they are scored as: merged by the card's table when it has one."""
    table = merged_action_table(card)
    return np.asarray(actions) if table is None else table[np.asarray(actions)]


def action_components(card: dict) -> dict[str, np.ndarray] | None:
    """Per true action id, its horizontal (0 left, 1 none, 2 right) and vertical (0 down, 1 none, 2 up)
    component, read from the card's `action_names` (Procgen's "LEFT+UP" style; a name without a direction
    word, such as CoinRun's ignored buttons, is none/none). None when the card names no directions."""
    names = card.get("action_names")
    if not names:
        return None
    words = [set(str(n).upper().split("+")) for n in names]
    if not any(w & {"LEFT", "RIGHT", "UP", "DOWN"} for w in words):
        return None
    def axis(neg: str, pos: str) -> np.ndarray:
        return np.array([0 if neg in w else 2 if pos in w else 1 for w in words], dtype=np.int64)
    return {"horizontal": axis("LEFT", "RIGHT"), "vertical": axis("DOWN", "UP")}


def agent_box(card: dict, frame_size: tuple[int, int] | None = None) -> tuple[int, int, int, int] | None:
    """The card's region of interest (`agent_box`: where the controlled agent is drawn, e.g. CoinRun's fixed
    centre box) as (top, left, bottom, right) pixels, end-exclusive; None when the card names none. With
    `frame_size` (H, W) a box outside the frame is an error rather than a silently empty region."""
    box = card.get("agent_box")
    if not box:
        return None
    try:
        top, left, bottom, right = (int(box[k]) for k in ("top", "left", "bottom", "right"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"dataset card agent_box must have integer top, left, bottom, right; got {box!r}") from None
    h, w = frame_size if frame_size is not None else (bottom, right)
    if not (0 <= top < bottom <= h and 0 <= left < right <= w):
        raise ValueError(f"dataset card agent_box {box} does not fit {h}x{w} frames")
    return top, left, bottom, right


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), np.float64)
    np.add.at(table, (ai, bi), 1)
    return table


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI with arithmetic-mean normalisation, I(a;b) / ((H(a)+H(b))/2); 0 when either is constant."""
    table = contingency(a, b)
    n = table.sum()
    if n == 0:
        return 0.0
    p = table / n
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0 or hb == 0:
        return 0.0
    return max(0.0, mi / ((ha + hb) / 2))


# A patch counts as unchanged when no pixel of it moved by more than this, in [-1, 1] units: one uint8 step
# is 2/255 ≈ 0.0078, so 1e-6 means bit-identical stored pixels.
UNCHANGED_PATCH_THRESHOLD = 1e-6


def token_stability_counts(indices: torch.Tensor, video: torch.Tensor, patch_size: int,
                           threshold: float = UNCHANGED_PATCH_THRESHOLD) -> torch.Tensor:
    """Counts of identical tokens between consecutive frames, overall and where the pixels did not change.

    indices (b, t, h, w) token ids of video (b, t, c, H, W) in [-1, 1], one token per p×p pixel patch
    (`patch_size` p). Returns int64 [identical, transitions, identical on unchanged patches, unchanged
    patches] summed over the batch (on the CPU), so batches add up."""
    same = indices[:, 1:] == indices[:, :-1]  # (b, t-1, h, w)
    diff = (video[:, 1:] - video[:, :-1]).abs()
    change = reduce(diff, "b t c (h p1) (w p2) -> b t h w", "max", p1=patch_size, p2=patch_size)
    unchanged = change <= threshold
    return torch.stack([same.sum(), torch.tensor(same.numel(), device=same.device),
                        (same & unchanged).sum(), unchanged.sum()]).long().cpu()


# Level types for per-type figures (issue 24: the tokenizer fails differently on dark, textured and bright levels),
# from each clip's first frame: luminance y in [0, 1]. Thresholds read off 128 held-out CoinRun clips by eye (the
# space levels are the dark ones; the tiled walls and painted backgrounds the textured ones).
DARK_LUMINANCE, DARK_SHARE, TEXTURE_GRADIENT = 0.12, 0.25, 0.055
LEVEL_TYPES = ("dark", "textured", "bright")


def level_types(video: torch.Tensor) -> list[str]:
    """video (b, t, c, H, W) in [-1, 1] -> each clip's level type from its first frame: "dark" when at least
    DARK_SHARE of its pixels have luminance below DARK_LUMINANCE, else "textured" when the mean absolute difference
    between neighbouring pixels' luminance is at least TEXTURE_GRADIENT, else "bright"."""
    x = to_unit(video[:, 0])  # (b, c, H, W)
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2] if x.shape[1] == 3 else x.mean(1)  # (b, H, W)
    dark = (y < DARK_LUMINANCE).float().mean((1, 2)) >= DARK_SHARE
    grad = (y[:, :, 1:] - y[:, :, :-1]).abs().mean((1, 2)) + (y[:, 1:] - y[:, :-1]).abs().mean((1, 2))
    return ["dark" if d else "textured" if g >= TEXTURE_GRADIENT else "bright" for d, g in zip(dark.tolist(), grad.tolist())]
