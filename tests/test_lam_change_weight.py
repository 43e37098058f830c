"""The LAM's optional loss weightings: off by default (plain MSE); change_weight weights what moves; surprise_weight
weights what an action-free decoder branch fails to predict."""

from __future__ import annotations

import pytest
import torch

from latent_actions.config import LatentActionConfig
from latent_actions.module import LatentActionModule


def _module(**kw) -> LatentActionModule:
    torch.manual_seed(0)
    m = LatentActionModule(LatentActionConfig.preset("debug", num_frames=4), **kw)
    m.log_dict = m.log = lambda *a, **k: None  # no trainer attached
    return m


def _loss_parts(m: LatentActionModule, video: torch.Tensor):
    """The training loss and the model output it was computed from (one forward: VQ state changes per call)."""
    seen = []
    forward = m.model.forward
    m.model.forward = lambda v: seen.append(forward(v)) or seen[-1]
    torch.manual_seed(1)  # the decoder's context masking draws in train mode
    loss = m.training_step({"video": video}, 0)
    m.model.forward = forward
    return loss, seen[0]


def test_default_is_the_plain_mse():
    video = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    m = _module()
    loss, out = _loss_parts(m, video)
    expected = torch.nn.functional.mse_loss(out.pred, video[:, 1:]) + out.quant_loss
    assert torch.allclose(loss, expected, atol=1e-6)


def test_change_weight_counts_moving_pixels_more():
    video = torch.zeros(2, 4, 3, 64, 64)
    video[:, 1::2, :, :8, :8] = 1.0  # a blinking corner: the only change between frames
    plain, weighted = _module(), _module(change_weight=50.0)
    weighted.model.load_state_dict(plain.model.state_dict())
    lp, out = _loss_parts(plain, video)
    lw, _ = _loss_parts(weighted, video)
    err = (out.pred - video[:, 1:]).square()
    corner, rest = err[..., :8, :8].mean(), err.mean()
    # the weighted loss leans toward the corner's error, away from the plain mean
    assert (lw - out.quant_loss - rest).sign() == (corner - rest).sign() and not torch.isclose(lw, lp)
    with pytest.raises(ValueError, match="change_weight"):
        LatentActionModule(LatentActionConfig.preset("debug"), change_weight=-1.0)


def test_surprise_weight_trains_an_action_free_branch_and_weights_what_it_misses():
    video = torch.zeros(2, 4, 3, 64, 64)
    video[:, 1::2, :, :8, :8] = 1.0  # the blinking corner is all an action-free prediction can miss
    m = _module(surprise_weight=50.0)
    logged = {}
    m.log = lambda name, value, **k: logged.__setitem__(name, value)
    loss, out = _loss_parts(m, video)
    err = (out.pred - video[:, 1:]).square()
    corner, rest = err[..., :8, :8].mean(), err.mean()
    action_branch = loss - logged["train/null_mse"] - out.quant_loss
    assert (action_branch - rest).sign() == (corner - rest).sign() and not torch.isclose(action_branch, rest)
    loss.backward()
    assert m.no_action.grad is not None and m.no_action.grad.abs().sum() > 0  # the branch is trained
    assert "no_action" not in m.model.state_dict()  # training only: exports are unchanged
    with pytest.raises(ValueError, match="surprise_weight"):
        LatentActionModule(LatentActionConfig.preset("debug"), surprise_weight=-1.0)
