"""Dynamics model: config, causality in frames and actions, action alignment, KV cache, overfit + MaskGIT rollout."""

import json

import pytest
import torch
import torch.nn.functional as F

from dynamics.config import PRESETS, DynamicsConfig
from dynamics.maskgit import maskgit_decode, training_mask
from dynamics.model import DynamicsModel

# action conditioning, "+prev" for prev_token_input, "+copy" for copy_gate
MODES = ["additive", "token", "additive+prev", "additive+prev+copy"]


def mode_config(mode: str) -> dict:
    conditioning, *extras = mode.split("+")
    return {"action_conditioning": conditioning, "prev_token_input": "prev" in extras, "copy_gate": "copy" in extras}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models run fastest on one intra-op thread; two threads on a shared, busy 2-core machine
    # were 15x slower here (OpenMP contention).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(**overrides) -> DynamicsModel:
    torch.manual_seed(0)
    return DynamicsModel(DynamicsConfig.preset("debug", **overrides)).eval()


def random_clip(config: DynamicsConfig, batch: int = 2, seed: int = 0, mask_frac: float = 0.3):
    """(tokens (b, t, h, w) with some MASK ids, actions (b, t - 1))."""
    g = torch.Generator().manual_seed(seed)
    t, (h, w) = config.num_frames, config.grid
    tokens = torch.randint(0, config.vocab_size, (batch, t, h, w), generator=g)
    tokens[torch.rand(tokens.shape, generator=g) < mask_frac] = config.mask_id
    actions = torch.randint(0, config.num_actions, (batch, t - 1), generator=g)
    return tokens, actions


def rollout(model: DynamicsModel, prompt: torch.Tensor, actions: torch.Tensor, generator, **decode_kwargs):
    """Generate frames 1..T-1 from frame 0 (b, 1, h, w) and actions (b, T-1), one frame at a time.

    The cache holds the clean frames <= t; the MaskGIT loop for frame t+1 queries it (it is never
    changed by those calls); the chosen tokens are then committed with one more forward.
    """
    cfg = model.config
    b, (h, w), n = prompt.shape[0], cfg.grid, cfg.tokens_per_frame
    frames = [prompt]
    _, cache = model(prompt, actions[:, :0], return_cache=True)
    for t in range(actions.shape[1]):
        past_actions = actions[:, : t + 1]  # a_0..a_t; a_t leads to the new frame t+1

        def logits_fn(x):  # called within this iteration only
            return model(x.view(b, 1, h, w), past_actions, cache=cache, prev_tokens=frames[-1]).reshape(b, n, -1)  # noqa: B023

        frame = maskgit_decode(logits_fn, n, mask_id=cfg.mask_id, batch_size=b, generator=generator,
                               **decode_kwargs).view(b, 1, h, w)
        _, cache = model(frame, past_actions, cache=cache, return_cache=True, prev_tokens=frames[-1])
        frames.append(frame)
    return torch.cat(frames, dim=1)


# ---- config ----------------------------------------------------------------------------------


def test_presets_build_and_round_trip_through_json():
    for name in PRESETS:
        config = DynamicsConfig.preset(name)
        data = json.loads(json.dumps(config.to_dict()))
        assert DynamicsConfig.from_dict(data) == config
    paper = DynamicsConfig.preset("coinrun-paper")
    assert (paper.depth, paper.width, paper.num_heads, paper.vocab_size) == (12, 512, 8, 1024)
    assert (paper.grid, paper.num_frames, paper.mask_id) == ((16, 16), 16, 1024)
    assert DynamicsConfig.preset("debug", action_conditioning="token").action_conditioning == "token"


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(width=33), "width"),
        (dict(grid=(4,)), "grid"),
        (dict(grid=(4, 0)), "grid"),
        (dict(vocab_size=1), "vocab_size"),
        (dict(num_actions=0), "num_actions"),
        (dict(depth=0), "depth"),
        (dict(num_frames=1), "num_frames"),
        (dict(dropout=1.0), "dropout"),
        (dict(action_conditioning="cross"), "action_conditioning"),
        (dict(copy_gate=True), "copy_gate needs prev_token_input"),
    ],
)
def test_config_validation_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        DynamicsConfig.preset("debug", **overrides)


def test_from_dict_rejects_unknown_keys():
    data = DynamicsConfig.preset("debug").to_dict()
    with pytest.raises(ValueError, match="widht"):
        DynamicsConfig.from_dict({**data, "widht": 64})
    with pytest.raises(ValueError, match="unknown dynamics preset"):
        DynamicsConfig.preset("huge")


