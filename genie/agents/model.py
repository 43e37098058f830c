"""The policy network of the cloned agents (Genie §3.3): a small CNN from the last two frames to action logits.

Genie's policy is an ST-ViViT encoder over 4 frames; on 2 CPU cores a Nature-DQN-sized CNN over the previous and
the current frame (stacked as channels, so the first layer sees motion) clones a CoinRun demonstrator in minutes.
The same network serves both agents: its outputs are the LAM's latent actions (latent BC) or the real action
classes (oracle BC).

Shape legend: b batch, f frames (2: previous, current), c channels, H W pixels, o outputs (latent codes or real
action classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from genie.core.frames import from_uint8


@dataclass
class PolicyConfig:
    """Sizes of the policy CNN. `num_outputs`: the latent-action vocabulary (latent BC) or the number of real action
    classes (oracle BC)."""

    num_outputs: int = 9
    image_size: int = 64
    channels: int = 3
    frames: int = 2
    width: int = 32  # channels of the first conv; the next two have 2×
    hidden: int = 256

    def __post_init__(self) -> None:
        for name in ("num_outputs", "image_size", "channels", "frames", "width", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.num_outputs < 2:
            raise ValueError(f"num_outputs must be >= 2, got {self.num_outputs}")
        if self.image_size < 36:  # the three convs below need 36 pixels to leave a 1×1 map
            raise ValueError(f"image_size must be >= 36, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown policy config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(width=4, hidden=16),  # tests: trains and plays in seconds
    "cpu": dict(width=32, hidden=256),  # 0.5M parameters; a few minutes of one CPU core
}


class PolicyNet(nn.Module):
    """frames (b, f, H, W, c) uint8 → logits (b, o)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        w, s = config.width, config.image_size
        self.convs = nn.Sequential(
            nn.Conv2d(config.frames * config.channels, w, 8, stride=4), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=1), nn.ReLU(),
        )
        side = ((s - 8) // 4 + 1 - 4) // 2 + 1 - 2  # 64 → 15 → 6 → 4
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * side * side, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, config.num_outputs))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # a small last layer: the untrained policy starts near uniform over its outputs
        nn.init.normal_(self.head[-1].weight, std=0.01)

    def forward(self, frames: Tensor) -> Tensor:
        x = from_uint8(rearrange(frames, "b f h w c -> b (f c) h w"))  # (b, f*c, H, W) in [-1, 1]
        return self.head(self.convs(x))  # (b, o)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def logits_in_batches(net: PolicyNet, frames: Tensor, batch: int = 256) -> Tensor:
    """Logits of many frame pairs (n, f, H, W, c), `batch` at a time (eval mode is the caller's)."""
    return torch.cat([net(frames[i:i + batch]) for i in range(0, len(frames), batch)])
