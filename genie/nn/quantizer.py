"""Quantizers behind one small interface: `forward(x) -> QuantizerOutput`, `indices_to_codes`.

Two implementations, chosen by a config string (`build_quantizer`):
- "vq":  VectorQuantize from vector-quantize-pytorch with a cosine-similarity codebook, k-means
         init, EMA updates and dead-code reset — the remedies for codebook collapse (architecture §7.5).
- "fsq": finite scalar quantization (Mentzer et al. 2023): an implicit grid codebook, no
         codebook loss, no collapse.

Both project from the model width d to a small code dim c (Genie App. F: code dim 32) and back,
and quantize in fp32 even under bf16 autocast.

Shape legend: ... any leading dims (e.g. b t n), d model width, c code dim, K codebook size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import pack, unpack
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, VectorQuantize


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (..., d) fp32; equals indices_to_codes(indices) exactly in eval mode
    indices: Tensor  # (...) int64 in [0, K)
    loss: Tensor  # () fp32 commitment loss, already weighted; 0 for fsq and in eval mode


@dataclass
class CodebookUsage:
    usage: Tensor  # () fraction of the K codes that occur at least once
    perplexity: Tensor  # () exp(entropy) of the empirical code distribution, in [1, K]


def codebook_usage(indices: Tensor, codebook_size: int) -> CodebookUsage:
    """Usage and perplexity of a batch of code indices (any shape). Log both (architecture §7.5)."""
    counts = torch.bincount(indices.flatten().long(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs * probs.clamp(min=1e-30).log()).sum()
    return CodebookUsage(
        usage=(counts > 0).float().mean(),
        perplexity=entropy.exp().float(),
    )


def _linear_or_identity(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Linear(dim_in, dim_out) if dim_in != dim_out else nn.Identity()


class VectorQuantizer(nn.Module):
    """Cosine-similarity VQ with k-means init, EMA codebook and dead-code reset.

    Codes are unit vectors in the c-dim code space (the input is l2-normalised before the lookup),
    projected back to width d. The codebook is a buffer updated by EMA in train mode, not by the
    optimizer; the k-means init runs on the first forward call, whatever the mode.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        code_dim: int,
        commitment_weight: float = 0.25,
        decay: float = 0.8,
        kmeans_iters: int = 10,
        threshold_ema_dead_code: float = 2.0,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 5.0,
    ) -> None:
        super().__init__()
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.dim = dim
        self.code_dim = code_dim
        self.codebook_size = codebook_size
        self.project_in = _linear_or_identity(dim, code_dim)
        self.project_out = _linear_or_identity(code_dim, dim)
        # The library's own projections stay off (dim == codebook_dim): doing them here keeps the
        # fp32 lookup and `indices_to_codes` on exactly the same code path.
        self.vq = VectorQuantize(
            dim=code_dim,
            codebook_size=codebook_size,
            use_cosine_sim=True,
            kmeans_init=True,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=threshold_ema_dead_code,
            commitment_weight=commitment_weight,
            decay=decay,
        )

    @property
    def codebook(self) -> Tensor:
        """(K, c) unit-norm code vectors, before the projection back to width d."""
        return self.vq.codebook

    def freeze_codebook(self) -> None:
        """From now on train mode leaves the codebook as it is (no EMA update, no dead-code restart; the k-means
        init still runs once on an uninitialised one); the commitment loss and straight-through gradient stay."""
        self.vq.freeze_codebook = True

    def forward(self, x: Tensor) -> QuantizerOutput:
        """x: (..., d) -> QuantizerOutput with quantized (..., d) and indices (...)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.float().flatten(0, -2)  # (N, d); a view (einops' pack copies even one tensor)
            z = self.project_in(flat)  # (N, c)
            # VectorQuantize wants (b, n, c); one sequence of all tokens.
            quantized, indices, loss = self.vq(z[None])
            if self.training and self.entropy_weight > 0:
                loss = loss + self.entropy_weight * self.usage_penalty(z.unflatten(0, (x.shape[0], -1)))
            quantized = self.project_out(quantized[0])  # (N, d)
            indices = indices[0].long()
        quantized, indices = quantized.unflatten(0, x.shape[:-1]), indices.unflatten(0, x.shape[:-1])
        # .clone(): in eval the library returns its own zero buffer.
        return QuantizerOutput(quantized=quantized, indices=indices, loss=loss.float().clone())

    def usage_penalty(self, z: Tensor) -> Tensor:
        """Mean over clips of log K − H(p̄), p̄ a clip's mean soft assignment (softmax of `entropy_temperature` ×
        cosine similarity to each code): zero when a clip spreads evenly over the codes, log K when one code takes
        it all. Per clip, not per batch: a batch of several videos can spread over the codes by giving each video
        its own code (a LAM that names the game rather than the action); within a clip the codes must change
        over time, as actions do. Its gradient reaches the encoder (the codebook is an EMA buffer), pulling
        inputs from crowded codes toward idle ones — the guard against the collapse dead-code restarts cannot
        undo (a LAM on Atari videos used 1 of 8 codes). The temperature is low (5) so that the gradient survives
        a collapsed clip: at 100, 20 or 10 the softmax saturated and 200 SGD steps left a collapsed batch on 1
        code of 8, at 5 it spread onto all 8 (tests/test_nn.py). z: (clips, n, c).
        """
        sims = F.normalize(z, dim=-1) @ F.normalize(self.vq.codebook.float(), dim=-1).t()  # (clips, n, K)
        mean = (sims * self.entropy_temperature).softmax(dim=-1).mean(dim=1)  # (clips, K)
        entropy = -(mean * mean.clamp_min(1e-12).log()).sum(-1)  # (clips,)
        return (math.log(self.codebook_size) - entropy).mean()

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """indices (...) int -> (..., d) fp32, identical to `forward`'s quantized in eval mode."""
        with torch.autocast(device_type=indices.device.type, enabled=False):
            flat, packed_shape = pack([indices.long()], "*")
            codes = self.project_out(self.vq.codebook.float()[flat])  # (N, d)
        [codes] = unpack(codes, packed_shape, "* d")
        return codes


