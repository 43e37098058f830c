"""Video tokenizer: config validation, shapes, causality, encode/decode consistency, overfit."""

import json

import pytest
import torch

from tokenizer.config import PRESETS, TokenizerConfig
from tokenizer.model import VideoTokenizer


def make_tokenizer(**overrides) -> VideoTokenizer:
    torch.manual_seed(0)
    model = VideoTokenizer(TokenizerConfig.preset("debug", **overrides))
    if model.refine is not None:  # the conv head's refinement starts at zero: give it weights so checks bite
        torch.nn.init.normal_(model.refine[-1].weight, std=0.1)
    return model


# the quantizers, and the conv stem/head (conv_channels) around the ST blocks
VARIANTS = pytest.mark.parametrize("overrides", [dict(quantizer="vq"), dict(quantizer="fsq"), dict(conv_channels=8)],
                                   ids=["vq", "fsq", "conv"])


def moving_squares(batch: int, frames: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """(b, t, 3, size, size) in [-1, 1]: a coloured square sliding right over a flat background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    video = torch.empty(batch, frames, 3, size, size)
    for i in range(batch):
        fg, bg = torch.rand(2, 3, 1, 1, generator=g) * 2 - 1
        x0, y0 = torch.randint(0, size - 16, (2,), generator=g).tolist()
        for j in range(frames):
            inside = (xx >= x0 + 4 * j) & (xx < x0 + 4 * j + 16) & (yy >= y0) & (yy < y0 + 16)
            video[i, j] = torch.where(inside, fg, bg)
    return video


# ---- config ----------------------------------------------------------------------------------


def test_presets_build_and_round_trip_through_json():
    for name in PRESETS:
        config = TokenizerConfig.preset(name)
        data = json.loads(json.dumps(config.to_dict()))
        assert TokenizerConfig.from_dict(data) == config
    paper = TokenizerConfig.preset("coinrun-paper")
    assert (paper.depth_encoder, paper.depth_decoder, paper.width, paper.num_heads) == (8, 8, 512, 8)
    assert (paper.codebook_size, paper.patch_size, paper.code_dim, paper.num_frames) == (1024, 4, 32, 16)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(image_size=60), "image_size"),
        (dict(width=33), "width"),
        (dict(quantizer="lfq"), "quantizer"),
        (dict(quantizer="fsq", fsq_levels=(8, 5, 5, 5)), "codebook_size"),
        (dict(fsq_levels=(8, 2)), "fsq_levels"),
        (dict(depth_encoder=0), "depth_encoder"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        TokenizerConfig.preset("debug", **overrides)


def test_from_dict_rejects_unknown_keys():
    data = TokenizerConfig.preset("debug").to_dict()
    data["widht"] = 64
    with pytest.raises(ValueError, match="widht"):
        TokenizerConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        TokenizerConfig.preset("huge")


# ---- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
@pytest.mark.parametrize("frames", [1, 4])
def test_shapes(quantizer, frames):
    model = make_tokenizer(quantizer=quantizer)
    video = moving_squares(2, frames)
    out = model(video)
    assert out.recon.shape == video.shape
    assert out.indices.shape == (2, frames, 8, 8) and out.indices.dtype == torch.int64
    assert out.quant_loss.ndim == 0
    model.eval()
    ids = model.encode(video)
    assert ids.shape == (2, frames, 8, 8) and ids.dtype == torch.int64
    assert 0 <= ids.min() and ids.max() < model.codebook_size
    assert model.decode(ids).shape == video.shape


def test_smaller_image_size():
    model = make_tokenizer(image_size=32)
    assert model(moving_squares(1, 2, size=32)).indices.shape == (1, 2, 4, 4)


def test_bad_inputs_raise_clear_errors():
    model = make_tokenizer()
    with pytest.raises(ValueError, match=r"\(3, 64, 64\).*\(1, 2, 3, 32, 32\)"):
        model(torch.zeros(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="c, H, W"):
        model.encode(torch.zeros(1, 2, 1, 64, 64))
    with pytest.raises(ValueError, match="number of frames"):
        model(torch.zeros(1, 5, 3, 64, 64))
    with pytest.raises(ValueError, match="token ids"):
        model.decode(torch.zeros(1, 2, 4, 4, dtype=torch.long))


@VARIANTS
def test_decode_of_encode_equals_forward_recon(overrides):
    model = make_tokenizer(**overrides)
    video = moving_squares(2, 4)
    model(video)  # k-means init in train mode
    model.eval()
    with torch.no_grad():
        out = model(video)
        ids = model.encode(video)
        recon = model.decode(ids)
    assert torch.equal(ids, out.indices)
    assert torch.equal(recon, out.recon)


@VARIANTS
def test_encode_and_reconstruction_are_causal(overrides):
    model = make_tokenizer(**overrides)
    video = moving_squares(2, 4)
    model(video)
    model.eval()
    perturbed = video.clone()
    perturbed[:, 2] = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        out, out_perturbed = model(video), model(perturbed)
    assert torch.equal(out_perturbed.indices[:, :2], out.indices[:, :2])
    torch.testing.assert_close(out_perturbed.recon[:, :2], out.recon[:, :2], atol=1e-6, rtol=0)
    assert (out_perturbed.recon[:, 2] - out.recon[:, 2]).abs().max() > 1e-4


@pytest.mark.parametrize("conv_channels", [0, 8])
def test_few_step_overfit_lowers_reconstruction_loss(conv_channels):
    model = make_tokenizer(conv_channels=conv_channels)
    video = moving_squares(2, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        out = model(video)
        mse = torch.mean((out.recon - video) ** 2)
        optimizer.zero_grad()
        (mse + out.quant_loss).backward()
        optimizer.step()
        losses.append(mse.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def test_non_square_frames_round_trip_and_export(tmp_path):
    from genie.export import load_export, save_export

    model = make_tokenizer(image_size=(48, 64)).eval()  # H=48, W=64 → a 6×8 token grid
    assert model.config.frame_size == (48, 64) and model.config.grid == (6, 8) and model.config.tokens_per_frame == 48
    video = torch.rand(2, 3, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        ids = model.encode(video)
        recon = model.decode(ids)
    assert ids.shape == (2, 3, 6, 8) and recon.shape == video.shape
    assert torch.allclose(recon, model(video).recon, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 48, 64\)"):
        model.encode(torch.rand(1, 2, 3, 64, 48))  # transposed frames are refused, not silently reshaped
    save_export(model, tmp_path / "tok", "tokenizer")
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["genie_config"]["image_size"] == [48, 64]
    loaded = load_export(tmp_path / "tok", "tokenizer")
    assert loaded.config == model.config and loaded.config.image_size == (48, 64)
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), ids) and torch.equal(loaded.decode(ids), recon)


@pytest.mark.parametrize("size", [(48, 60), (48,), [0, 64], "64"])
def test_bad_image_size_pairs_are_refused(size):
    with pytest.raises(ValueError, match="image_size"):
        TokenizerConfig.preset("debug", image_size=size)


def test_square_int_configs_load_unchanged():
    cfg = TokenizerConfig.from_dict(TokenizerConfig.preset("debug").to_dict())
    assert cfg.image_size == 64 and cfg.grid == (8, 8)


def test_conv_stem_and_head_start_as_the_linear_head():
    torch.manual_seed(0)
    model = VideoTokenizer(TokenizerConfig.preset("debug", conv_channels=8))
    plain = make_tokenizer()
    assert model.stem is not None and plain.stem is None and plain.refine is None
    assert torch.count_nonzero(model.refine[-1].weight) == 0 and torch.count_nonzero(model.refine[-1].bias) == 0
    with pytest.raises(ValueError, match="conv_channels"):
        TokenizerConfig.preset("debug", conv_channels=-1)
