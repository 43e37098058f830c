"""Configuration of the video tokenizer (ST-ViViT VQ-VAE, Genie §2.1) and its named presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from genie.core.config import (
    PatchGridConfig,
    StageConfig,
    check_at_least,
    check_image_size,
    check_positive_ints,
    check_transformer,
    check_vector_quantizer,
)

QUANTIZERS = ("vq", "fsq")


@dataclass
class TokenizerConfig(PatchGridConfig, StageConfig):
    """Sizes of the video tokenizer. Defaults are the Genie CoinRun case study (App. F).

    `codebook_size` is the number of token ids downstream stages see. With quantizer="fsq" it must
    equal prod(fsq_levels) and the code dim is len(fsq_levels) (`code_dim` is then unused).
    """

    PRESET_KIND = "tokenizer"

    image_size: int | tuple[int, int] = 64  # square side, or (height, width)
    channels: int = 3
    patch_size: int = 4
    width: int = 512
    depth_encoder: int = 8
    depth_decoder: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    codebook_size: int = 1024
    code_dim: int = 32
    quantizer: str = "vq"
    fsq_levels: tuple[int, ...] = (8, 8, 4, 4)
    num_frames: int = 16
    dropout: float = 0.0
    commitment_weight: float = 0.25
    vq_decay: float = 0.8
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    # > 0: a batch code-usage entropy term in the loss (genie.nn.quantizer.VectorQuantizer.usage_penalty), vq only
    code_entropy_weight: float = 0.0
    # 0 = plain linear patch embedding and pixel head (the paper's ViT). k > 0 adds a per-frame 3x3
    # convolution with k channels before patchifying and a residual 3x3 conv refinement (refine_channels hidden
    # channels, k unless set) after unpatchifying, so pixels see across patch borders; per frame, so still causal.
    conv_channels: int = 0
    # Hidden channels of the residual conv refinement after the pixel head alone; None = conv_channels. Set without a
    # stem (conv_channels 0) it changes only the decoder side, so `genie train --init_from` an export with
    # `--model.train_decoder_only true` may grow one onto a tokenizer whose tokens a dynamics model already uses.
    refine_channels: int | None = None
    # Residual blocks (two 3x3 convs each) inside that refinement; each widens a pixel's view by 4 pixels a side.
    # Growable like refine_channels: new blocks start as the identity, so decoder-only training may add them.
    refine_depth: int = 0

    def __post_init__(self) -> None:
        if self.refine_channels is None:
            self.refine_channels = self.conv_channels
        self.fsq_levels = tuple(int(level) for level in self.fsq_levels)
        check_positive_ints(self, "channels", "patch_size", "width", "depth_encoder", "depth_decoder", "num_heads",
                            "codebook_size", "code_dim", "num_frames", "kmeans_iters")
        self.image_size = check_image_size(self.image_size, self.patch_size)
        check_transformer(self)
        check_vector_quantizer(self)
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        check_at_least(self, "codebook_size", 2)
        check_at_least(self, "conv_channels", 0)
        check_at_least(self, "refine_channels", 0)
        check_at_least(self, "refine_depth", 0)
        if self.refine_depth and not self.refine_channels:
            raise ValueError(f"refine_depth {self.refine_depth} needs a refinement head: set refine_channels (or conv_channels) > 0")
        if not self.fsq_levels or any(level < 3 for level in self.fsq_levels):
            # vector-quantize-pytorch's FSQ rejects 2 levels unless symmetry-preserving rounding is on.
            raise ValueError(f"fsq_levels must be a non-empty list of integers >= 3, got {list(self.fsq_levels)}")
        if self.quantizer == "fsq" and math.prod(self.fsq_levels) != self.codebook_size:
            raise ValueError(
                f"codebook_size ({self.codebook_size}) must equal the product of fsq_levels "
                f"{list(self.fsq_levels)} = {math.prod(self.fsq_levels)} when quantizer='fsq'"
            )


PRESETS: dict[str, dict[str, Any]] = {
    # Tiny, for tests: 8x8 tokens of 8x8 pixels at 64x64 (also fine at image_size=32).
    "debug": dict(
        image_size=64,
        patch_size=8,
        width=32,
        depth_encoder=1,
        depth_decoder=1,
        num_heads=2,
        codebook_size=32,
        code_dim=8,
        fsq_levels=(8, 4),
        num_frames=4,
    ),
    # For training on 2 CPU cores; the committed pretrained/ tokenizer has these sizes but conv_channels 0 (no stem),
    # depth_decoder 4, refine_channels 32 and refine_depth 2 (grown onto it by decoder-only training; its encoder then
    # trained on around the frozen codebook).
    "cpu": dict(
        patch_size=4,
        width=128,
        depth_encoder=2,
        depth_decoder=2,
        num_heads=4,
        codebook_size=1024,
        code_dim=32,
        num_frames=16,
        conv_channels=16,
    ),
    # Genie App. F, CoinRun case study: exactly the paper's sizes.
    "coinrun-paper": dict(
        image_size=64,
        patch_size=4,
        width=512,
        depth_encoder=8,
        depth_decoder=8,
        num_heads=8,
        codebook_size=1024,
        code_dim=32,
        num_frames=16,
    ),
}
TokenizerConfig.PRESETS = PRESETS
