"""Frame-by-frame rollout of the dynamics model (Genie §2.3, Fig. 6), pure: model, inputs, generator.

Each new frame starts fully masked and is filled by the MaskGIT loop (`dynamics.maskgit`), the
dynamics model conditioned on the clean past frames and the chosen action a_t. Past frames never
change, so with `use_cache` their temporal keys/values are computed once (KV cache) and each
decoding step costs one frame of compute. The dynamics model has absolute temporal positions over
`num_frames`; past that, a sliding window keeps the last `num_frames - 1` frames as context and the
cache is rebuilt from them (one forward of the window per new frame).

Shape legend: b batch, t frames, h w token grid, n tokens per frame (h*w), v vocabulary.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from dynamics.maskgit import maskgit_decode


@torch.no_grad()
def rollout_tokens(dynamics, prompt: Tensor, actions: Tensor, *, steps: int = 25, temperature: float = 1.0,
                   generator: torch.Generator | None = None, use_cache: bool = True, unmask: str = "confidence",
                   prompt_actions: Tensor | None = None, window_hop: int = 1) -> Tensor:
    """Generate one frame of tokens per action.

    prompt: (b, t0, h, w) token ids of the prompt frames. prompt_actions: (b, t0-1) actions between
        prompt frames (required when t0 > 1). actions: (b, T) actions a_{t0-1}..a_{t0+T-2}: the i-th
        leads from the last frame so far to new frame i.
    window_hop: past the model's `num_frames`, how many frames the context window drops at once. 1 (Genie's
        sliding window) keeps the last num_frames - 1 frames for every new frame and so rebuilds the cache
        each frame; k > 1 lets the context shrink to num_frames - k frames, then grow back one frame at a
        time on the cache, so the cache is rebuilt once every k frames.
    Returns (b, t0 + T, h, w) tokens: the prompt followed by the T generated frames.
    """
    b, t0, h, w = prompt.shape
    n, T = h * w, actions.shape[1]
    if t0 > 1 and (prompt_actions is None or prompt_actions.shape != (b, t0 - 1)):
        raise ValueError(f"a prompt of {t0} frames needs prompt_actions of shape ({b}, {t0 - 1})")
    past_actions = prompt_actions if t0 > 1 else actions.new_zeros((b, 0))
    frames = [prompt[:, i] for i in range(t0)]  # list of (b, h, w)
    all_actions = torch.cat([past_actions, actions], dim=1)  # (b, t0 - 1 + T)
    window = dynamics.config.num_frames
    if not 1 <= window_hop <= window - 1:
        raise ValueError(f"window_hop must be in [1, {window - 1}], got {window_hop}")
    mask_id = dynamics.mask_id

    def context_start(t_new: int, start: int) -> int:  # first context frame for new frame t_new
        return t_new - (window - window_hop) if t_new - start > window - 1 else start

    cache, cached_from, start = None, 0, 0  # the cache holds frames[cached_from:]
    for i in range(T):
        t_new = t0 + i  # index of the frame being generated
        start = context_start(t_new, start)  # context frames[start:t_new]
        ctx_actions = all_actions[:, start:t_new]  # actions leading to frames start+1..t_new
        if use_cache:
            if cache is None or start != cached_from:  # first frame, or the window slid: rebuild
                context = torch.stack(frames[start:t_new], dim=1)
                _, cache = dynamics(context, ctx_actions[:, : context.shape[1] - 1], return_cache=True)
                cached_from = start

            def logits_fn(x: Tensor) -> Tensor:
                out = dynamics(x.view(b, 1, h, w), ctx_actions, cache=cache)
                return rearrange(out, "b 1 h w v -> b (h w) v")
        else:
            context = torch.stack(frames[start:t_new], dim=1)

            def logits_fn(x: Tensor) -> Tensor:
                out = dynamics(torch.cat([context, x.view(b, 1, h, w)], dim=1), ctx_actions)
                return rearrange(out[:, -1], "b h w v -> b (h w) v")

        new = maskgit_decode(logits_fn, n, mask_id=mask_id, batch_size=b, steps=steps, temperature=temperature,
                             unmask=unmask, generator=generator, device=prompt.device).view(b, h, w)
        frames.append(new)
        next_start = context_start(t_new + 1, start)
        if use_cache and i + 1 < T and next_start == cached_from:
            # the window did not slide: commit the finished frame to the cache (one frame of compute)
            _, cache = dynamics(new[:, None], ctx_actions, cache=cache, return_cache=True)
    return torch.stack(frames, dim=1)


@torch.no_grad()
def decode_tokens(tokenizer, tokens: Tensor) -> Tensor:
    """Token ids (b, t, h, w) → video (b, t, c, H, W), in windows of the tokenizer's num_frames.

    The tokenizer decoder is causal, so frames past its context are decoded from the last
    `num_frames` frames (each output frame sees up to num_frames - 1 earlier frames)."""
    t, window = tokens.shape[1], tokenizer.config.num_frames
    if t <= window:
        return tokenizer.decode(tokens)
    out = [tokenizer.decode(tokens[:, :window])]
    for i in range(window, t):
        out.append(tokenizer.decode(tokens[:, i - window + 1:i + 1])[:, -1:])
    return torch.cat(out, dim=1)
