"""MaskGIT pieces for the dynamics stage (Chang et al. 2022; Genie §2.3): the mask schedule, the
per-sample training masks, and the per-frame iterative decoding loop.

Everything here is a pure function of its arguments: a logits callable, a schedule and a
`torch.Generator` — no model, trainer or global state (STYLE §5). With the same generator state the
results are identical.

How the dynamics stage uses them (and why the two halves agree):
- Training: `training_mask(tokens.shape, generator=g, keep_first_frames=1)` masks the tokens of
  frames 1..T-1 at a rate drawn per sample from U(0.5, 1) (architecture §7.7) and keeps frame 0 clean;
  the loss is cross-entropy over the masked positions. Frame 0 is always a clean prompt at
  sampling time and is never generated, so it is never a target.
- Sampling: frame t+1 starts fully masked and `maskgit_decode` fills it in `steps` rounds, the
  model seeing the clean frames <= t and the action a_t.

Shape legend: b batch, n tokens being decoded (one frame: h*w), v codebook size, K steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

UNMASK_RULES = ("confidence", "random")


# ---- schedule ---------------------------------------------------------------------------------


def cosine_schedule(r: float | Tensor) -> float | Tensor:
    """Mask ratio γ(r) = cos(π r / 2) for progress r in [0, 1]: 1 at r=0, 0 at r=1 (MaskGIT §3.2)."""
    if isinstance(r, Tensor):
        return torch.cos(math.pi / 2 * r)
    return math.cos(math.pi / 2 * r)


def masked_counts(
    num_masked: int | Tensor,
    steps: int,
    schedule: Callable[[float], float] = cosine_schedule,
) -> Tensor:
    """How many tokens are still masked after each of `steps` decoding steps.

    num_masked: N, the number of masked tokens at the start, an int or a (b,) integer tensor.
    Returns int64 (K,) for an int, (b, K) for a tensor. Entry k is
        m_k = floor(N * schedule((k + 1) / K)), clamped so that
    - m_k <= m_{k-1} - 1 (with m_{-1} = N): at least one token is unmasked every step,
    - m_k >= K - 1 - k: enough tokens remain for every later step to unmask one,
    - m_{K-1} = 0: everything is filled at the end.
    Both bounds hold when N >= K; with N < K the first wins (one token per step until done, then
    steps that unmask nothing).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    scalar = not isinstance(num_masked, Tensor)
    n = torch.as_tensor(num_masked, dtype=torch.long).reshape(-1)
    if (n < 0).any():
        raise ValueError(f"num_masked must be >= 0, got {num_masked}")
    counts = []
    previous = n
    for k in range(steps):
        if k == steps - 1:
            m = torch.zeros_like(n)
        else:
            ratio = float(schedule((k + 1) / steps))
            # The small epsilon keeps floor() from losing a token to rounding (e.g. N * 0.5).
            m = torch.floor(n.double() * ratio + 1e-9).long()
            m = torch.maximum(m, torch.full_like(n, steps - 1 - k))
            m = torch.minimum(m, previous - 1).clamp(min=0)
        counts.append(m)
        previous = m
    out = torch.stack(counts, dim=-1)  # (b, K)
    return out[0] if scalar else out


# ---- training masks ---------------------------------------------------------------------------


