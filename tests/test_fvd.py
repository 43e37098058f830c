"""FVD: the Fréchet distance against closed forms, the I3D layout and loading, and `genie evaluate --i3d`."""

from __future__ import annotations

import json

import pytest
import torch

from data_pipelines.storage import DatasetWriter
from genie.core.errors import GenieInputError
from genie.eval_results import markdown_table
from genie.evaluate import evaluate
from genie.fvd import I3D, frechet_distance, i3d_features, load_i3d, same_pad
from tests.conftest import coded_episode, run_genie
from tests.test_world_model import world  # noqa: F401  (fixture)


def random_i3d(num_classes: int, seed: int = 0) -> I3D:
    """A randomly initialised I3D whose features still depend on the input (He init keeps the signal alive
    through the 60 layers; PyTorch's default conv init lets it fade to a constant)."""
    torch.manual_seed(seed)
    net = I3D(num_classes)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.eval()


def test_frechet_distance_matches_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # diagonal Gaussians: |Δμ|² + Σ (σa − σb)²
    b = a * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    sa, sb = a.std(0), b.std(0)
    expect = float((a.mean(0) - b.mean(0)).pow(2).sum() + (sa - sb).pow(2).sum())
    assert frechet_distance(a, b) == pytest.approx(expect, rel=1e-6)
    # full, non-commuting covariances: tr (ΣaΣb)^½ from the eigenvalues of the non-symmetric product
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    y = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 0.5
    cx, cy = torch.cov(x.T), torch.cov(y.T)
    cross = torch.linalg.eigvals(cx @ cy).real.clamp_min(0).sqrt().sum()
    expect = float((x.mean(0) - y.mean(0)).pow(2).sum() + cx.trace() + cy.trace() - 2 * cross)
    assert frechet_distance(x, y) == pytest.approx(expect, rel=1e-6)
    assert frechet_distance(y, x) == pytest.approx(expect, rel=1e-6)


def test_same_padding_follows_tensorflow():
    x = torch.ones(1, 1, 7, 224, 223)
    y = same_pad(x, (7, 7, 7), (2, 2, 2))
    # 224 even: total max(7-2,0)=5 → (2, 3); 223 odd: 7 - 223 % 2 = 6 → (3, 3); 7 odd: 6 → (3, 3)
    assert y.shape == (1, 1, 13, 229, 229)
    assert y[0, 0, 3, 2, 3] == 1 and y[0, 0, 3, 1, 3] == 0 and y[0, 0, 3, -4, 3] == 1 and y[0, 0, 3, -3, 3] == 0


def test_i3d_layout_matches_the_common_pytorch_port():
    sd = I3D(400).state_dict()
    shapes = {"Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7), "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
              "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3), "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
              "Mixed_5c.b3b.bn.running_var": (128,), "logits.conv3d.weight": (400, 1024, 1, 1, 1),
              "logits.conv3d.bias": (400,)}
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert not any(k.startswith("logits.bn") for k in sd) and "Conv3d_1a_7x7.conv3d.bias" not in sd
    # 9 inception blocks × 6 units + 3 stem units, each conv + 5 batch-norm entries; the head conv + bias
    assert len(sd) == (9 * 6 + 3) * 6 + 2


def test_load_i3d_round_trip_and_clear_errors(tmp_path):
    from safetensors.torch import save_file

    net = random_i3d(7)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, tmp_path / "i3d.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "i3d.pt")
    video = torch.rand(2, 9, 3, 32, 32) * 2 - 1
    ref = i3d_features(net, video)
    assert ref.shape == (2, 7) and ref.dtype == torch.float64
    for name in ("i3d.safetensors", "i3d.pt"):
        assert torch.equal(i3d_features(load_i3d(tmp_path / name), video), ref)
    assert not torch.allclose(i3d_features(net, video.flip(1)), ref)  # sees the order of frames
    gray = i3d_features(net, video[:, :, :1])
    assert torch.allclose(gray, i3d_features(net, video[:, :, :1].expand(-1, -1, 3, -1, -1)))
    bad = dict(sd)
    bad.pop("Mixed_4c.b2b.bn.running_mean")
    save_file(bad, tmp_path / "bad.safetensors")
    torch.save(net, tmp_path / "module.pt")  # a pickled module: refused, never unpickled
    (tmp_path / "x.onnx").write_bytes(b"0")
    for name, msg in (("missing.pt", "no such"), ("bad.safetensors", "missing Mixed_4c.b2b.bn.running_mean"),
                      ("module.pt", "weights-only"), ("x.onnx", ".safetensors")):
        with pytest.raises(GenieInputError, match=msg):
            load_i3d(tmp_path / name)


def test_evaluate_with_i3d_reports_fvd(world, tmp_path):  # noqa: F811
    from safetensors.torch import save_file

    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8, card={}) as w:
        for e in range(3):
            w.add_episode(coded_episode(e, 12, h=64, w=64), "test")
        w.close()
    save_file({k: v.contiguous() for k, v in random_i3d(16).state_dict().items()}, tmp_path / "i3d.safetensors")
    kw = dict(split="test", num_clips=6, seed=1, steps=2, horizon=3, delta_t=2, progress=False,
              i3d=tmp_path / "i3d.safetensors")
    a = evaluate(world / "world", data, **kw)
    assert a == evaluate(world / "world", data, **kw)
    f = a.fvd
    assert f.clips == 6 and f.frames == 4 and f.fvd > 0 and f.fvd_copy_last_frame >= 0
    assert "fvd" not in a.to_dict()["world_model"] and "FVD (6 clips of 4 frames" in markdown_table(a)
    only_tok = evaluate(world / "tokenizer", data, **kw)
    assert only_tok.fvd.startswith("not computed") and "dynamics" in only_tok.fvd
    p = run_genie("evaluate", "--model", world / "world", "--data", data, "--out", tmp_path / "e.json",
                  "--i3d", tmp_path / "nope.pt", "--quiet")
    assert p.returncode == 2 and "nope.pt: no such I3D weights file" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "e.json").exists()
    assert json.loads(json.dumps(a.to_dict()))["fvd"]["fvd"] == f.fvd