class FiniteScalarQuantizer(nn.Module):
    """FSQ: each of len(levels) code channels is bounded and rounded to levels[i] values.

    The codebook is the implicit grid of prod(levels) points; no auxiliary loss (loss is 0).
    """

    def __init__(self, dim: int, levels: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.dim = dim
        self.levels = tuple(int(level) for level in levels)
        self.code_dim = len(self.levels)
        self.codebook_size = math.prod(self.levels)
        self.project_in = _linear_or_identity(dim, self.code_dim)
        self.project_out = _linear_or_identity(self.code_dim, dim)
        # FSQ computes its codebook size with .item() in __init__, which fails under the meta device that
        # transformers' from_pretrained builds models on; its buffers are fixed grids, so build them for real.
        with torch.device("cpu"):
            self.fsq = FSQ(levels=list(self.levels), dim=self.code_dim)
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    @property
    def codebook(self) -> Tensor:
        """(K, c) grid points in [-1, 1], before the projection back to width d."""
        return self.fsq.implicit_codebook

    def forward(self, x: Tensor) -> QuantizerOutput:
        """x: (..., d) -> QuantizerOutput with quantized (..., d) and indices (...)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.float().flatten(0, -2)  # (N, d)
            z = self.project_in(flat)  # (N, c)
            # Rounding with a straight-through estimator is value-exact (|z - round(z)| <= 0.5), so
            # these codes equal the grid points that indices_to_codes rebuilds from integers.
            codes, indices = self.fsq(z[None])
            quantized = self.project_out(codes[0])  # (N, d)
            indices = indices[0].long()
        quantized, indices = quantized.unflatten(0, x.shape[:-1]), indices.unflatten(0, x.shape[:-1])
        return QuantizerOutput(quantized=quantized, indices=indices, loss=self.zero.clone())

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """indices (...) int -> (..., d) fp32, identical to `forward`'s quantized."""
        with torch.autocast(device_type=indices.device.type, enabled=False):
            flat, packed_shape = pack([indices.long()], "*")
            codes = self.fsq.indices_to_codes(flat[None])[0].float()  # (N, c)
            codes = self.project_out(codes)  # (N, d)
        [codes] = unpack(codes, packed_shape, "* d")
        return codes


Quantizer = VectorQuantizer | FiniteScalarQuantizer


def build_quantizer(
    kind: str,
    dim: int,
    *,
    codebook_size: int,
    code_dim: int,
    fsq_levels: tuple[int, ...] | list[int] = (8, 5, 5, 5),
    commitment_weight: float = 0.25,
    decay: float = 0.8,
    kmeans_iters: int = 10,
    threshold_ema_dead_code: float = 2.0,
    entropy_weight: float = 0.0,
) -> Quantizer:
    """Build the quantizer named by `kind` ("vq" or "fsq"). For "fsq" the codebook size is
    prod(fsq_levels) and the code dim len(fsq_levels); `codebook_size`/`code_dim` must agree or
    are ignored respectively (the configs check this)."""
    if kind == "vq":
        return VectorQuantizer(
            dim,
            codebook_size,
            code_dim,
            commitment_weight=commitment_weight,
            decay=decay,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=threshold_ema_dead_code,
            entropy_weight=entropy_weight,
        )
    if kind == "fsq":
        quantizer = FiniteScalarQuantizer(dim, fsq_levels)
        if quantizer.codebook_size != codebook_size:
            raise ValueError(
                f"codebook_size ({codebook_size}) must equal prod(fsq_levels {list(fsq_levels)}) = {quantizer.codebook_size}"
            )
        return quantizer
    raise ValueError(f"unknown quantizer {kind!r}; expected 'vq' or 'fsq'")
