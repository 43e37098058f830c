"""Training-speed levers (issue 26) change nothing a step computes beyond float rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamics.config import DynamicsConfig
from dynamics.maskgit import training_mask
from dynamics.model import DynamicsModel
from genie.core.training import adamw_kernel, compile_model
from tokenizer.config import TokenizerConfig
from tokenizer.model import VideoTokenizer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["additive", "token", "additive+prev+copy"])
def test_dynamics_logits_where_equal_the_full_logits_there(mode):
    conditioning, *extras = mode.split("+")
    torch.manual_seed(0)
    model = DynamicsModel(DynamicsConfig.preset("debug", action_conditioning=conditioning,
                                                prev_token_input="prev" in extras, copy_gate="copy" in extras))
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.num_frames, *cfg.grid), generator=g)
    actions = torch.randint(0, cfg.num_actions, (2, cfg.num_frames - 1), generator=g)
    mask = training_mask(tokens.shape, keep_first_frames=1, generator=g)
    inp = tokens.masked_fill(mask, model.mask_id)
    prev = torch.cat([torch.full_like(tokens[:, :1], model.mask_id), tokens[:, :-1]], dim=1)
    full = model(inp, actions, prev_tokens=prev)
    part = model(inp, actions, prev_tokens=prev, where=mask)
    assert part.shape == (int(mask.sum()), cfg.vocab_size)
    torch.testing.assert_close(part, full[mask], rtol=1e-5, atol=1e-6)
    # the gradient of a loss on those positions is the same too
    F.cross_entropy(part, tokens[mask]).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    F.cross_entropy(model(inp, actions, prev_tokens=prev)[mask], tokens[mask]).backward()
    for a, b in zip(grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_dynamics_where_must_match_the_tokens():
    model = DynamicsModel(DynamicsConfig.preset("debug"))
    tokens = torch.zeros(1, 2, *model.config.grid, dtype=torch.long)
    with pytest.raises(ValueError, match="where"):
        model(tokens, torch.zeros(1, 1, dtype=torch.long), where=torch.ones(1, 2, dtype=torch.bool))


def test_fused_adamw_takes_the_default_steps():
    torch.manual_seed(0)
    model = VideoTokenizer(TokenizerConfig.preset("debug"))
    params = list(model.parameters())
    assert adamw_kernel(params) == {"fused": True}
    assert adamw_kernel([]) == {}
    start = [p.detach().clone() for p in params]
    grads = [torch.randn_like(p) for p in params]
    results = []
    for kwargs in ({"foreach": False}, adamw_kernel(params)):
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, **kwargs)
        for _ in range(3):
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            opt.step()
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compile_model_keeps_state_dict_keys():
    model = VideoTokenizer(TokenizerConfig.preset("debug"))
    keys = list(model.state_dict())
    assert compile_model(model) == 2  # one encoder and one decoder block
    assert list(model.state_dict()) == keys  # no `_orig_mod.` (architecture §7.9): exports and checkpoints unchanged


def test_one_new_frame_against_a_cache_without_building_the_next_cache():
    from genie.nn import STTransformer

    torch.manual_seed(0)
    st = STTransformer(32, 2, 4, num_tokens=6, num_frames=5).eval()
    x = torch.randn(2, 4, 6, 32)
    _, cache = st(x[:, :3], return_cache=True)
    with_cache, _ = st(x[:, 3:], cache=cache, return_cache=True)  # SDPA over the concatenated keys
    query = st(x[:, 3:], cache=cache)  # one query row per position over the cache, nothing concatenated
    torch.testing.assert_close(query, with_cache, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(query, st(x)[:, 3:], rtol=1e-5, atol=1e-6)
