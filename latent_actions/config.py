"""Configuration of the latent action model (LAM, Genie §2.2 and App. F) and its named presets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from genie.core.config import (
    PatchGridConfig,
    StageConfig,
    check_at_least,
    check_image_size,
    check_positive_ints,
    check_transformer,
    check_unit_interval,
    check_vector_quantizer,
)
from genie.core.metrics import agent_box

# crop_box "card": the training data's region of interest (its card's `agent_box`) grown by this many pixels a side
CROP_MARGIN = 2


@dataclass
class LatentActionConfig(PatchGridConfig, StageConfig):
    """Sizes of the latent action model. Defaults are the Genie CoinRun case study (App. F), except
    `num_actions=8`, the |A| of Genie §2.2 (the CoinRun case study used 6: preset "coinrun-paper").

    The LAM works on pixels (Genie Table 2: pixel input beats token input). `num_actions` is the
    size of the VQ codebook, i.e. the latent-action vocabulary `a` users pick from when playing;
    `num_frames` is the longest clip (frames, so at most `num_frames - 1` actions).

    `decoder_mask_ratio` is the guard against a decoder that ignores the action (architecture §7.6): in
    train mode each sample replaces a fraction ~U(0, decoder_mask_ratio) of the decoder's input
    context patches by a learned mask token. 0 turns it off; eval mode never masks. The default is
    a moderate guess, not yet measured on CoinRun; on synthetic sprites (where the past says
    nothing about the next random action) masking only slowed learning.

    `decoder_motion` gives the decoder each context frame's difference from the previous one next to
    the frame itself, so motion the past already predicts (momentum, camera scroll) need not be carried
    by the action code. False in the dataclass so that exports written before the option existed load
    unchanged; every preset turns it on.
    """

    PRESET_KIND = "latent action"

    image_size: int | tuple[int, int] = 64  # square side, or (height, width)
    channels: int = 3
    patch_size: int = 16
    width: int = 512
    depth_encoder: int = 8
    depth_decoder: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_actions: int = 8
    code_dim: int = 32
    num_frames: int = 16
    dropout: float = 0.0
    commitment_weight: float = 0.25
    vq_decay: float = 0.8
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    # > 0: a batch code-usage entropy term in the loss (genie.nn.quantizer.VectorQuantizer.usage_penalty), vq only
    code_entropy_weight: float = 0.0
    # quantise each transition's latent minus its clip's mean (codes then depend on the whole clip; off: as Genie)
    center_latents: bool = False
    decoder_mask_ratio: float = 0.25
    decoder_motion: bool = False
    encoder_causal: bool = True
    train_codes: int = 0
    # [top, left, bottom, right] in pixels, or None (off): the encoder also reads this window of every frame at
    # `crop_patch` resolution (with its frame difference), as extra tokens beside the frame's patches. For a fixed
    # agent box such as CoinRun's camera-centred sprite, whose facing flips at once on a left/right input
    # (a few pixels a patch-8 embedding averages away). Encoder only: the decoder and play are unchanged.
    # "card": the training data's card decides (`with_card`, which `genie train` applies): its agent_box grown by
    # CROP_MARGIN pixels a side onto the crop_patch grid (CoinRun: [26, 26, 38, 38]), or off for data without one.
    crop_box: list[int] | Literal["card"] | None = None
    crop_patch: int = 2

    def __post_init__(self) -> None:
        check_positive_ints(self, "channels", "patch_size", "width", "depth_encoder", "depth_decoder", "num_heads",
                            "num_actions", "code_dim", "num_frames", "kmeans_iters")
        self.image_size = check_image_size(self.image_size, self.patch_size)
        check_at_least(self, "num_actions", 2)
        check_at_least(self, "num_frames", 2)  # one transition needs two frames
        check_transformer(self)
        check_vector_quantizer(self)
        for name in ("decoder_motion", "encoder_causal", "center_latents"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_unit_interval(self, "decoder_mask_ratio")
        check_positive_ints(self, "crop_patch")
        if self.crop_box is not None and self.crop_box != "card":
            self.crop_box = _check_crop_box(self.crop_box, self.frame_size, self.crop_patch)
        if not isinstance(self.train_codes, int) or not (self.train_codes == 0 or self.train_codes > self.num_actions):
            raise ValueError(f"train_codes must be 0 (off) or more than num_actions ({self.num_actions}), "
                             f"got {self.train_codes!r}")

    def with_card(self, card: dict) -> LatentActionConfig:
        """This config for training on the dataset with this card: crop_box "card" becomes the card's agent_box
        grown by CROP_MARGIN pixels a side, outward to the crop_patch grid and inside the frame, or None (no crop,
        training as without the option) when the card names no box. Any other crop_box is kept as it is."""
        if self.crop_box != "card":
            return self
        box = agent_box(card, self.frame_size)
        if box is None:
            return replace(self, crop_box=None)
        (top, left, bottom, right), (H, W), cp = box, self.frame_size, self.crop_patch
        grown = [max(0, (top - CROP_MARGIN) // cp * cp), max(0, (left - CROP_MARGIN) // cp * cp),
                 min(H // cp * cp, -(-(bottom + CROP_MARGIN) // cp) * cp), min(W // cp * cp, -(-(right + CROP_MARGIN) // cp) * cp)]
        return replace(self, crop_box=grown)


def _check_crop_box(box: Any, frame_size: tuple[int, int], patch: int) -> list[int]:
    H, W = frame_size
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)):
        raise ValueError(f"crop_box must be [top, left, bottom, right] in pixels, got {box!r}")
    top, left, bottom, right = box
    if not (0 <= top < bottom <= H and 0 <= left < right <= W):
        raise ValueError(f"crop_box {list(box)} must lie inside the {H}x{W} frame with top < bottom, left < right")
    if (bottom - top) % patch or (right - left) % patch:
        raise ValueError(f"crop_box {list(box)}: its height and width must be multiples of crop_patch {patch}")
    return list(box)


PRESETS: dict[str, dict[str, Any]] = {
    # Tiny, for tests: 4x4 patches of 16x16 pixels at 64x64 (also fine at image_size=32).
    "debug": dict(
        image_size=64,
        patch_size=16,
        width=32,
        depth_encoder=1,
        depth_decoder=1,
        num_heads=2,
        num_actions=8,
        code_dim=8,
        num_frames=4,
        decoder_motion=True,
    ),
    # For training on 2 CPU cores (configs/latent_actions/cpu.yaml, the issue-23 recipe); the committed
    # pretrained/ LAM has these sizes, with crop_box settled by CoinRun's card.
    "cpu": dict(
        patch_size=8,
        width=128,
        depth_encoder=2,
        depth_decoder=2,
        num_heads=4,
        num_actions=8,
        code_dim=32,
        num_frames=16,
        decoder_motion=True,
        encoder_causal=False,
        train_codes=32,
        crop_box="card",
        crop_patch=2,
    ),
    # Genie App. F, CoinRun case study: exactly the paper's sizes (6 latent actions).
    "coinrun-paper": dict(
        image_size=64,
        patch_size=16,
        width=512,
        depth_encoder=8,
        depth_decoder=8,
        num_heads=8,
        num_actions=6,
        code_dim=32,
        num_frames=16,
        decoder_motion=True,  # not in the paper: see the class docstring
    ),
}
LatentActionConfig.PRESETS = PRESETS