def training_mask(
    shape: Sequence[int],
    rate_low: float = 0.5,
    rate_high: float = 1.0,
    generator: torch.Generator | None = None,
    keep_first_frames: int = 0,
    device: torch.device | str | None = None,
    clean_prefix_prob: float = 0.0,
) -> Tensor:
    """Boolean mask (True = replace by MASK) with one mask rate per sample (architecture §7.7).

    shape: (b, ...), e.g. (b, t, h, w) or (b, n). Each sample draws r ~ U(rate_low, rate_high)
    (Genie §2.3: U(0.5, 1)) and masks each of its tokens with probability r.
    keep_first_frames: for (b, t, ...) shapes, frames 0..keep_first_frames-1 are never masked
    and the rate applies to the remaining frames (the dynamics stage uses 1: frame 0 is context).
    clean_prefix_prob: for (b, t, ...) shapes, each sample with this probability also leaves frames
    0..k-1 clean, k ~ U{max(keep_first_frames, 1), …, t-1}: frame k is then predicted from a clean past,
    as at sampling time (Genie's scheme, 0, masks every frame at the sample's rate). No extra random
    draws are made when it is 0, so masks for a given generator state are unchanged.
    Returns a bool tensor of `shape`; draws come from `generator` (on `device`).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (b, ...) with at least 2 dims, got {shape}")
    if not 0.0 <= rate_low <= rate_high <= 1.0:
        raise ValueError(f"need 0 <= rate_low <= rate_high <= 1, got rate_low={rate_low}, rate_high={rate_high}")
    if keep_first_frames < 0 or (keep_first_frames > 0 and (len(shape) < 3 or keep_first_frames > shape[1])):
        raise ValueError(f"keep_first_frames ({keep_first_frames}) must be in [0, t] for a (b, t, ...) shape, got {shape}")
    if not 0.0 <= clean_prefix_prob <= 1.0:
        raise ValueError(f"clean_prefix_prob must be in [0, 1], got {clean_prefix_prob}")
    if clean_prefix_prob > 0 and (len(shape) < 3 or shape[1] < 2):
        raise ValueError(f"clean_prefix_prob needs a (b, t, ...) shape with t >= 2, got {shape}")
    if generator is not None and device is None:
        device = generator.device

    b = shape[0]
    kept_shape = (b, keep_first_frames, *shape[2:]) if keep_first_frames else None
    maskable_shape = (b, shape[1] - keep_first_frames, *shape[2:]) if keep_first_frames else shape
    m = math.prod(maskable_shape[1:])

    rates = rate_low + (rate_high - rate_low) * torch.rand(b, generator=generator, device=device)  # (b,)
    scores = torch.rand(b, m, generator=generator, device=device)  # (b, m)
    mask = (scores < rates[:, None]).reshape(maskable_shape)
    if kept_shape is not None:
        mask = torch.cat([torch.zeros(kept_shape, dtype=torch.bool, device=mask.device), mask], dim=1)
    if clean_prefix_prob > 0:
        t = shape[1]
        chosen = torch.rand(b, generator=generator, device=device) < clean_prefix_prob
        low = max(keep_first_frames, 1)
        k = low + (torch.rand(b, generator=generator, device=device) * (t - low)).long().clamp_max(t - 1 - low)
        clean = chosen[:, None] & (torch.arange(t, device=mask.device)[None] < k[:, None])  # (b, t)
        mask = mask & ~clean.view(b, t, *([1] * (len(shape) - 2)))
    return mask


# ---- decoding ---------------------------------------------------------------------------------


def _gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return -torch.log(-torch.log(u.clamp(min=1e-20, max=1.0 - 1e-7)))


def maskgit_decode(
    logits_fn: Callable[[Tensor], Tensor],
    num_tokens: int,
    *,
    mask_id: int,
    batch_size: int = 1,
    steps: int = 25,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    unmask: str = "confidence",
    generator: torch.Generator | None = None,
    schedule: Callable[[float], float] = cosine_schedule,
    device: torch.device | str | None = None,
    top_k: int | None = None,
    guidance: float = 0.0,
    uncond_logits_fn: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Fill `batch_size` frames of `num_tokens` tokens, all masked at the start, by MaskGIT iterative
    decoding (Chang et al. 2022, Alg. 1; Genie §2.3).

    logits_fn: current tokens (b, n) int64, MASK = `mask_id` -> logits (b, n, v). Called once
        per step; it must not depend on hidden state that changes between calls. The tokens it is
        given at step k are the loop's state after step k-1 (the tests read the loop through it).
    Each step k of K: sample a token at every masked position from softmax(logits / temperature)
    (temperature 0: argmax); score it — "confidence": log p(token) plus Gumbel noise scaled by
    choice_temperature * (1 - (k+1)/K), annealed to 0 as in MaskGIT; "random": uniform noise,
    a random order — and keep the best-scored ones so that exactly `masked_counts(N, K)[k]` stay
    masked; the rest return to MASK; a token once unmasked never changes. After step K-1 no token is
    masked. Returns tokens (b, n) int64. Draws come from `generator` (its device must match logits').
    top_k: sample (and score) among the k most likely tokens only (None: all of them).
    guidance: classifier-free guidance weight w (Ho & Salimans 2022): the logits become
        cond + w * (cond - uncond), uncond from `uncond_logits_fn` (the same call without the condition);
        0 (the default) is the plain conditional model and never calls it.
    """
    if unmask not in UNMASK_RULES:
        raise ValueError(f"unmask must be one of {UNMASK_RULES}, got {unmask!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if choice_temperature < 0:
        raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    if guidance and uncond_logits_fn is None:
        raise ValueError("guidance > 0 needs uncond_logits_fn (the logits without the condition)")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    tokens = torch.full((batch_size, num_tokens), mask_id, dtype=torch.long, device=device)
    b, n = tokens.shape
    counts = masked_counts(n, steps, schedule).to(tokens.device)  # (K,): every row starts with n masked
    positions = torch.arange(n, device=tokens.device).expand(b, n)

    for k in range(steps):
        masked = tokens == mask_id  # (b, n)
        logits = logits_fn(tokens)  # (b, n, v)
        if logits.ndim != 3 or logits.shape[:2] != (b, n):
            raise ValueError(f"logits_fn must return (b, n, v) = ({b}, {n}, v), got {tuple(logits.shape)}")
        # Sample and score only the masked positions (m of them): known tokens never change, and on a CPU
        # the per-vocabulary work (Gumbel noise, softmax) over every position cost ~10% of a step.
        where = masked.nonzero(as_tuple=True)  # ((m,), (m,))
        lm = logits[where].float()  # (m, v)
        if guidance:
            lm = lm + guidance * (lm - uncond_logits_fn(tokens)[where].float())  # classifier-free guidance
        if top_k is not None and top_k < lm.shape[-1]:
            lm = lm.masked_fill(lm < lm.topk(top_k, dim=-1).values[:, -1:], -math.inf)  # (m, v): k finite per row
        if temperature == 0:
            picked = lm.argmax(dim=-1)
        else:
            # Gumbel-max: argmax(logits / T + g) is a sample of softmax(logits / T).
            picked = (lm / temperature + _gumbel(lm.shape, generator, lm.device)).argmax(dim=-1)  # (m,)
        if unmask == "confidence":
            s = lm.gather(-1, picked[:, None])[:, 0] - torch.logsumexp(lm, dim=-1)  # log p(picked)
            noise_scale = choice_temperature * (1.0 - (k + 1) / steps)
            if noise_scale > 0:
                s = s + noise_scale * _gumbel(s.shape, generator, lm.device)
        else:
            s = torch.rand(picked.shape, generator=generator, device=lm.device)
        # Known tokens rank last, so only masked positions can stay masked (counts never exceed
        # the number currently masked).
        score = torch.full((b, n), math.inf, device=tokens.device)
        score[where] = s
        sampled = tokens.clone()
        sampled[where] = picked
        ranks = torch.empty_like(positions)
        ranks.scatter_(1, score.argsort(dim=1, stable=True), positions)
        stay_masked = ranks < counts[k]  # (b, n)
        tokens = torch.where(masked & ~stay_masked, sampled, tokens)
    return tokens
