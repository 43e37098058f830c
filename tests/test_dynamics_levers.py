"""Issue 24's dynamics levers for stable rollouts: context corruption and action dropout while training,
classifier-free guidance and top-k when sampling. Each is off by default, and off changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from dynamics.config import DynamicsConfig
from dynamics.maskgit import maskgit_decode
from dynamics.model import DynamicsModel
from dynamics.module import DynamicsModule, corrupt_tokens
from genie.core.errors import GenieInputError
from genie.export import load_export, save_export
from genie.sampling import MAX_GUIDANCE, SamplingSettings, rollout_tokens
from genie.world_model import WorldModel
from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionModel
from tests.conftest import ROOT
from tests.test_world_model import genie_in_process, one_error_line, world  # noqa: F401  (module-scoped debug model)
from tokenizer.config import TokenizerConfig
from tokenizer.model import VideoTokenizer

MODES = ["additive", "token"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(**overrides) -> DynamicsModel:
    torch.manual_seed(0)
    return DynamicsModel(DynamicsConfig.preset("debug", **overrides)).eval()


def clip(cfg: DynamicsConfig, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (b, cfg.num_frames, *cfg.grid), generator=g)
    actions = torch.randint(0, cfg.num_actions, (b, cfg.num_frames - 1), generator=g)
    return tokens, actions


# ---- the null action ---------------------------------------------------------------------------


def test_null_action_is_off_by_default_and_old_exports_load(tmp_path):
    model = make_model()
    assert model.config.null_action is False and model.null_action is None
    assert not any("null_action" in k for k in model.state_dict())  # today's parameters, nothing added
    save_export(model, tmp_path / "old", "dynamics")
    cfg_file = tmp_path / "old" / "config.json"
    raw = json.loads(cfg_file.read_text())
    raw.pop("null_action", None)  # an export written before the field existed
    cfg_file.write_text(json.dumps(raw))
    old = load_export(tmp_path / "old", "dynamics")
    assert old.config.null_action is False
    tokens, actions = clip(model.config)
    torch.testing.assert_close(old(tokens, actions), model(tokens, actions))

    new = make_model(null_action=True)
    save_export(new, tmp_path / "new", "dynamics")
    back = load_export(tmp_path / "new", "dynamics")
    assert back.config.null_action is True
    torch.testing.assert_close(back.null_action, new.null_action)


@pytest.mark.parametrize("mode", MODES)
def test_a_null_action_changes_the_frame_it_leads_to_only(mode):
    model = make_model(null_action=True, action_conditioning=mode)
    tokens, actions = clip(model.config)
    null = torch.zeros_like(actions, dtype=torch.bool)
    null[:, 1] = True  # a_1: leads from frame 1 to frame 2
    plain, dropped = model(tokens, actions), model(tokens, actions, null_actions=null)
    torch.testing.assert_close(dropped[:, :2], plain[:, :2])  # frames 0, 1 do not see a_1
    assert not torch.allclose(dropped[:, 2], plain[:, 2])
    # "unknown" is one embedding: whatever the dropped action was, the prediction is the same
    other = actions.clone()
    other[:, 1] = (actions[:, 1] + 1) % model.config.num_actions
    torch.testing.assert_close(model(tokens, other, null_actions=null), dropped)


def test_null_actions_need_a_model_with_a_null_action():
    model = make_model()
    tokens, actions = clip(model.config)
    with pytest.raises(ValueError, match="no null action"):
        model(tokens, actions, null_actions=torch.ones_like(actions, dtype=torch.bool))
    with pytest.raises(ValueError, match="shaped like actions"):
        make_model(null_action=True)(tokens, actions, null_actions=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="null_action must be true or false"):
        DynamicsConfig.preset("debug", null_action="yes")


# ---- training-time levers ------------------------------------------------------------------------


def test_corrupt_tokens_draws_one_rate_per_clip_below_the_maximum():
    tokens = torch.zeros(64, 4, 8, 8, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    noisy = corrupt_tokens(tokens, 0.5, 32, g)
    assert noisy.dtype == tokens.dtype and noisy.shape == tokens.shape
    assert 0 <= noisy.min() and noisy.max() < 32
    changed = (noisy != 0).flatten(1).float().mean(1)  # per clip (a random id is 0 1 time in 32)
    assert changed.max() < 0.5 and changed.min() < 0.05 and changed.std() > 0.08  # U(0, 0.5) per clip
    assert 0.18 < changed.mean() < 0.3
    again = corrupt_tokens(tokens, 0.5, 32, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert torch.equal(corrupt_tokens(tokens, 0.0, 32, g), tokens)


class Spy:
    """Records what the module feeds the model."""

    def __init__(self, forward):
        self.forward, self.calls = forward, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.forward(*args, **kwargs)


def spied_step(module: DynamicsModule, batch: dict, seed: int = 0):
    spy = Spy(module.model.forward)
    module.model.forward = spy  # nn.Module.__call__ looks up forward on the instance
    torch.manual_seed(seed)
    try:
        loss = module.training_step(batch, 0)
    finally:
        del module.model.forward
    (args, kwargs), = spy.calls
    return loss, args, kwargs


def module_for(cfg: DynamicsConfig, **kw) -> DynamicsModule:
    torch.manual_seed(0)
    module = DynamicsModule(cfg, **kw)
    module.log = module.log_dict = lambda *a, **k: None  # no trainer here
    return module


@pytest.mark.parametrize("mode", MODES)
def test_context_noise_corrupts_what_the_model_sees_not_what_it_is_scored_on(mode):
    cfg = DynamicsConfig.preset("debug", action_conditioning=mode, prev_token_input=True)
    tokens, actions = clip(cfg, b=8)
    batch = {"tokens": tokens, "actions": actions}
    loss0, (inp0, _), kw0 = spied_step(module_for(cfg), batch)
    loss1, (inp1, _), kw1 = spied_step(module_for(cfg, context_noise=0.6), batch)
    mask = kw1["where"]
    assert torch.equal(mask, kw0["where"])  # the masks come first: the same draws with and without noise
    assert torch.equal(inp0[~mask], tokens[~mask])  # off: the visible tokens are the clip's
    seen = (inp1 != tokens) & ~mask
    assert seen.any() and seen.float().sum() / (~mask).sum() < 0.6
    assert (inp1[mask] == cfg.mask_id).all()  # masked positions stay MASK: targets are never shown
    prev = kw1["prev_tokens"][:, 1:]  # the previous frame as the model reads it: noisy too, as when sampling
    assert (prev != tokens[:, :-1]).any()
    # the loss still scores the clean tokens: recompute it from the logits of the noisy input
    model = module_for(cfg, context_noise=0.6).model
    logits = model(inp1, actions, prev_tokens=kw1["prev_tokens"], where=mask)
    torch.testing.assert_close(loss1, F.cross_entropy(logits, tokens[mask]))
    assert not torch.isclose(loss0, loss1)


def test_levers_off_draw_nothing_so_the_default_step_is_unchanged():
    cfg = DynamicsConfig.preset("debug", null_action=True)
    tokens, actions = clip(cfg, b=4)
    batch = {"tokens": tokens, "actions": actions}
    loss_a, _, kw = spied_step(module_for(cfg), batch)
    after_a = torch.rand(1)
    loss_b, _, _ = spied_step(module_for(cfg, context_noise=0.0, action_dropout=0.0), batch)
    after_b = torch.rand(1)
    assert kw["null_actions"] is None
    torch.testing.assert_close(loss_a, loss_b)
    assert torch.equal(after_a, after_b)  # the global generator advanced by the same draws


@pytest.mark.parametrize("mode", MODES)
def test_action_dropout_replaces_actions_by_the_null_action(mode):
    cfg = DynamicsConfig.preset("debug", null_action=True, action_conditioning=mode)
    tokens, actions = clip(cfg, b=64)
    batch = {"tokens": tokens, "actions": actions}
    _, _, kw = spied_step(module_for(cfg, action_dropout=0.25), batch)
    share = kw["null_actions"].float().mean()
    assert kw["null_actions"].shape == actions.shape and 0.15 < share < 0.35
    _, _, kw = spied_step(module_for(cfg, action_dropout=1.0), batch)
    assert kw["null_actions"].all()
    with pytest.raises(ValueError, match="needs model.config.null_action"):
        DynamicsModule(DynamicsConfig.preset("debug"), action_dropout=0.1)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match="must be a number in"):
            DynamicsModule(cfg, context_noise=bad)


@pytest.mark.parametrize("mode", MODES)
def test_training_with_both_levers_lowers_the_loss(mode):
    """A few optimiser steps on one clip with context noise and action dropout, for either conditioning."""
    cfg = DynamicsConfig.preset("debug", null_action=True, action_conditioning=mode)
    module = module_for(cfg, context_noise=0.3, action_dropout=0.2, lr=3e-3)
    tokens, actions = clip(cfg, b=2)
    opt = torch.optim.AdamW(module.model.parameters(), lr=3e-3)
    module.model.train()
    losses = []
    torch.manual_seed(0)
    for _ in range(40):
        loss = module.training_step({"tokens": tokens, "actions": actions}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert module.model.null_action.grad is not None and module.model.null_action.grad.abs().sum() > 0


# ---- sampling: top-k and classifier-free guidance -------------------------------------------------


def fixed_logits(seed: int, b: int = 2, n: int = 16, v: int = 12):
    table = torch.randn(b, n, v, generator=torch.Generator().manual_seed(seed))
    return table, (lambda tokens: table)


def test_top_k_samples_among_the_k_most_likely_only():
    table, fn = fixed_logits(0)
    top3 = table.topk(3, dim=-1).indices  # (b, n, 3)
    for seed in range(5):
        out = maskgit_decode(fn, 16, mask_id=12, batch_size=2, steps=4, temperature=2.0, top_k=3,
                             generator=torch.Generator().manual_seed(seed))
        assert (out[..., None] == top3).any(-1).all()
    greedy = maskgit_decode(fn, 16, mask_id=12, batch_size=2, steps=4, temperature=0.0)
    assert torch.equal(maskgit_decode(fn, 16, mask_id=12, batch_size=2, steps=4, top_k=1,
                                      generator=torch.Generator().manual_seed(0)), greedy)
    with pytest.raises(ValueError, match="top_k"):
        maskgit_decode(fn, 16, mask_id=12, top_k=0)


def test_guidance_follows_cond_plus_w_times_cond_minus_uncond():
    cond, fn = fixed_logits(0)
    uncond, ufn = fixed_logits(1)
    calls = []

    def counted(tokens):
        calls.append(1)
        return ufn(tokens)

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = maskgit_decode(fn, 16, mask_id=12, batch_size=2, steps=4, generator=g())
    assert torch.equal(maskgit_decode(fn, 16, mask_id=12, batch_size=2, steps=4, generator=g(), guidance=0.0,
                                      uncond_logits_fn=counted), plain)
    assert not calls  # w = 0 never runs the unconditional half
    # uncond == cond: guidance changes nothing
    assert torch.equal(maskgit_decode(fn, 16, mask_id=12, batch_size=2, steps=4, generator=g(), guidance=3.0,
                                      uncond_logits_fn=fn), plain)
    w = 1.5
    guided = maskgit_decode(fn, 16, mask_id=12, batch_size=2, steps=4, temperature=0.0, guidance=w,
                            uncond_logits_fn=counted)
    assert torch.equal(guided, (cond + w * (cond - uncond)).argmax(-1)) and len(calls) == 4
    with pytest.raises(ValueError, match="uncond_logits_fn"):
        maskgit_decode(fn, 16, mask_id=12, guidance=1.0)


BAD = [
    (dict(top_k=0), "top-k 0: must be a whole number >= 1"),
    (dict(top_k=2.5), "top-k 2.5: must be a whole number"),
    (dict(guidance=-1.0), f"guidance -1.0: must be a number 0..{MAX_GUIDANCE:g} (0 = off)"),
    (dict(guidance=float("nan")), "guidance nan: must be a number"),
    (dict(guidance=True), "guidance True: must be a number"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_levers_are_refused_with_one_message(fields, message):
    with pytest.raises(GenieInputError) as e:
        SamplingSettings(**fields)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("mode", MODES)
def test_guided_rollouts_run_with_and_without_the_cache_and_off_is_unchanged(mode):
    model = make_model(null_action=True, action_conditioning=mode)
    tokens, actions = clip(model.config)
    prompt, acts = tokens[:, :1], actions[:, :3]

    def roll(use_cache=True, **kw):
        return rollout_tokens(model, prompt, acts, steps=3, generator=torch.Generator().manual_seed(0),
                              use_cache=use_cache, settings=SamplingSettings(**kw))

    plain = roll()
    assert torch.equal(roll(guidance=0.0, top_k=None), plain)
    guided = roll(guidance=2.0)
    assert torch.equal(roll(use_cache=False, guidance=2.0), guided)
    if mode == "additive":  # untrained, a prepended action slot moves the logits by ~1e-3 only: no sample changes
        assert not torch.equal(guided, plain)
    assert torch.equal(roll(top_k=model.config.vocab_size), plain)  # k = v keeps every token


def test_guidance_is_refused_for_a_model_without_a_null_action(tmp_path):
    model = make_model()
    tokens, actions = clip(model.config)
    with pytest.raises(GenieInputError, match="guidance 1.5: this dynamics model has no null action"):
        rollout_tokens(model, tokens[:, :1], actions[:, :2], settings=SamplingSettings(guidance=1.5))


@pytest.fixture(scope="module")
def guided_world(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    tok, lam = VideoTokenizer(TokenizerConfig.preset("debug")), LatentActionModel(LatentActionConfig.preset("debug"))
    tok(x), lam(x)
    root = tmp_path_factory.mktemp("wm")
    for stage, m in (("tokenizer", tok), ("lam", lam), ("dynamics", make_model(null_action=True))):
        save_export(m.eval(), root / stage, stage)
    return WorldModel.assemble(root / "tokenizer", root / "lam", root / "dynamics", root / "world")


def test_the_world_model_guides_through_generate_and_step(guided_world):
    wm = WorldModel.from_pretrained(guided_world)
    prompt = torch.rand(1, 3, 64, 64) * 2 - 1
    s = SamplingSettings(steps=2, guidance=1.5, top_k=8)
    video = wm.generate(prompt, [1, 2], seed=0, settings=s)
    state = wm.reset(prompt, seed=0, settings=s)
    frames = [wm.step(state, a) for a in (1, 2)]
    torch.testing.assert_close(torch.stack(frames, 1), video[:, 1:])
    assert not torch.equal(video, wm.generate(prompt, [1, 2], seed=0, settings=SamplingSettings(steps=2)))


OVERLAYS = sorted((ROOT / "configs" / "dynamics" / "ablations").glob("*.yaml"))


def merged(base: dict, over: dict) -> dict:
    return {k: merged(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in {**base, **over}.items()}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.stem)
def test_every_overlay_on_the_cpu_preset_builds_its_module(overlay):
    base = yaml.safe_load((ROOT / "configs" / "dynamics" / "cpu.yaml").read_text())
    model = merged(base, yaml.safe_load(overlay.read_text()))["model"]
    config = DynamicsConfig.from_dict(model.pop("config"))
    DynamicsModule(config, **model)  # every key a real option, every value accepted


def test_the_command_refuses_guidance_without_a_null_action_and_runs_it_with_one(world, guided_world, tmp_path,  # noqa: F811
                                                                                 capsys):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "p.png")
    args = ["generate", "--prompt", tmp_path / "p.png", "--actions", "1,2", "--steps", "2", "--device", "cpu"]
    code, _, err = genie_in_process(capsys, *args, "--model", world / "world", "--out", tmp_path / "a.gif",
                                    "--guidance", "1.5")
    assert "guidance 1.5: this dynamics model has no null action" in one_error_line(code, err)
    assert not (tmp_path / "a.gif").exists()
    code, _, err = genie_in_process(capsys, *args, "--model", guided_world, "--out", tmp_path / "b.gif",
                                    "--guidance", "1.5", "--top-k", "4")
    assert code == 0 and (tmp_path / "b.gif").is_file(), err
    code, _, err = genie_in_process(capsys, *args, "--model", guided_world, "--out", tmp_path / "c.gif", "--top-k", "0")
    assert "top-k 0: must be a whole number >= 1" in one_error_line(code, err)