# ---- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_shapes_and_input_checks(mode):
    model = make_model(**mode_config(mode))
    tokens, actions = random_clip(model.config)
    with torch.no_grad():
        assert model(tokens, actions).shape == (2, 4, 8, 8, 32)
        assert model(tokens[:, :1], None).shape == (2, 1, 8, 8, 32)
    with pytest.raises(ValueError, match="actions"):
        model(tokens, actions[:, :2])
    with pytest.raises(ValueError, match="tokens"):
        model(tokens.flatten(2), actions)
    with pytest.raises(ValueError, match="frames"):
        model(torch.cat([tokens, tokens], dim=1), torch.cat([actions, actions, actions[:, :1]], dim=1))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("frame", [1, 2, 3])
def test_future_tokens_do_not_change_the_past(mode, frame):
    # architecture §7.2: changing frame t+1 (and later) leaves every output at <= t unchanged.
    model = make_model(**mode_config(mode))
    tokens, actions = random_clip(model.config)
    perturbed = tokens.clone()
    perturbed[:, frame:] = torch.randint(0, 33, perturbed[:, frame:].shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out, out_perturbed = model(tokens, actions), model(perturbed, actions)
    torch.testing.assert_close(out_perturbed[:, :frame], out[:, :frame], atol=1e-6, rtol=0)
    assert (out_perturbed[:, frame] - out[:, frame]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("t", [0, 1, 2])
def test_action_a_t_conditions_frame_t_plus_1_only(mode, t):
    # architecture §7.1: a_t (between frames t and t+1) moves the logits of frame t+1 — already at init —
    # and of nothing earlier.
    model = make_model(**mode_config(mode))
    tokens, actions = random_clip(model.config)
    changed = actions.clone()
    changed[:, t] = (changed[:, t] + 1) % model.config.num_actions
    with torch.no_grad():
        out, out_changed = model(tokens, actions), model(tokens, changed)
    torch.testing.assert_close(out_changed[:, : t + 1], out[:, : t + 1], atol=1e-6, rtol=0)
    assert (out_changed[:, t + 1] - out[:, t + 1]).abs().amax(dim=(1, 2, 3)).min() > 1e-5  # exactly 0 if a_t were ignored; small at init in token mode


@pytest.mark.parametrize("mode", MODES)
def test_cached_incremental_forward_equals_full_forward(mode):
    model = make_model(**mode_config(mode))
    tokens, actions = random_clip(model.config)
    with torch.no_grad():
        full = model(tokens, actions)
        out_a, cache = model(tokens[:, :2], actions[:, :1], return_cache=True)
        out_b, cache = model(tokens[:, 2:3], actions[:, :2], cache=cache, return_cache=True, prev_tokens=tokens[:, 1:2])
        # Querying the cache (as a MaskGIT loop does) leaves it unchanged and gives the same answer.
        out_c = model(tokens[:, 3:], actions, cache=cache, prev_tokens=tokens[:, 2:3])
        assert cache.num_frames == 3
        out_c_again = model(tokens[:, 3:], actions, cache=cache, prev_tokens=tokens[:, 2:3])
    torch.testing.assert_close(torch.cat([out_a, out_b, out_c], dim=1), full, atol=1e-5, rtol=0)
    assert torch.equal(out_c, out_c_again)
    with pytest.raises(ValueError, match="actions"):
        model(tokens[:, 3:], actions[:, 2:], cache=cache)


@pytest.mark.parametrize("mode", MODES)
def test_overfit_two_clips_then_maskgit_rollout_reproduces_them(mode):
    # Two clips share frame 0 and differ from frame 1 on, as do their actions: only a_0 tells
    # which frame 1 to generate (architecture §7.1). Teacher-forced masked CE at per-sample rates
    # (frame 0 kept as context), then frames 1..T-1 generated frame by frame from frame 0 with
    # each clip's true actions, through the KV cache.
    torch.manual_seed(0)
    config = DynamicsConfig.preset("debug", **mode_config(mode))
    model = DynamicsModel(config)
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, config.vocab_size, (2, config.num_frames, *config.grid), generator=g)
    clips[1, 0] = clips[0, 0]
    actions = torch.tensor([[0, 1, 2], [5, 1, 2]])[:, : config.num_frames - 1]
    tokens, acts = clips.repeat(8, 1, 1, 1), actions.repeat(8, 1)  # batch of 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(200):
        mask = training_mask(tokens.shape, generator=g, keep_first_frames=1)
        prev = torch.cat([torch.full_like(tokens[:, :1], config.mask_id), tokens[:, :-1]], dim=1)  # clean
        logits = model(torch.where(mask, config.mask_id, tokens), acts, prev_tokens=prev)
        loss = F.cross_entropy(logits[mask].float(), tokens[mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]

    model.eval()
    with torch.no_grad():
        generated = rollout(model, clips[:, :1], actions, torch.Generator().manual_seed(1), steps=8)
        swapped = rollout(model, clips[:, :1], actions.flip(0), torch.Generator().manual_seed(1), steps=8)
    accuracy = (generated[:, 1:] == clips[:, 1:]).float().mean().item()
    assert accuracy >= 0.95, f"rollout token accuracy {accuracy:.3f}"
    # Same prompt, the other clip's actions: the other clip's frames.
    swapped_accuracy = (swapped[:, 1:] == clips.flip(0)[:, 1:]).float().mean().item()
    assert swapped_accuracy >= 0.95, f"rollout token accuracy with swapped actions {swapped_accuracy:.3f}"


def test_copy_gate_predicts_the_previous_frame_before_any_training():
    """An untrained model with the copy gate reads "unchanged" at every position of frames 1.. (copy-last's
    accuracy from step 0); frame 0 has no previous frame and gets no bonus; the gate is trainable."""
    model = make_model(prev_token_input=True, copy_gate=True)
    tokens, actions = random_clip(model.config, mask_frac=0.0)
    masked = torch.full_like(tokens, model.mask_id)
    masked[:, 0] = tokens[:, 0]
    prev = torch.cat([torch.full_like(tokens[:, :1], model.mask_id), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(masked, actions, prev_tokens=prev)
        plain = make_model(prev_token_input=True)(masked, actions, prev_tokens=prev)
    assert torch.equal(logits.argmax(-1)[:, 1:], tokens[:, :-1])
    assert (plain.argmax(-1)[:, 1:] == tokens[:, :-1]).float().mean() < 0.2
    p_prev = logits[:, 1:].softmax(-1).gather(-1, tokens[:, :-1, ..., None])
    assert abs(p_prev.mean().item() - 0.5) < 0.05 and 0.3 < p_prev.min() and p_prev.max() < 0.7
    with torch.no_grad():
        model.copy_gate.bias.zero_()
        no_bonus = model(masked, actions, prev_tokens=prev)
    assert torch.equal(no_bonus[:, 0], logits[:, 0])  # frame 0: no previous token, no bonus
    assert (no_bonus[:, 1:] - logits[:, 1:]).abs().amax() > 1.0
    assert model.copy_gate.bias.requires_grad


def test_forward_on_a_non_square_grid():
    model = make_model(grid=(6, 8))  # 48×64 frames through the debug tokenizer's patch 8
    tokens = torch.randint(0, 32, (2, 3, 6, 8))
    actions = torch.randint(0, 8, (2, 2))
    logits = model(tokens, actions)
    assert logits.shape == (2, 3, 6, 8, model.config.vocab_size)
    # causal in time on the h×w grid too: changing the last frame leaves earlier outputs alone
    other = tokens.clone()
    other[:, -1] = (other[:, -1] + 1) % 32
    assert torch.allclose(model(other, actions)[:, :-1], logits[:, :-1], atol=1e-5)
    with pytest.raises(ValueError, match=r"\(6, 8\)"):
        model(torch.randint(0, 32, (2, 3, 8, 6)), actions)


def test_prev_token_input_reads_the_previous_frame_only_and_needs_it_with_a_cache():
    """Frame i's logits move with frame i-1's tokens through the prev embedding (and with nothing later);
    the models without it ignore `prev_tokens`; a cached call must say what the previous frame was."""
    model = make_model(prev_token_input=True)
    tokens, actions = random_clip(model.config, mask_frac=0.0)
    with torch.no_grad():
        base = model(tokens, actions)
        other = model(tokens, actions, prev_tokens=torch.full_like(tokens, model.mask_id))  # "no previous frame"
        assert torch.equal(other[:, 0], base[:, 0])  # frame 0 has none either way
        assert (other[:, 1:] - base[:, 1:]).abs().amax(dim=(0, 2, 3, 4)).min() > 1e-5
        _, cache = model(tokens[:, :2], actions[:, :1], return_cache=True)
        with pytest.raises(ValueError, match="prev_tokens"):
            model(tokens[:, 2:3], actions[:, :2], cache=cache)
        with pytest.raises(ValueError, match="prev_tokens must be"):
            model(tokens, actions, prev_tokens=tokens[:, :2])
        plain = make_model()
        assert torch.equal(plain(tokens, actions), plain(tokens, actions, prev_tokens=torch.zeros_like(tokens)))
    assert "prev_embed.weight" in model.state_dict() and "prev_embed.weight" not in plain.state_dict()
