"""Fréchet Video Distance (Unterthiner et al. 2018) from I3D weights the user already has.

genie never downloads weights. FVD embeds real and generated clips with the Kinetics-400 I3D network
(Carreira & Zisserman 2017, Inception-v1 inflated to 3-D), fits a Gaussian to each set of embeddings
and reports the Fréchet distance between the two Gaussians.

Weights: a PyTorch state dict whose names follow the common PyTorch port of the DeepMind checkpoint
(`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`, …, `logits.conv3d.bias`; for example
pytorch-i3d's `rgb_imagenet.pt`), as `.pt`/`.pth` (read with `weights_only=True`, so no pickled code
runs) or `.safetensors`. TorchScript archives are refused: loading one executes its code.

Embedding, as in the reference FVD: frames resized to 224×224 (bilinear), values in [-1, 1], the
network's pre-softmax logits. The final pooling averages over all remaining positions; for 224×224
clips of 9–16 frames that is exactly the reference's 2×7×7 average pool. FVD depends on clip length,
resolution and the number of clips, so figures are comparable only at equal settings; `fvd_report`
records them beside the value.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from genie.core.device import module_device
from genie.core.errors import GenieInputError

I3D_SIZE = 224

# Inception-v1 blocks (Szegedy et al. 2015, Table 1) inflated by I3D: name, input channels, and the
# widths of branch 0 (1×1), branch 1 (1×1 → 3×3), branch 2 (1×1 → 3×3), branch 3 (pool → 1×1).
_BLOCKS = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
# max-pool (kernel, stride) inserted before these blocks, as in the I3D paper's Figure 3
_POOL_BEFORE = {"Mixed_3b": ((1, 3, 3), (1, 2, 2)), "Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}


def same_pad(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding of a (n, c, t, h, w) tensor: the output has ceil(size / stride) positions,
    with the odd padding element at the end."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def _pool(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    return F.max_pool3d(same_pad(x, kernel, stride, value=-math.inf), kernel, stride)


class _ConvUnit(nn.Module):
    """3-D convolution with SAME padding, then batch norm (eps 1e-3) and ReLU, or a plain biased conv."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), head: bool = False):
        super().__init__()
        self.kernel, self.stride, self.head = tuple(kernel), tuple(stride), head
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=head)
        if not head:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(same_pad(x, self.kernel, self.stride))
        return x if self.head else F.relu(self.bn(x))


class _Mixed(nn.Module):
    def __init__(self, cin: int, w: tuple[int, ...]):
        super().__init__()
        self.b0 = _ConvUnit(cin, w[0])
        self.b1a, self.b1b = _ConvUnit(cin, w[1]), _ConvUnit(w[1], w[2], (3, 3, 3))
        self.b2a, self.b2b = _ConvUnit(cin, w[3]), _ConvUnit(w[3], w[4], (3, 3, 3))
        self.b3b = _ConvUnit(cin, w[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _pool(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], 1)


class I3D(nn.Module):
    """Inflated Inception-v1; `forward` maps (n, 3, t, h, w) clips in [-1, 1] to (n, num_classes) logits."""

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.add_module("Conv3d_1a_7x7", _ConvUnit(3, 64, (7, 7, 7), (2, 2, 2)))
        self.add_module("Conv3d_2b_1x1", _ConvUnit(64, 64))
        self.add_module("Conv3d_2c_3x3", _ConvUnit(64, 192, (3, 3, 3)))
        for name, cin, widths in _BLOCKS:
            self.add_module(name, _Mixed(cin, widths))
        self.logits = _ConvUnit(1024, num_classes, head=True)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv3d_1a_7x7(x)
        x = _pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        for name, _, _ in _BLOCKS:
            if name in _POOL_BEFORE:
                x = _pool(x, *_POOL_BEFORE[name])
            x = getattr(self, name)(x)
        x = x.mean((2, 3, 4), keepdim=True)  # dropout is the identity at evaluation
        return self.logits(x).flatten(1)


def load_i3d(path: str | Path) -> I3D:
    """Build an I3D from a weights file, or raise GenieInputError naming the file and what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise GenieInputError(f"{p}: no such I3D weights file (genie never downloads it; pass a local path)")
    if p.suffix == ".safetensors":
        try:
            state = load_file(str(p))
        except Exception as e:  # noqa: BLE001  (any parse failure is a bad input)
            raise GenieInputError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    elif p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise GenieInputError(f"{p}: not a weights-only PyTorch state dict (TorchScript and pickled modules are "
                                  f"refused; {str(e).splitlines()[0][:120]})") from None
    else:
        raise GenieInputError(f"{p}: I3D weights must be .pt/.pth (state dict) or .safetensors")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GenieInputError(f"{p}: expected a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "logits.conv3d.weight" not in state:
        raise GenieInputError(f"{p}: no 'logits.conv3d.weight': not an I3D state dict in the pytorch-i3d layout")
    model = I3D(int(state["logits.conv3d.weight"].shape[0]))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise GenieInputError(f"{p}: not an I3D state dict in the pytorch-i3d layout ({'; '.join(parts)})")
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def i3d_features(model: I3D, video: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """(n, t, c, H, W) clips in [-1, 1] → (n, num_classes) float64 embeddings (224×224 bilinear resize)."""
    n, t, c = video.shape[:3]
    if c == 1:
        video = video.expand(-1, -1, 3, -1, -1)
    elif c != 3:
        raise GenieInputError(f"I3D takes 1- or 3-channel video, got {c} channels")
    out = []
    for i in range(0, n, batch):
        v = video[i:i + batch].float().clamp(-1, 1).to(module_device(model))
        m = v.shape[0]
        x = F.interpolate(v.flatten(0, 1), size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
        out.append(model(x.view(m, t, 3, I3D_SIZE, I3D_SIZE).transpose(1, 2)).double().cpu())
    return torch.cat(out)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to rows of a (n, d) and b (m, d):
    |μa − μb|² + tr(Σa + Σb − 2 (Σa Σb)^½). tr (Σa Σb)^½ is computed as the sum of the square roots of the
    eigenvalues of the symmetric Σa^½ Σb Σa^½ (same spectrum), which stays real and stable in float64."""
    a, b = a.double(), b.double()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance needs at least 2 samples per set")
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    sa = _sqrt_psd(ca)
    mid = sa @ cb @ sa
    cross = torch.linalg.eigvalsh((mid + mid.T) / 2).clamp_min(0).sqrt().sum()
    d = (a.mean(0) - b.mean(0)).pow(2).sum() + ca.trace() + cb.trace() - 2 * cross
    return float(d.clamp_min(0))


def fvd_report(real: torch.Tensor, generated: torch.Tensor, baseline: torch.Tensor | None = None,
               frames: int | None = None, source_size: tuple[int, int] | None = None) -> dict:
    """FVD of generated vs real embeddings (and of an optional baseline), with the settings it depends on."""
    out = {"fvd": frechet_distance(real, generated), "clips": int(len(real)), "frames": frames,
           "resolution": f"{I3D_SIZE}x{I3D_SIZE} (bilinear from {source_size[0]}x{source_size[1]})" if source_size else None,
           "embedding": f"I3D logits ({real.shape[1]})"}
    if baseline is not None:
        out["fvd_copy_last_frame"] = frechet_distance(real, baseline)
    return out
