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

    DESIGN §4 keeps norms in fp32 under bf16 autocast; CPU autocast does not upcast layer_norm on
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
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = rearrange(self.qkv(x), "B L (three k e) -> three B k L e", three=3, k=self.num_heads)
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
        return self.proj_drop(self.proj(out)), (k, v)


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
