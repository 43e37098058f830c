"""Spatio-temporal (ST) transformer, Genie Fig. 4.

Each block attends spatially within a frame (non-causal over its h*w tokens), then temporally across
frames at the same spatial position (causal), then applies one MLP. Memory and compute grow as
t*n^2 + n*t^2 instead of (t*n)^2 for full space-time attention (Genie §2).

Shape legend: b batch, t frames (new frames when a cache is used), P cached past frames,
n tokens per frame (h*w), d width, k heads, e head width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from genie.nn.attention import MLP, Attention, LayerNorm


@dataclass(frozen=True)
class KVCache:
    """Temporal keys/values of past frames, one (keys, values) pair per ST block.

    Each tensor is ((b n), k, P, e). Immutable: `STTransformer.forward(..., return_cache=True)`
    returns a new cache with the new frames appended and leaves the one passed in untouched, so a
    MaskGIT loop can query the same past many times and commit only the final frame.
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    @property
    def num_frames(self) -> int:
        """Number of cached past frames P."""
        return self.keys[0].shape[2] if self.keys else 0


class STBlock(nn.Module):
    """Pre-norm ST block: spatial attention, causal temporal attention, MLP (Genie Fig. 4)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.causal = causal
        self.norm_spatial = LayerNorm(dim)
        self.attn_spatial = Attention(dim, num_heads, dropout)
        self.norm_temporal = LayerNorm(dim)
        self.attn_temporal = Attention(dim, num_heads, dropout)
        self.norm_mlp = LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(
        self, x: Tensor, past_kv: tuple[Tensor, Tensor] | None = None, return_kv: bool = True
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x: (b, t, n, d) -> (b, t, n, d), plus temporal (keys, values) over P+t frames (None without
        `return_kv`: a query of a cache that will not grow, which can then skip building them)."""
        b, t = x.shape[:2]

        h = rearrange(self.norm_spatial(x), "b t n d -> (b t) n d")
        h, _ = self.attn_spatial(h, causal=False, return_kv=False)
        x = x + rearrange(h, "(b t) n d -> b t n d", b=b)

        h = rearrange(self.norm_temporal(x), "b t n d -> (b n) t d")
        h, kv = self.attn_temporal(h, causal=self.causal, past_kv=past_kv, return_kv=return_kv)
        x = x + rearrange(h, "(b n) t d -> b t n d", b=b)

        x = x + self.mlp(self.norm_mlp(x))
        return x, kv


class STTransformer(nn.Module):
    """Stack of ST blocks with learned spatial and temporal position embeddings and a final norm.

    The position embeddings live here, once for the whole stack: spatial ones per h*w position,
    temporal ones per absolute frame index up to `num_frames`. With a cache of P past frames the new
    frames get temporal positions P..P+t-1, so incremental calls equal a full forward.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_tokens: int,
        num_frames: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.num_tokens = num_tokens
        self.num_frames = num_frames
        self.causal = causal
        self.spatial_pos = nn.Parameter(torch.zeros(num_tokens, dim))
        self.temporal_pos = nn.Parameter(torch.zeros(num_frames, dim))
        self.blocks = nn.ModuleList(
            [STBlock(dim, num_heads, mlp_ratio, dropout, causal) for _ in range(depth)]
        )
        self.norm = LayerNorm(dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # nanoGPT/GPT-2 init: N(0, 0.02) everywhere, and the projections that write into the
        # residual stream scaled by 1/sqrt(number of residual branches) (3 per block) so the
        # residual variance does not grow with depth.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(3 * self.depth)
        for block in self.blocks:
            for proj in (block.attn_spatial.proj, block.attn_temporal.proj, block.mlp.fc2):
                nn.init.normal_(proj.weight, std=residual_std)
        nn.init.normal_(self.spatial_pos, std=0.02)
        nn.init.normal_(self.temporal_pos, std=0.02)

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        return_cache: bool = False,
    ) -> Tensor | tuple[Tensor, KVCache]:
        """Run the stack on (b, t, n, d) tokens; returns (b, t, n, d).

        `cache` holds the temporal keys/values of P earlier frames (from a previous call with
        `return_cache=True`); x then contains only the new frames. With `return_cache=True` the
        result is (output, cache of P+t frames).
        """
        if x.ndim != 4 or x.shape[2] != self.num_tokens or x.shape[3] != self.dim:
            raise ValueError(
                f"expected input (b, t, {self.num_tokens}, {self.dim}), got {tuple(x.shape)}"
            )
        num_past = 0 if cache is None else cache.num_frames
        if cache is not None and num_past > 0:
            if not self.causal:
                raise ValueError("a KV cache needs causal temporal attention")
            if len(cache.keys) != self.depth:
                raise ValueError(f"cache has {len(cache.keys)} layers, the model has {self.depth}")
            if cache.keys[0].shape[0] != x.shape[0] * self.num_tokens:
                raise ValueError(
                    f"cache batch {cache.keys[0].shape[0] // self.num_tokens} does not match input batch {x.shape[0]}"
                )
        t = x.shape[1]
        if num_past + t > self.num_frames:
            raise ValueError(
                f"{num_past} cached + {t} new frames exceed the model's num_frames={self.num_frames}"
            )

        x = x + self.spatial_pos + self.temporal_pos[num_past : num_past + t, None, :]
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            past_kv = None if cache is None or num_past == 0 else (cache.keys[i], cache.values[i])
            x, kv = block(x, past_kv, return_kv=return_cache)
            if return_cache:
                keys.append(kv[0])
                values.append(kv[1])
        x = self.norm(x)
        if return_cache:
            return x, KVCache(tuple(keys), tuple(values))
        return x
