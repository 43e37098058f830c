"""Dynamics model: a MaskGIT ST-transformer over video tokens, conditioned on latent actions (Genie §2.3).

Given the token ids of frames z_0..z_{t-1} (some replaced by MASK) and the actions between them,
the model predicts logits for every token of every frame. Temporal attention is causal, so the
logits of frame i depend only on frames <= i and on the actions that led to them: a_{i-1} and
earlier. Training (teacher forcing) masks tokens at a per-sample rate ~ U(0.5, 1) and scores the
masked positions with cross-entropy; sampling fills a fully masked frame t+1 with the MaskGIT loop
(`dynamics.maskgit.maskgit_decode`) given the clean frames <= t and the action a_t.

Action alignment (architecture §4): `actions[:, i]` is the action taken between frames i and i+1. It
conditions frame i+1, the frame it leads to; frame 0 gets a learned "no action" embedding.

With `prev_token_input` every position of frame i also gets the embedding of the clean token at the same
position of frame i-1 (frame 0 of a window: a learned "no previous frame" row, which MASK shares), so
"keep the previous token" is one embedding → logit map away from the start instead of something
temporal attention must learn (most of a CoinRun frame does not change between steps). It reads only
frame i-1 for frame i, so causality holds. With `copy_gate` as well, a scalar gate per position (a linear
map of the transformer's output, bias log(v - 1) at init) is added to the logit of that previous token:
the untrained model already predicts "unchanged" (p = 1/2 on the previous token), so the one-step
next-frame accuracy starts at copy-last's and training spends its steps on what changes.

Shape legend: b batch, t frames (the new frames when a cache is used), P cached past frames,
h w token grid, n flattened tokens (h*w), d width, v codebook size (the MASK id is v),
a latent-action vocabulary.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from dynamics.config import DynamicsConfig
from genie.core.frames import previous_frames
from genie.nn import KVCache, STTransformer


class DynamicsModel(nn.Module):
    """MaskGIT ST-transformer over clips of up to `config.num_frames` frames of (h, w) tokens."""

    def __init__(self, config: DynamicsConfig) -> None:
        super().__init__()
        self.config = config
        d, n = config.width, config.tokens_per_frame

        # vocab_size + 1 entries: the last one is MASK.
        self.token_embed = nn.Embedding(config.vocab_size + 1, d)
        # The previous frame's token at each position; row vocab_size (= MASK) means "none / unknown".
        self.prev_embed = nn.Embedding(config.vocab_size + 1, d) if config.prev_token_input else None
        self.action_embed = nn.Embedding(config.num_actions, d)
        # Frame 0 has no incoming action. A separate parameter rather than an extra embedding row,
        # so an out-of-range action id fails loudly instead of silently meaning "no action".
        self.no_action = nn.Parameter(torch.zeros(d))
        # "Action unknown" for any transition (action dropout in training, the unconditional half of
        # classifier-free guidance when sampling); only with config.null_action, so older exports load.
        self.null_action = nn.Parameter(torch.zeros(d)) if config.null_action else None
        # "token" conditioning prepends one action slot to every frame's n tokens.
        self.num_slots = n + 1 if config.action_conditioning == "token" else n
        self.transformer = STTransformer(
            d,
            config.depth,
            config.num_heads,
            num_tokens=self.num_slots,
            num_frames=config.num_frames,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            causal=True,
        )
        self.head = nn.Linear(d, config.vocab_size)
        self.copy_gate = nn.Linear(d, 1) if config.copy_gate else None
        self._init_weights()

    def _init_weights(self) -> None:
        # The STTransformer initialises itself (GPT-2 scheme, genie.nn.st_block). Embeddings and the
        # head follow the same N(0, 0.02). The action embeddings are deliberately not zero-init:
        # the action then moves the logits of the frame it leads to from the first step.
        nn.init.normal_(self.token_embed.weight, std=0.02)
        if self.prev_embed is not None:
            nn.init.normal_(self.prev_embed.weight, std=0.02)
        nn.init.normal_(self.action_embed.weight, std=0.02)
        nn.init.normal_(self.no_action, std=0.02)
        if self.null_action is not None:
            nn.init.normal_(self.null_action, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        if self.copy_gate is not None:
            # Zero weight, bias log(v - 1): with the head's logits ~0 at init the previous token gets
            # probability 1/2, the rest share the other half.
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.constant_(self.copy_gate.bias, math.log(max(self.config.vocab_size - 1, 1)))

    # Options that only add modules: `genie train --init_from` starts a model with them from an export without them
    ADDITIVE_OPTIONS = ("prev_token_input", "copy_gate", "null_action")

    def load_grown(self, state: dict[str, Tensor]) -> list[str]:
        """Load the weights of a model that lacks some of ADDITIVE_OPTIONS; returns the names left as initialised.
        The previous-token embedding starts at zero, so each position's input is the loaded model's; the copy
        gate keeps its bias (the previous token's logit + log(v - 1)), so fine-tuning starts near copy-last."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        added = ("prev_embed.", "copy_gate.", "null_action")
        if unexpected or any(not k.startswith(added) for k in missing):
            raise ValueError(f"not the same model less added options: missing {missing}, unexpected {unexpected}")
        if self.prev_embed is not None and "prev_embed.weight" in missing:
            nn.init.zeros_(self.prev_embed.weight)
        return list(missing)

    @property
    def mask_id(self) -> int:
        """Token id of MASK (= vocab_size)."""
        return self.config.vocab_size

    # ---- checks -------------------------------------------------------------------------------

    def _check_inputs(self, tokens: Tensor, actions: Tensor | None, num_past: int) -> None:
        cfg = self.config
        h, w = cfg.grid
        if tokens.ndim != 4 or tuple(tokens.shape[2:]) != (h, w):
            raise ValueError(f"tokens must be (b, t, h, w) with (h, w) = ({h}, {w}), got {tuple(tokens.shape)}")
        if tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        b, t = tokens.shape[:2]
        if not 1 <= num_past + t <= cfg.num_frames:
            raise ValueError(
                f"cached ({num_past}) + new ({t}) frames must be in [1, {cfg.num_frames}], got {num_past + t}"
            )
        expected = (b, num_past + t - 1)
        if actions is None:
            if expected[1] != 0:
                raise ValueError(f"actions must be (b, P + t - 1) = {expected}, got None")
            return
        if tuple(actions.shape) != expected:
            raise ValueError(
                f"actions must be (b, P + t - 1) = {expected} (every action so far, cached frames "
                f"included), got {tuple(actions.shape)}"
            )
        if actions.is_floating_point():
            raise ValueError(f"actions must be an integer tensor, got {actions.dtype}")

    # ---- model --------------------------------------------------------------------------------

    def _incoming_actions(self, actions: Tensor | None, b: int, t: int, num_past: int,
                          null_actions: Tensor | None = None) -> Tensor:
        """The embedding of the action leading into each of the t new frames: (b, t, d)."""
        d = self.config.width
        # New frame i sits at absolute index P + i and is led to by actions[:, P + i - 1].
        first = max(num_past - 1, 0)
        emb = self.action_embed(actions[:, first:].long()) if actions is not None else None  # (b, t or t-1, d)
        if null_actions is not None and emb is not None:
            emb = torch.where(null_actions[:, first:, None], self.null_action.to(emb.dtype), emb)
        if num_past == 0:
            start = repeat(self.no_action, "d -> b 1 d", b=b)
            emb = start if emb is None else torch.cat([start, emb], dim=1)
        assert emb.shape == (b, t, d)
        return emb

    def forward(
        self,
        tokens: Tensor,
        actions: Tensor | None,
        cache: KVCache | None = None,
        return_cache: bool = False,
        prev_tokens: Tensor | None = None,
        where: Tensor | None = None,
        null_actions: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, KVCache]:
        """Logits for every token of the given frames (or of the positions `where` selects).

        tokens: (b, t, h, w) int64 in [0, v], v meaning MASK.
        actions: (b, P + t - 1) int64 in [0, a): every action of the clip so far, where P is the
            number of frames in `cache` (0 without one). actions[:, i] leads from frame i to i+1
            and conditions frame i+1. None is accepted when P + t == 1.
        cache: temporal keys/values of P earlier frames from a call with `return_cache=True`;
            `tokens` then holds only the new frames P..P+t-1. The cache is not modified.
        prev_tokens: (b, t, h, w) the clean tokens of the frame before each of the t frames (MASK: none), read
            only with `prev_token_input`. Default: "none" for the first frame of the window and `tokens[:, i-1]`
            for frame i, which is right when the earlier frames are clean (sampling, evaluation); training,
            whose inputs are masked, passes the clean tokens, and so must a call with a cache (for its first
            new frame the previous one is cached).
        where: (b, t, h, w) bool: compute the logits of these positions only, as (m, v) rows in the order of
            `logits[where]` (the same values); training scores the masked positions alone, and the output head
            and its (b, t, n, v) tensor are the largest part of a step after the transformer.
        null_actions: (b, P + t - 1) bool, like `actions`: where True the action is replaced by the learned null
            action ("unknown": action dropout, the unconditional half of classifier-free guidance). Needs
            `config.null_action`. Only the entries that condition the new frames matter (the cache holds the rest).
        Returns logits (b, t, h, w, v) ((m, v) with `where`), or (logits, cache of P + t frames) with `return_cache`.
        """
        num_past = 0 if cache is None else cache.num_frames
        self._check_inputs(tokens, actions, num_past)
        b, t = tokens.shape[:2]
        if null_actions is not None:
            if self.null_action is None:
                raise ValueError("null_actions needs a model with config.null_action (this one has no null action)")
            if actions is None or null_actions.shape != actions.shape or null_actions.dtype != torch.bool:
                raise ValueError(f"null_actions must be a bool tensor shaped like actions "
                                 f"{None if actions is None else tuple(actions.shape)}, got {tuple(null_actions.shape)}")

        x = self.token_embed(rearrange(tokens.long(), "b t h w -> b t (h w)"))  # (b, t, n, d)
        if self.prev_embed is not None:
            if prev_tokens is None:
                if num_past:
                    raise ValueError("prev_tokens (the tokens of the frame before each new frame) are needed with a "
                                     "cache when the model has prev_token_input")
                prev_tokens = previous_frames(tokens, self.mask_id)
            if prev_tokens.shape != tokens.shape:
                raise ValueError(f"prev_tokens must be {tuple(tokens.shape)} like tokens, got {tuple(prev_tokens.shape)}")
            x = x + self.prev_embed(rearrange(prev_tokens.long(), "b t h w -> b t (h w)"))
        act = self._incoming_actions(actions, b, t, num_past, null_actions)  # (b, t, d)
        if self.config.action_conditioning == "additive":
            x = x + act[:, :, None, :]  # Genie §2.3: added to every token of the frame
        else:
            x = torch.cat([act[:, :, None, :], x], dim=2)  # (b, t, n + 1, d)

        out = self.transformer(x, cache=cache, return_cache=return_cache)
        x, new_cache = out if return_cache else (out, None)
        if self.config.action_conditioning == "token":
            x = x[:, :, 1:]  # drop the action slot
        prev = rearrange(prev_tokens.long(), "b t h w -> b t (h w)") if self.copy_gate is not None else None  # (b, t, n)
        if where is not None:
            if where.shape != tokens.shape or where.dtype != torch.bool:
                raise ValueError(f"where must be a bool tensor shaped like tokens {tuple(tokens.shape)}, "
                                 f"got {where.dtype} {tuple(where.shape)}")
            sel = rearrange(where, "b t h w -> b t (h w)")
            x = x[sel]  # (m, d)
            prev = prev[sel] if prev is not None else None  # (m,)
        logits = self.head(x)  # (b, t, n, v), or (m, v)
        if self.copy_gate is not None:
            known = prev < self.mask_id  # frame 0 of a window has no previous token: no bonus
            gate = torch.where(known, self.copy_gate(x).squeeze(-1), 0.0).to(logits.dtype)  # (b, t, n) or (m,)
            logits = logits.scatter_add(-1, prev.clamp(max=self.mask_id - 1)[..., None], gate[..., None])
        if where is None:
            logits = rearrange(logits, "b t (h w) v -> b t h w v", h=self.config.grid[0])
        return (logits, new_cache) if return_cache else logits
