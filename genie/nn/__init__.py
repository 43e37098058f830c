"""Primitives every stage uses: attention, the ST transformer with its KV cache, quantizers."""

from genie.nn.attention import MLP, Attention, LayerNorm
from genie.nn.quantizer import (
    CodebookUsage,
    FiniteScalarQuantizer,
    Quantizer,
    QuantizerOutput,
    VectorQuantizer,
    build_quantizer,
    codebook_usage,
)
from genie.nn.st_block import KVCache, STBlock, STTransformer

__all__ = [
    "MLP",
    "Attention",
    "CodebookUsage",
    "FiniteScalarQuantizer",
    "KVCache",
    "LayerNorm",
    "Quantizer",
    "QuantizerOutput",
    "STBlock",
    "STTransformer",
    "VectorQuantizer",
    "build_quantizer",
    "codebook_usage",
]
