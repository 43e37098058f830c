"""Video tokenizer: ST-ViViT VQ-VAE (Genie §2.1).

Frames are cut into p x p patches, an ST-transformer encoder (causal in time) maps them to one
discrete token per patch, and an ST-transformer decoder (also causal in time) maps tokens back to
pixels. With `conv_channels` k > 0 a per-frame 3x3 conv stem (k channels) precedes the patches and a
residual 3x3 conv refinement (`refine_channels`, k unless set) follows the pixel head, so pixels see across patch
borders (per frame, so causality is kept). Causality in both halves means the tokens and reconstruction of frame t depend only on
frames <= t, which generation relies on (Genie §2.1, Fig. 5).

Shape legend: b batch, t frames, c channels, H W pixels, p patch size, h w token grid,
n flattened tokens (h*w), d width, v codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from genie.nn import QuantizerOutput, STTransformer, build_quantizer
from tokenizer.config import TokenizerConfig


@dataclass
class TokenizerOutput:
    recon: Tensor  # (b, t, c, H, W) reconstruction, targets in [-1, 1]
    indices: Tensor  # (b, t, h, w) int64 token ids in [0, v)
    quant_loss: Tensor  # () quantizer loss (VQ commitment; 0 for FSQ and in eval mode)


class VideoTokenizer(nn.Module):
    """ST-ViViT VQ-VAE over clips of up to `config.num_frames` frames."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        c, p, d = config.channels, config.patch_size, config.width
        n = config.tokens_per_frame

        k = config.conv_channels
        # Optional per-frame convolutional stem: pixels mix with their neighbours across patch borders.
        self.stem = nn.Sequential(nn.Conv2d(c, k, 3, padding=1), nn.GELU()) if k else None
        self.patch_embed = nn.Linear(p * p * (k or c), d)
        self.encoder = STTransformer(
            d,
            config.depth_encoder,
            config.num_heads,
            num_tokens=n,
            num_frames=config.num_frames,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            causal=True,
        )
        # The quantizer projects d -> code dim, quantizes, and projects back to d (App. F: 32).
        self.quantizer = build_quantizer(
            config.quantizer,
            d,
            codebook_size=config.codebook_size,
            code_dim=config.code_dim,
            fsq_levels=config.fsq_levels,
            commitment_weight=config.commitment_weight,
            decay=config.vq_decay,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
            entropy_weight=config.code_entropy_weight,
        )
        self.decoder = STTransformer(
            d,
            config.depth_decoder,
            config.num_heads,
            num_tokens=n,
            num_frames=config.num_frames,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            causal=True,
        )
        # With refine_channels r the head also emits r feature maps per pixel that a residual conv
        # refinement (zero-initialised, so training starts from the plain linear head) reads.
        r = config.refine_channels
        self.to_pixels = nn.Linear(d, p * p * (c + r))
        self.refine = nn.Sequential(nn.Conv2d(c + r, r, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(r, c, 3, padding=1)) if r else None
        # refine_depth residual blocks between the refinement's two convs widen what a pixel sees (5x5 -> 5+4k square)
        self.refine_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(r, r, 3, padding=1), nn.GELU(), nn.Conv2d(r, r, 3, padding=1))
            for _ in range(config.refine_depth if r else 0))
        self._init_weights()

    def _init_weights(self) -> None:
        # The two STTransformers initialise themselves (GPT-2 scheme, genie.nn.st_block); the
        # quantizer keeps PyTorch's default for its projections and the library's k-means codebook.
        nn.init.normal_(self.patch_embed.weight, std=0.02)
        nn.init.zeros_(self.patch_embed.bias)
        # Plain linear pixel head (no tanh): targets are in [-1, 1] and MSE handles the range.
        nn.init.normal_(self.to_pixels.weight, std=0.02)
        nn.init.zeros_(self.to_pixels.bias)
        if self.refine is not None:
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)
        for block in self.refine_blocks:  # each residual block starts as the identity
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)

    # Sizes `genie train --init_from` may grow from an export, all on the decoder side: a deeper decoder (the export's
    # blocks come first and the new ones, appended before the final norm, start as the identity: their residual
    # projections are zero), a conv refinement head on an export without one (the pixel head keeps its rows, the
    # new feature rows feed a refinement whose last conv is zero) and more residual blocks in that refinement (each
    # new one starts as the identity), so the grown tokenizer decodes exactly as the export did until training moves it.
    GROWABLE_SIZES = ("depth_decoder", "refine_channels", "refine_depth")
    # What `train_decoder_only` freezes: everything that decides the token ids
    ENCODER_SIDE = ("stem", "patch_embed", "encoder", "quantizer")

    def load_grown(self, state: dict[str, Tensor]) -> list[str]:
        """Load an export with fewer decoder blocks, refinement blocks or no refinement head; returns the names left
        as initialised."""
        state = dict(state)
        c, pp, r = self.config.channels, self.config.patch_size ** 2, self.config.refine_channels
        if r and state["to_pixels.bias"].shape[0] != pp * (c + r):
            if state["to_pixels.bias"].shape[0] != pp * c:
                raise ValueError("a refinement head grows only onto a tokenizer without one (refine_channels 0)")
            for name in ("to_pixels.weight", "to_pixels.bias"):  # rows are (p1 p2 channel): keep the pixel channels'
                grown = self.state_dict()[name].clone()
                grown.view(pp, c + r, -1)[:, :c] = state[name].view(pp, c, -1)
                state[name] = grown
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(("decoder.blocks.", "refine.", "refine_blocks.")) for k in missing):
            raise ValueError("not the same tokenizer less decoder blocks or refinement: "
                             f"missing {missing}, unexpected {unexpected}")
        for i in sorted({int(k.split(".")[2]) for k in missing if k.startswith("decoder.")}):
            block = self.decoder.blocks[i]
            for proj in (block.attn_spatial.proj, block.attn_temporal.proj, block.mlp.fc2):
                nn.init.zeros_(proj.weight)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)
        return list(missing)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    # ---- checks -------------------------------------------------------------------------------

    def _check_video(self, video: Tensor) -> None:
        cfg = self.config
        expected = (cfg.channels, *cfg.frame_size)
        if video.ndim != 5 or tuple(video.shape[2:]) != expected:
            raise ValueError(
                f"video must be (b, t, c, H, W) with (c, H, W) = {expected}, got {tuple(video.shape)}"
            )
        self._check_frames(video.shape[1])

    def _check_ids(self, ids: Tensor) -> None:
        g = self.config.grid
        if ids.ndim != 4 or tuple(ids.shape[2:]) != g:
            raise ValueError(f"token ids must be (b, t, h, w) with (h, w) = {g}, got {tuple(ids.shape)}")
        if ids.is_floating_point():
            raise ValueError(f"token ids must be an integer tensor, got {ids.dtype}")
        self._check_frames(ids.shape[1])

    def _check_frames(self, t: int) -> None:
        if not 1 <= t <= self.config.num_frames:
            raise ValueError(f"number of frames must be in [1, {self.config.num_frames}], got {t}")

    # ---- model --------------------------------------------------------------------------------

    def _encode(self, video: Tensor) -> QuantizerOutput:
        p = self.config.patch_size
        if self.stem is not None:
            b = video.shape[0]
            # channels-last: oneDNN's fast layout for convolutions with few channels (the conv stem and head
            # ran 1.4x faster forward and backward on the 2-core CPU), and pixels (b t) H W k in memory are
            # already in the (p1 p2 c) order the patches take
            frames = rearrange(video, "b t c H W -> (b t) c H W").contiguous(memory_format=torch.channels_last)
            video = rearrange(self.stem(frames), "(b t) k H W -> b t k H W", b=b)
        patches = rearrange(video, "b t c (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=p, p2=p)
        x = self.encoder(self.patch_embed(patches))  # (b, t, n, d)
        return self.quantizer(x)

    def _decode_tokens(self, quantized: Tensor) -> Tensor:
        (h, _), p = self.config.grid, self.config.patch_size
        x = self.decoder(quantized)  # (b, t, n, d)
        if self.refine is None:
            pixels = rearrange(self.to_pixels(x), "b t (h w) (p1 p2 c) -> b t c (h p1) (w p2)", h=h, p1=p, p2=p)
        else:
            c, b = self.config.channels, x.shape[0]
            # unpatchified channels-last ((b t) H W c in memory, seen as (b t) c H W) for the conv head, as in _encode
            flat = rearrange(self.to_pixels(x), "b t (h w) (p1 p2 c) -> (b t) (h p1) (w p2) c", h=h, p1=p, p2=p)
            flat = rearrange(flat, "B H W c -> B c H W")
            feat = self.refine[1](self.refine[0](flat))
            for block in self.refine_blocks:
                feat = feat + block(feat)
            pixels = rearrange(flat[:, :c] + self.refine[2](feat), "(b t) c H W -> b t c H W", b=b)
        return pixels

    def forward(self, video: Tensor) -> TokenizerOutput:
        """video (b, t, c, H, W) in [-1, 1], t <= num_frames -> TokenizerOutput."""
        self._check_video(video)
        q = self._encode(video)
        recon = self._decode_tokens(q.quantized)
        indices = rearrange(q.indices, "b t (h w) -> b t h w", h=self.config.grid[0])
        return TokenizerOutput(recon=recon, indices=indices, quant_loss=q.loss)

    def encode(self, video: Tensor) -> Tensor:
        """video (b, t, c, H, W) in [-1, 1] -> token ids (b, t, h, w) int64."""
        self._check_video(video)
        indices = self._encode(video).indices
        return rearrange(indices, "b t (h w) -> b t h w", h=self.config.grid[0])

    def decode(self, ids: Tensor) -> Tensor:
        """token ids (b, t, h, w) -> video (b, t, c, H, W).

        In eval mode equals `forward(video).recon` for ids = `encode(video)`. No KV cache: the decoder's
        temporal positions are absolute, so once a rollout passes `num_frames` every new frame is decoded from
        the window that ends at it (`genie.sampling.decode_tokens`); a cache would serve only a session's
        first `num_frames - 1` frames, and only up to float rounding.
        """
        self._check_ids(ids)
        quantized = self.quantizer.indices_to_codes(rearrange(ids, "b t h w -> b t (h w)"))
        return self._decode_tokens(quantized)
