"""Attention, normalisation and MLP primitives shared by every stage.

Shape legend: b batch, t frames, n tokens per frame (h*w), d width, L query length, S key length,
B folded batch ((b t) for spatial attention, (b n) for temporal attention), k heads, e head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm that always normalises in fp32 and returns the input dtype.

    architecture §4 keeps norms in fp32 under bf16 autocast; CPU autocast does not upcast layer_norm on
    its own, so do it explicitly.
    """

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention on (B, L, d) sequences via `scaled_dot_product_attention`.

    `past_kv` (keys and values of earlier positions, each (B, k, P, e)) makes the attention
    incremental: the L new queries sit at absolute positions P..P+L-1 and, when `causal`, see keys
    0..P+i. Returns the output and the keys/values of all P+L positions, ready to be cached.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        causal: bool = False,
        past_kv: tuple[Tensor, Tensor] | None = None,
        return_kv: bool = True,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x (B, L, d) -> (out (B, L, d), keys/values of all P + L positions, or None without `return_kv`)."""
        # chunk, not a (three ...) rearrange: the backward then writes the three gradients side by side into one
        # (B, L, 3d) tensor (one copy) instead of stacking and permuting them (two copies of that size)
        q, k, v = (rearrange(t, "B L (k e) -> B k L e", k=self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if past_kv is not None and q.shape[2] == 1 and not return_kv and not (self.training and self.dropout):
            return self.proj_drop(self.proj(_one_query(q, k, v, past_kv))), None
        num_past = 0
        if past_kv is not None:
            num_past = past_kv[0].shape[2]
            k = torch.cat([past_kv[0].to(k.dtype), k], dim=2)
            v = torch.cat([past_kv[1].to(v.dtype), v], dim=2)
        L, S = q.shape[2], k.shape[2]
        attn_mask, is_causal = None, False
        # A single new query may see every key, so it needs no mask (and SDPA keeps its fast path).
        if causal and L > 1:
            if num_past == 0:
                is_causal = True
            else:
                # SDPA's is_causal aligns the mask top-left, which is wrong once the queries start at
                # position P; build the bottom-right aligned mask explicitly.
                query_pos = torch.arange(L, device=x.device) + num_past
                attn_mask = torch.arange(S, device=x.device)[None, :] <= query_pos[:, None]  # (L, S)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        out = rearrange(out, "B k L e -> B L (k e)")
        return self.proj_drop(self.proj(out)), ((k, v) if return_kv else None)


def _one_query(q: Tensor, k: Tensor, v: Tensor, past_kv: tuple[Tensor, Tensor]) -> Tensor:
    """Attention of one new position (q, k, v each (B, k, 1, e)) over the cached P and itself -> (B, 1, (k e)).

    What a MaskGIT step asks of the temporal attention: concatenating the cache to the new keys/values (a copy of
    the whole cache per step) and SDPA's kernel on B*k one-row problems cost more than these few broadcast ops
    over (B, k, P, e) (sampling at context 4, 1 thread of the 2-core CPU: 5.22 -> 5.50 frames/s, the same tokens;
    benchmarks/results/ab_sampling_1thread.json). Same values up to rounding.
    """
    pk, pv = past_kv[0].to(k.dtype), past_kv[1].to(v.dtype)  # (B, k, P, e)
    scale = q.shape[-1] ** -0.5
    scores = torch.cat([(q * pk).sum(-1), (q * k).sum(-1)], dim=-1) * scale  # (B, k, P + 1)
    probs = scores.float().softmax(dim=-1).to(q.dtype)
    out = (probs[..., :-1, None] * pv).sum(-2) + probs[..., -1:] * v[:, :, 0]  # (B, k, e)
    return rearrange(out, "B k e -> B 1 (k e)")


class MLP(nn.Module):
    """Position-wise feed-forward: d -> mlp_ratio*d -> d with GELU."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))
