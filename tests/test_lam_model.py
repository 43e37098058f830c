"""Latent action model: config, shapes, causality (no leak of x_{t+1}), the anti-ignore guard, and a
short training on a synthetic sprite world where the true actions are known (architecture §7.1, §7.2, §7.6)."""

import json
import math

import pytest
import torch

from genie.nn import codebook_usage
from latent_actions.config import PRESETS, LatentActionConfig
from latent_actions.model import LatentActionModel

# Sprite actions as (dy, dx) unit moves: 0 stay, 1 left, 2 right, 3 up, 4 down.
MOVES = torch.tensor([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]])


def make_lam(**overrides) -> LatentActionModel:
    torch.manual_seed(0)
    return LatentActionModel(LatentActionConfig.preset("debug", **overrides))


def random_video(batch: int, frames: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, size, size, generator=g) * 2 - 1


def sprite_video(
    batch: int, frames: int, size: int = 32, sprite: int = 8, step: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright square on a dark background, moved by `step` pixels per frame by a random action.

    Returns video (b, t, 3, size, size) in [-1, 1] and actions (b, t-1), where actions[:, i] moved the
    square from frame i to frame i+1 (architecture §4). The world wraps around, so every action is possible
    everywhere and the square's position says nothing about the action.
    """
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, len(MOVES), (batch, frames - 1), generator=g)
    start = torch.randint(0, size // step, (batch, 2), generator=g) * step  # (b, 2) as (y, x)
    offsets = torch.cat([torch.zeros(batch, 1, 2, dtype=torch.long), (MOVES[actions] * step).cumsum(1)], 1)
    positions = (start[:, None] + offsets) % size  # (b, t, 2)
    base = torch.full((3, size, size), -1.0)
    base[:, :sprite, :sprite] = 1.0
    video = torch.stack(
        [torch.stack([base.roll(tuple(pos.tolist()), dims=(1, 2)) for pos in clip]) for clip in positions]
    )
    return video, actions


def majority_accuracy(codes: torch.Tensor, truth: torch.Tensor, num_codes: int, num_truth: int) -> float:
    """Accuracy when each code predicts the true action it most often co-occurs with (purity)."""
    joint = torch.zeros(num_codes, num_truth)
    joint.index_put_((codes.flatten(), truth.flatten()), torch.ones(codes.numel()), accumulate=True)
    return (joint.max(dim=1).values.sum() / codes.numel()).item()


def normalized_mutual_information(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    joint = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.float64)
    joint.index_put_((a, b), torch.ones(a.numel(), dtype=torch.float64), accumulate=True)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * (p[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum()

    def entropy(q: torch.Tensor) -> torch.Tensor:
        q = q[q > 0]
        return -(q * q.log()).sum()

    return (2 * mi / (entropy(pa) + entropy(pb)).clamp(min=1e-12)).item()


# ---- config ----------------------------------------------------------------------------------


def test_presets_build_and_round_trip_through_json():
    for name in PRESETS:
        config = LatentActionConfig.preset(name)
        data = json.loads(json.dumps(config.to_dict()))
        assert LatentActionConfig.from_dict(data) == config
    paper = LatentActionConfig.preset("coinrun-paper")
    assert (paper.depth_encoder, paper.depth_decoder, paper.width, paper.num_heads) == (8, 8, 512, 8)
    assert (paper.num_actions, paper.code_dim, paper.patch_size, paper.num_frames) == (6, 32, 16, 16)
    assert LatentActionConfig().num_actions == 8


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(image_size=60), "image_size"),
        (dict(width=33), "width"),
        (dict(num_actions=1), "num_actions"),
        (dict(num_frames=1), "num_frames"),
        (dict(depth_decoder=0), "depth_decoder"),
        (dict(dropout=1.0), "dropout"),
        (dict(decoder_mask_ratio=1.0), "decoder_mask_ratio"),
        (dict(vq_decay=-0.1), "vq_decay"),
        (dict(decoder_motion=1), "decoder_motion"),
        (dict(crop_box=[24, 24, 72, 40]), "crop_box"),
        (dict(crop_box=[24, 24, 27, 40]), "crop_box"),
        (dict(crop_box=[24, 24, 40]), "crop_box"),
        (dict(crop_box=[24, 24, 40, 40], crop_patch=0), "crop_patch"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        LatentActionConfig.preset("debug", **overrides)


def test_from_dict_rejects_unknown_keys():
    data = LatentActionConfig.preset("debug").to_dict()
    data["num_action"] = 6
    with pytest.raises(ValueError, match="num_action"):
        LatentActionConfig.from_dict(data)
    with pytest.raises(ValueError, match="unknown latent action preset"):
        LatentActionConfig.preset("huge")


# ---- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [2, 4])
def test_shapes(frames):
    model = make_lam()
    video = random_video(2, frames)
    out = model(video)
    assert out.pred.shape == (2, frames - 1, 3, 64, 64)
    assert out.actions.shape == (2, frames - 1) and out.actions.dtype == torch.int64
    assert out.action_emb.shape == (2, frames - 1, 32)
    assert out.quant_loss.ndim == 0
    model.eval()
    with torch.no_grad():
        ids = model.infer_actions(video)
        assert ids.shape == (2, frames - 1) and 0 <= ids.min() and ids.max() < model.num_actions
        assert model.decode_with_actions(video[:, :-1], ids).shape == out.pred.shape
    assert model.codebook.shape == (8, 8)  # (num_actions, code_dim) of the debug preset


def test_smaller_image_size():
    model = make_lam(image_size=32)
    assert model(random_video(1, 3, size=32)).pred.shape == (1, 2, 3, 32, 32)


def test_bad_inputs_raise_clear_errors():
    model = make_lam()
    with pytest.raises(ValueError, match="number of frames"):
        model(random_video(1, 1))
    with pytest.raises(ValueError, match="number of frames"):
        model(random_video(1, 5))
    with pytest.raises(ValueError, match=r"\(3, 64, 64\)"):
        model(torch.zeros(1, 2, 3, 32, 32))
    context = random_video(1, 2)
    with pytest.raises(ValueError, match="action ids"):
        model.decode_with_actions(context, torch.tensor([[0, 8]]))
    with pytest.raises(ValueError, match="one per context frame"):
        model.decode_with_actions(context, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="integer"):
        model.decode_with_actions(context, torch.zeros(1, 2))


def test_decode_with_inferred_actions_equals_forward():
    model = make_lam()
    video = random_video(2, 4)
    model(video)  # k-means init of the codebook
    model.eval()
    with torch.no_grad():
        out = model(video)
        ids = model.infer_actions(video)
        pred = model.decode_with_actions(video[:, :-1], ids)
    assert torch.equal(ids, out.actions)
    torch.testing.assert_close(pred, out.pred, atol=1e-6, rtol=0)


def test_decoder_never_sees_the_frame_it_predicts():
    """architecture §7.6: with actions fixed, the prediction of x_{t+1} must not depend on x_{t+1} (or later)."""
    model = make_lam().eval()
    video = random_video(2, 4)
    actions = torch.tensor([[1, 5, 2], [7, 0, 3]])
    with torch.no_grad():
        base = model.decode_with_actions(video[:, :-1], actions)  # predictions of frames 1..3
        for j in range(1, 4):  # perturb frame j: predictions of frames <= j stay, later ones move
            perturbed = video.clone()
            perturbed[:, j] = random_video(2, 1, seed=10 + j)[:, 0]
            pred = model.decode_with_actions(perturbed[:, :-1], actions)
            torch.testing.assert_close(pred[:, :j], base[:, :j], atol=1e-6, rtol=0)  # pred[:, i] is frame i+1
            if j < 3:
                assert (pred[:, j:] - base[:, j:]).abs().max() > 1e-4


def test_decoder_motion_input_and_configs_without_it():
    """With decoder_motion the decoder reads each context frame beside its change since the previous
    frame (zero for the first; the no-leak test above runs with it on), and a config written before the
    option existed (no `decoder_motion` key) builds the plain-context decoder it was trained with."""
    model = make_lam()
    assert model.config.decoder_motion and model.decoder_patch_embed.in_features == 2 * 16 * 16 * 3
    patches = model._patchify(random_video(1, 3))
    both = model._with_motion(patches)
    assert torch.equal(both[..., :768], patches) and torch.equal(both[:, 0, :, 768:], torch.zeros_like(patches[:, 0]))
    torch.testing.assert_close(both[:, 2, :, 768:], patches[:, 2] - patches[:, 1])
    old = LatentActionConfig.preset("debug").to_dict()
    del old["decoder_motion"]
    plain = LatentActionModel(LatentActionConfig.from_dict(old))
    assert not plain.config.decoder_motion and plain.decoder_patch_embed.in_features == 16 * 16 * 3


def test_encoder_is_causal():
    """a_t (transition t -> t+1) depends on frames <= t+1 only: changing frame j leaves a_{<j-1} alone."""
    model = make_lam()
    video = random_video(2, 4)
    model(video)  # k-means init
    model.eval()
    with torch.no_grad():
        base_latents = model._encode_latents(video)  # (b, 3, d), continuous: stricter than ids
        base_ids = model.infer_actions(video)
        base_pred = model(video).pred
        for j in range(1, 4):
            perturbed = video.clone()
            perturbed[:, j] = random_video(2, 1, seed=20 + j)[:, 0]
            latents = model._encode_latents(perturbed)
            torch.testing.assert_close(latents[:, : j - 1], base_latents[:, : j - 1], atol=1e-6, rtol=0)
            assert (latents[:, j - 1] - base_latents[:, j - 1]).abs().max() > 1e-4
            assert torch.equal(model.infer_actions(perturbed)[:, : j - 1], base_ids[:, : j - 1])
            # End to end: predictions of frames <= j (pred[:, :j-1] are frames 1..j-1) are untouched.
            torch.testing.assert_close(model(perturbed).pred[:, : j - 1], base_pred[:, : j - 1], atol=1e-6, rtol=0)


def test_context_masking_only_in_train_mode():
    model = make_lam(decoder_mask_ratio=0.9)
    context = random_video(4, 3)
    actions = torch.randint(0, 8, (4, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.train()
        first, second = model.decode_with_actions(context, actions), model.decode_with_actions(context, actions)
        assert (first - second).abs().max() > 1e-4  # a fresh random mask each call
        model.eval()
        first, second = model.decode_with_actions(context, actions), model.decode_with_actions(context, actions)
        assert torch.equal(first, second)
        unguarded = make_lam(decoder_mask_ratio=0.0).eval()
        unguarded.load_state_dict(model.state_dict())
        assert torch.equal(unguarded.decode_with_actions(context, actions), first)


# ---- short training on the sprite world -------------------------------------------------------


@pytest.fixture(scope="module")
def trained_on_sprites():
    """Debug LAM trained for 400 steps (~12-20 s on one busy core) on fresh sprite clips each step.

    The anti-ignore guard is off here: the sprite's next move is random, so the past never predicts
    it and the guard has nothing to prevent; masking the context only slowed learning in this setup.
    The dead-code threshold is lowered because a batch holds only 48 transitions for 8 codes.
    """
    torch.manual_seed(0)
    config = LatentActionConfig.preset(
        "debug", image_size=32, patch_size=8, decoder_mask_ratio=0.0, threshold_ema_dead_code=0.5
    )
    model = LatentActionModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    # One thread: the ops are tiny, and on busy shared cores two OpenMP threads made each step
    # ~13x slower (0.62 s vs 0.046 s) by waiting on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(400):
            video, _ = sprite_video(16, config.num_frames, seed=step)
            out = model(video)
            loss = torch.mean((out.pred - video[:, 1:]) ** 2) + out.quant_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    video, actions = sprite_video(128, config.num_frames, seed=10_000)  # held out
    with torch.no_grad():
        inferred = model.infer_actions(video)
    return model, video, actions, inferred


def test_decoder_depends_on_the_action(trained_on_sprites):
    model, video, _, inferred = trained_on_sprites
    g = torch.Generator().manual_seed(0)
    swapped = (inferred + torch.randint(1, model.num_actions, inferred.shape, generator=g)) % model.num_actions
    with torch.no_grad():
        pred = model.decode_with_actions(video[:, :-1], inferred)
        pred_swapped = model.decode_with_actions(video[:, :-1], swapped)
    target = video[:, 1:]
    mse, mse_swapped = torch.mean((pred - target) ** 2).item(), torch.mean((pred_swapped - target) ** 2).item()
    change = (pred - pred_swapped).abs().mean().item()
    delta_psnr = 10 * math.log10(mse_swapped / mse)
    print(f"\nsprite LAM: MSE inferred {mse:.4f} swapped {mse_swapped:.4f} (dPSNR {delta_psnr:.2f} dB), "
          f"mean |change| from swapping a_t {change:.4f}")
    assert change > 0.02
    assert delta_psnr > 1.0


def test_latent_actions_align_with_true_actions(trained_on_sprites):
    """architecture §7.1: the code inferred at transition t is the move between frames t and t+1."""
    model, _, actions, inferred = trained_on_sprites
    accuracy = majority_accuracy(inferred, actions, model.num_actions, len(MOVES))
    nmi = normalized_mutual_information(inferred, actions)
    # Baseline: the same codes against the true actions shifted by one step (off-by-one alignment);
    # its NMI is only the small-sample bias (~0.05 for 384 pairs in an 8 x 5 table).
    shifted_nmi = normalized_mutual_information(inferred[:, 1:], actions[:, :-1])
    usage = codebook_usage(inferred, model.num_actions)
    print(f"\nsprite LAM: majority-map accuracy {accuracy:.3f} (chance ~0.2), NMI {nmi:.3f}, "
          f"off-by-one NMI {shifted_nmi:.3f}, code usage {usage.usage:.2f}, perplexity {usage.perplexity:.2f}")
    assert accuracy > 0.45
    assert nmi > 0.25
    assert shifted_nmi < min(0.1, nmi / 3)


def test_non_square_frames_infer_and_decode():
    model = make_lam(image_size=(48, 64)).eval()  # H=48, W=64 → a 3×4 patch grid of 16 px
    assert model.config.grid == (3, 4) and model.config.tokens_per_frame == 12
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 4, 3, 48, 64, generator=g) * 2 - 1
    with torch.no_grad():
        actions = model.infer_actions(video)
        pred = model.decode_with_actions(video[:, :-1], actions)
        out = model(video)
    assert actions.shape == (2, 3) and pred.shape == (2, 3, 3, 48, 64)
    assert torch.allclose(pred, out.pred, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 48, 64\)"):
        model.infer_actions(torch.rand(1, 4, 3, 64, 64))


def test_non_causal_encoder_reads_later_frames_and_the_decoder_stays_causal():
    """encoder_causal=False (a multi-step inverse model): a_t may depend on frames after t+1, while the decoder's
    prediction of frame t+1 still depends on frames <= t and actions <= t only."""
    model = make_lam(encoder_causal=False)
    video = random_video(2, 4)
    model(video)
    model.eval()
    with torch.no_grad():
        base = model.encode_latents(video)
        later = video.clone()
        later[:, 3] = random_video(2, 1, seed=33)[:, 0]
        assert (model.encode_latents(later)[:, 0] - base[:, 0]).abs().max() > 1e-4  # transition 0 saw frame 3
        actions = torch.zeros(2, 3, dtype=torch.long)
        pred = model.decode_with_actions(video[:, :-1], actions)
        changed = video[:, :-1].clone()
        changed[:, 2] = random_video(2, 1, seed=34)[:, 0]
        torch.testing.assert_close(model.decode_with_actions(changed, actions)[:, :2], pred[:, :2], atol=1e-6, rtol=0)


def test_forward_returns_the_latents_the_codes_were_rounded_from():
    model = make_lam()
    video = random_video(2, 4)
    model(video)
    model.eval()
    with torch.no_grad():
        out = model(video)
        torch.testing.assert_close(out.latents, model.encode_latents(video))
        assert torch.equal(model.quantizer(out.latents).indices, out.actions)


def test_center_latents_quantises_each_transition_against_its_clip():
    """center_latents: the latents of a clip sum to zero (what the clip shares is removed before the codes); off, the
    latents are the encoder's own; a one-transition clip is left as it is (nothing to centre against)."""
    torch.manual_seed(0)
    plain, centred = make_lam(), make_lam(center_latents=True)
    centred.load_state_dict(plain.state_dict())
    video = random_video(2, 4)
    plain.eval(), centred.eval()
    with torch.no_grad():
        raw = plain.encode_latents(video)
        out = centred.encode_latents(video)
        torch.testing.assert_close(out, raw - raw.mean(dim=1, keepdim=True))
        torch.testing.assert_close(out.sum(dim=1), torch.zeros_like(out[:, 0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(centred.encode_latents(video[:, :2]), plain.encode_latents(video[:, :2]))
    assert LatentActionConfig.from_dict(centred.config.to_dict()).center_latents is True


def test_crop_box_adds_the_window_at_finer_patches_to_the_encoder_only():
    """crop_box: the encoder also reads exactly that window (a pixel inside moves the latent when the frame's own
    patch embedding is silenced, one outside does not), stays causal, leaves the decoder as it was, and travels with
    the config."""
    model = make_lam(crop_box=[24, 28, 32, 36], crop_patch=2)
    assert model.encoder.num_tokens == model.config.tokens_per_frame + 16
    assert LatentActionConfig.from_dict(model.config.to_dict()).crop_box == [24, 28, 32, 36]
    video = random_video(2, 4)
    model(video)  # k-means init
    model.eval()
    with torch.no_grad():
        model.encoder_patch_embed.weight.zero_()
        base = model._encode_latents(video)
        inside, outside = video.clone(), video.clone()
        inside[:, 2, :, 30, 33] = -inside[:, 2, :, 30, 33]
        outside[:, 2, :, 10, 10] = -outside[:, 2, :, 10, 10]
        assert (model._encode_latents(inside)[:, 1] - base[:, 1]).abs().max() > 1e-4
        torch.testing.assert_close(model._encode_latents(outside), base, atol=1e-6, rtol=0)
        torch.testing.assert_close(model._encode_latents(inside)[:, 0], base[:, 0], atol=1e-6, rtol=0)  # causal
    plain = make_lam()
    assert set(plain.state_dict()) == set(model.state_dict()) - {"crop_patch_embed.weight", "crop_patch_embed.bias"}
    for name, value in plain.state_dict().items():
        if name.startswith("decoder") or name == "to_pixels.weight":
            assert value.shape == model.state_dict()[name].shape


def test_spherical_kmeans_finds_known_groups():
    from latent_actions.model import spherical_kmeans

    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.eye(3, 8), dim=1)
    x = torch.nn.functional.normalize(centres.repeat_interleave(5, 0) + 0.05 * torch.randn(15, 8, generator=g), dim=1)
    weight = torch.rand(15, generator=g) + 0.1
    cent, assign = spherical_kmeans(x, weight, 3)
    assert len(set(assign.tolist())) == 3
    for grp in range(3):  # each true group lands whole in one cluster
        assert len(set(assign[grp * 5:(grp + 1) * 5].tolist())) == 1
    torch.testing.assert_close(cent.norm(dim=1), torch.ones(3))


def test_train_codes_trains_wide_and_exports_the_playable_vocabulary(tmp_path):
    from genie.export import load_export, save_export

    model = make_lam(train_codes=16)
    assert model.num_actions == 16 and model.codebook.shape[0] == 16
    video = random_video(4, 4)
    for _ in range(3):
        model(video)  # k-means init and EMA updates
    small = model.reduced()
    assert small.config.num_actions == 8 and small.config.train_codes == 0 and small.codebook.shape[0] == 8
    torch.testing.assert_close(small.codebook.norm(dim=1), torch.ones(8))
    small.eval()
    with torch.no_grad():
        ids = small.infer_actions(video)
        assert ids.max() < 8
        pred = small.decode_with_actions(video[:, :-1], ids)
        torch.testing.assert_close(small(video).pred, pred)
    save_export(small, tmp_path / "lam", "lam")
    loaded = load_export(tmp_path / "lam", "lam")
    with torch.no_grad():
        assert torch.equal(loaded.infer_actions(video), ids)
    with pytest.raises(ValueError, match="train_codes"):
        make_lam(train_codes=4)  # not wider than num_actions 8


def test_crop_box_card_is_settled_by_the_dataset_card():
    """crop_box "card" (the `cpu` preset): the card's agent_box grown by CROP_MARGIN pixels onto the crop_patch grid
    — CoinRun's box (rows 28-35, columns 29-35) gives the window the issue-23 recipe was measured with — off for
    a card without a box; an explicit box is kept; an unsettled config builds no model."""
    from data_pipelines.coinrun import AGENT_BOX

    cfg = LatentActionConfig.preset("cpu")
    assert cfg.crop_box == "card" and LatentActionConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.with_card({"agent_box": AGENT_BOX}).crop_box == [26, 26, 38, 38]
    assert cfg.with_card({}).crop_box is None
    edge = cfg.with_card({"agent_box": {"top": 0, "left": 61, "bottom": 5, "right": 64}}).crop_box
    assert edge == [0, 58, 8, 64]  # clipped to the frame, still on the 2-pixel grid
    fixed = LatentActionConfig.preset("cpu", crop_box=[24, 28, 32, 36])
    assert fixed.with_card({}).crop_box == [24, 28, 32, 36]
    with pytest.raises(ValueError, match="with_card"):
        LatentActionModel(cfg)
    settled = LatentActionModel(cfg.with_card({"agent_box": AGENT_BOX}))
    assert settled.encoder.num_tokens == settled.config.tokens_per_frame + 36
