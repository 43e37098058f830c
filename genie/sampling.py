"""Frame-by-frame rollout of the dynamics model (Genie §2.3, Fig. 6), pure: model, inputs, generator.

Each new frame starts fully masked and is filled by the MaskGIT loop (`dynamics.maskgit`), the
dynamics model conditioned on the clean past frames and the chosen action a_t. Past frames never
change, so with `use_cache` their temporal keys/values are computed once (KV cache) and each
decoding step costs one frame of compute. The dynamics model has absolute temporal positions over
`num_frames`; past that, a sliding window keeps the last `num_frames - 1` frames as context and the
cache is rebuilt from them (one forward of the window per new frame, or per `window_hop` frames).
`Rollout` is the open-ended form (one `step` per frame, `truncate` to undo) that `WorldModel.step` keeps
between calls; `rollout_tokens` runs one over a list of actions. `SamplingSettings` is how they sample (MaskGIT
steps, temperature, top-k, classifier-free guidance, unmasking rule, context, window hop), checked in one place for
every caller.

Shape legend: b batch, t frames, h w token grid, n tokens per frame (h*w), v vocabulary.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from dynamics.maskgit import UNMASK_RULES, maskgit_decode
from genie.core.errors import GenieInputError

MAX_STEPS = 64  # MaskGIT steps per frame: Genie samples with 25; past 64 only the wait grows
MAX_TEMPERATURE = 10.0  # softmax(logits / 10) is already close to uniform for a trained model
MAX_GUIDANCE = 10.0  # classifier-free guidance weight; past a few the guided logits only sharpen toward one token
AUTO_WINDOW_HOP = 4  # window_hop=None: the cache is rebuilt on one new frame in 4 (genie play's default)


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingSettings:
    """How a rollout samples each new frame: the one place these settings are checked (on construction and
    on every `dataclasses.replace`), for `genie generate`, `genie play`, the world model and the rollout.

    steps: MaskGIT steps per frame, 1..MAX_STEPS. temperature: 0 (greedy)..MAX_TEMPERATURE.
    top_k: sample among the k most likely tokens only, k >= 1 (None: all).
    guidance: classifier-free guidance weight w, 0..MAX_GUIDANCE: logits = cond + w * (cond - uncond), uncond being
        the prediction under the dynamics model's learned null action (`DynamicsConfig.null_action`); 0: off.
    unmask: which tokens a MaskGIT step keeps (`dynamics.maskgit.UNMASK_RULES`).
    context: past frames a new frame sees at most, 1..the dynamics model's num_frames - 1 (None: all of them).
    window_hop: once the context is full, frames it drops at once, 1..context (see `Rollout`); None: AUTO_WINDOW_HOP,
        fewer when the context is shorter.
    max_context: the dynamics model's `context_frames`, set by `for_dynamics`: the bounds of context and window_hop
        are checked once it is known (before, only that they are whole numbers of frames).
    Errors are GenieInputError (one line and exit 2 from the `genie` command).
    """

    steps: int = 25
    temperature: float = 1.0
    unmask: str = "confidence"
    context: int | None = None
    window_hop: int | None = 1
    max_context: int | None = None
    top_k: int | None = None
    guidance: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise GenieInputError(f"steps {self.steps!r}: must be an integer 1..{MAX_STEPS}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 <= t <= MAX_TEMPERATURE:  # refuses nan too
            raise GenieInputError(f"temperature {t!r}: must be a number 0..{MAX_TEMPERATURE:g} (0 = greedy)")
        if self.unmask not in UNMASK_RULES:
            raise GenieInputError(f"unmask {self.unmask!r}: must be one of {', '.join(UNMASK_RULES)}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise GenieInputError(f"top-k {self.top_k!r}: must be a whole number >= 1 (or none: every token)")
        w = self.guidance
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not 0 <= w <= MAX_GUIDANCE:
            raise GenieInputError(f"guidance {w!r}: must be a number 0..{MAX_GUIDANCE:g} (0 = off)")
        m = self.max_context
        if m is not None and (not _is_int(m) or m < 1):
            raise ValueError(f"max_context must be the dynamics model's context_frames (>= 1), got {m!r}")
        c = self.context
        if c is not None and (not _is_int(c) or not 1 <= c <= (m or c)):
            raise GenieInputError(f"context {c!r}: " + (f"must be 1..{m} (the dynamics model's {m + 1}-frame window "
                                                         "less the frame being generated)" if m else
                                                         "must be a whole number of frames >= 1"))
        hop, full = self.window_hop, self.effective_context
        if hop is not None and (not _is_int(hop) or not 1 <= hop <= (full or hop)):
            raise GenieInputError(f"window hop {hop!r}: " + (f"must be 1..{full} (the context)" if full else
                                                            "must be a whole number of frames >= 1"))
        for name in ("steps", "context", "window_hop", "max_context", "top_k"):  # numpy integers in, plain ones stored
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "guidance", float(w))

    @classmethod
    def from_args(cls, settings: SamplingSettings | None = None, **fields) -> SamplingSettings:
        """`settings` (default: SamplingSettings()) with the fields given as separate keywords, e.g. the
        `steps=`, `temperature=` of a caller's signature; None means not given."""
        return (settings or cls()).override(**fields)

    def override(self, **fields) -> SamplingSettings:
        """These settings with the fields that are not None changed (and checked again)."""
        given = {k: v for k, v in fields.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def for_dynamics(self, dynamics) -> SamplingSettings:
        """These settings checked against a dynamics model: its window (`config.context_frames`), and guidance
        needs its null action."""
        if self.guidance and not getattr(dynamics.config, "null_action", False):
            raise GenieInputError(f"guidance {self.guidance:g}: this dynamics model has no null action to guide "
                                  "against (train it with model.config.null_action: true and action_dropout > 0)")
        m = dynamics.config.context_frames
        return self if self.max_context == m else dataclasses.replace(self, max_context=m)

    @property
    def effective_context(self) -> int | None:
        """The context in frames (None until the model's window is known and no context was given)."""
        return self.max_context if self.context is None else self.context

    @property
    def effective_hop(self) -> int | None:
        """The window hop in frames (None: AUTO_WINDOW_HOP capped by the context, once that is known)."""
        if self.window_hop is not None:
            return self.window_hop
        full = self.effective_context
        return None if full is None else min(AUTO_WINDOW_HOP, full)


class Rollout:
    """An open-ended rollout, one frame per `step`: what `rollout_tokens` and `WorldModel.step` share.

    Holds the frames so far, the actions between them and the dynamics model's KV cache over the current
    context, so an interactive session pays one frame of compute per decoding step and per new frame, as
    a batch rollout does, and `truncate` (undo) keeps the cache whenever it still holds only kept frames.
    The same prompt, actions, settings and generator give the same frames whether they are generated in one
    `rollout_tokens` call or one `step` at a time.

    prompt: (b, t0, h, w) token ids; prompt_actions: (b, t0-1), required when t0 > 1.
    settings: how frames are sampled (`SamplingSettings`); context, window_hop: its fields of the same names,
        given separately. The context (default and maximum: the model's num_frames - 1) is how many past frames
        a new frame sees at most. The window hop is how many frames a full context drops at once. 1 (Genie's
        sliding window) keeps the last `context` frames for every new frame and so rebuilds the cache each frame
        (absolute temporal positions make a ring buffer impossible); k > 1 lets the context shrink to
        context + 1 - k frames, then grow back one frame at a time on the cache, so the cache is rebuilt once
        every k frames. Both are fixed for the rollout; `step` may change steps, temperature and unmask.
    """

    def __init__(self, dynamics, prompt: Tensor, prompt_actions: Tensor | None = None, *, context: int | None = None,
                 window_hop: int | None = None, use_cache: bool = True, settings: SamplingSettings | None = None):
        b, t0, h, w = prompt.shape
        if t0 < 1:
            raise ValueError("a rollout needs a prompt of at least one frame")
        if t0 > 1 and (prompt_actions is None or prompt_actions.shape != (b, t0 - 1)):
            raise ValueError(f"a prompt of {t0} frames needs prompt_actions of shape ({b}, {t0 - 1})")
        self.settings = SamplingSettings.from_args(settings, context=context, window_hop=window_hop).for_dynamics(dynamics)
        self.context, self.window_hop = self.settings.effective_context, self.settings.effective_hop
        self.dynamics, self.use_cache = dynamics, use_cache
        self.shape = (b, h, w)
        self.frames = [prompt[:, i] for i in range(t0)]  # (b, h, w) each
        self.actions = [prompt_actions[:, i] for i in range(t0 - 1)]  # (b,) each; actions[i] leads frame i -> i+1
        self.num_prompt = t0
        self.start = 0  # first context frame of the last generated frame (the window's position)
        self.starts: list[int] = []  # the start used for each generated frame, for truncate
        self.cache, self.cached_from, self.cached_upto = None, 0, 0  # the cache holds frames[cached_from:cached_upto]

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def tokens(self) -> Tensor:
        """(b, t, h, w) every frame so far, the prompt first."""
        return torch.stack(self.frames, dim=1)

    @property
    def action_ids(self) -> Tensor:
        """(b, t-1) the actions between the frames so far."""
        b = self.shape[0]
        return torch.stack(self.actions, dim=1) if self.actions else self.frames[0].new_zeros((b, 0))

    def _context_start(self, t_new: int) -> int:
        """First context frame for new frame t_new: the window slides once the context would pass `context`."""
        window = self.context + 1
        return t_new - (window - self.window_hop) if t_new - self.start > window - 1 else self.start

    @torch.no_grad()
    def step(self, action: Tensor, *, steps: int | None = None, temperature: float | None = None,
             generator: torch.Generator | None = None, unmask: str | None = None,
             settings: SamplingSettings | None = None) -> Tensor:
        """Generate the next frame for `action` (b,) int64: returns its tokens (b, h, w) and appends it.

        settings: this frame's (default: the rollout's); steps, temperature, unmask: its fields, given separately.
        Its context and window hop must be the rollout's. With guidance, each MaskGIT step also runs the model with
        `action` replaced by the null action (the past frames' actions and cache are shared)."""
        s = (self.settings if settings is None else settings.for_dynamics(self.dynamics)).override(
            steps=steps, temperature=temperature, unmask=unmask)
        if (s.effective_context, s.effective_hop) != (self.context, self.window_hop):
            raise ValueError(f"a rollout keeps its context {self.context} and window hop {self.window_hop}; "
                             f"got {s.effective_context} and {s.effective_hop}")
        dyn, (b, h, w) = self.dynamics, self.shape
        n, t_new = h * w, len(self.frames)
        start = self._context_start(t_new)
        ctx_actions = torch.stack([*self.actions[start:t_new], action], dim=1)  # (b, t_new - start): to frames start+1..t_new
        if self.use_cache:
            if self.cache is None or start != self.cached_from:  # first frame, or the window slid: rebuild
                context = torch.stack(self.frames[start:t_new], dim=1)
                _, self.cache = dyn(context, ctx_actions[:, : context.shape[1] - 1], return_cache=True)
                self.cached_from, self.cached_upto = start, t_new
            elif self.cached_upto < t_new:  # frames generated since the last call: commit them (their compute only)
                new = torch.stack(self.frames[self.cached_upto:t_new], dim=1)
                prev = torch.stack(self.frames[self.cached_upto - 1:t_new - 1], dim=1)
                _, self.cache = dyn(new, ctx_actions[:, :-1], cache=self.cache, return_cache=True, prev_tokens=prev)
                self.cached_upto = t_new
            cache, prev = self.cache, self.frames[t_new - 1][:, None]  # the frame before the new one

            def logits_fn(x: Tensor, null: Tensor | None = None) -> Tensor:
                out = dyn(x.view(b, 1, h, w), ctx_actions, cache=cache, prev_tokens=prev, null_actions=null)
                return rearrange(out, "b 1 h w v -> b (h w) v")
        else:
            context = torch.stack(self.frames[start:t_new], dim=1)

            def logits_fn(x: Tensor, null: Tensor | None = None) -> Tensor:
                out = dyn(torch.cat([context, x.view(b, 1, h, w)], dim=1), ctx_actions, null_actions=null)
                return rearrange(out[:, -1], "b h w v -> b (h w) v")

        uncond_fn = None
        if s.guidance:
            null = torch.zeros_like(ctx_actions, dtype=torch.bool)
            null[:, -1] = True  # the new frame's action only: the past is the same in both halves

            def uncond_fn(x: Tensor) -> Tensor:
                return logits_fn(x, null)

        new = maskgit_decode(logits_fn, n, mask_id=dyn.mask_id, batch_size=b, steps=s.steps, temperature=s.temperature,
                             unmask=s.unmask, generator=generator, device=self.frames[0].device, top_k=s.top_k,
                             guidance=s.guidance, uncond_logits_fn=uncond_fn).view(b, h, w)
        self.frames.append(new)
        self.actions.append(action)
        self.starts.append(start)
        self.start = start
        return new

    def truncate(self, num_frames: int) -> None:
        """Keep the first `num_frames` frames (at least the prompt): undo. The cache survives when it holds
        only kept frames, which is the case after undoing the last frame."""
        if not self.num_prompt <= num_frames <= len(self.frames):
            raise ValueError(f"can keep {self.num_prompt}..{len(self.frames)} frames, got {num_frames}")
        generated = num_frames - self.num_prompt
        del self.frames[num_frames:], self.actions[num_frames - 1:], self.starts[generated:]
        self.start = self.starts[-1] if self.starts else 0
        if self.cached_upto > num_frames:
            self.cache, self.cached_from, self.cached_upto = None, 0, 0


@torch.no_grad()
def rollout_tokens(dynamics, prompt: Tensor, actions: Tensor, *, steps: int | None = None,
                   temperature: float | None = None, generator: torch.Generator | None = None, use_cache: bool = True,
                   unmask: str | None = None, prompt_actions: Tensor | None = None, window_hop: int | None = None,
                   context: int | None = None, settings: SamplingSettings | None = None) -> Tensor:
    """Generate one frame of tokens per action.

    prompt: (b, t0, h, w) token ids of the prompt frames. prompt_actions: (b, t0-1) actions between
        prompt frames (required when t0 > 1). actions: (b, T) actions a_{t0-1}..a_{t0+T-2}: the i-th
        leads from the last frame so far to new frame i.
    settings: how frames are sampled (default: SamplingSettings(), Genie's 25 steps at temperature 1 with the
        sliding window); steps, temperature, unmask, context, window_hop: its fields, given separately.
    Returns (b, t0 + T, h, w) tokens: the prompt followed by the T generated frames.
    """
    settings = SamplingSettings.from_args(settings, steps=steps, temperature=temperature, unmask=unmask,
                                          context=context, window_hop=window_hop)
    roll = Rollout(dynamics, prompt, prompt_actions if prompt.shape[1] > 1 else None, use_cache=use_cache,
                   settings=settings)
    for i in range(actions.shape[1]):
        roll.step(actions[:, i], generator=generator)
    return roll.tokens


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
