"""The LAM's optional loss weightings: off by default (plain MSE); change_weight weights what moves; surprise_weight
weights what an action-free decoder branch fails to predict."""

from __future__ import annotations

import warnings

import numpy as np
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


def _with_card(m: LatentActionModule, card: dict) -> LatentActionModule:
    """Attach a stand-in trainer whose datamodule's train set carries `card`, then run setup('fit')."""
    from types import SimpleNamespace

    ds = SimpleNamespace(card=card, frame_shape=(64, 64, 3))
    dm = SimpleNamespace(train_set=ds, hparams=SimpleNamespace(clip_len=4, data="d"), source="arrow")
    m._trainer = SimpleNamespace(datamodule=dm)  # noqa: SLF001 (what Lightning sets)
    type(m).trainer = property(lambda self: self._trainer)
    try:
        m.setup("fit")
    finally:
        del type(m).trainer
    return m


def test_roi_weight_counts_the_agent_box_more_and_needs_a_box():
    video = torch.zeros(2, 4, 3, 64, 64)
    video[:, 1::2, :, 28:36, 29:36] = 1.0  # the only change is inside the agent box
    card = {"agent_box": {"top": 28, "left": 29, "bottom": 36, "right": 36}}
    plain, roi = _module(), _with_card(_module(roi_weight=20.0), card)
    roi.model.load_state_dict(plain.model.state_dict())
    lp, out = _loss_parts(plain, video)
    lr, _ = _loss_parts(roi, video)
    err = (out.pred - video[:, 1:]).square()
    box, rest = err[..., 28:36, 29:36].mean(), err.mean()
    assert (lr - out.quant_loss - rest).sign() == (box - rest).sign() and not torch.isclose(lr, lp)
    with pytest.warns(UserWarning, match="agent_box"):
        unboxed = _with_card(_module(roi_weight=20.0), {})
    torch.testing.assert_close(_loss_parts(unboxed, video)[0], lp)  # no box: trains as without the option


def test_a_crop_without_an_agent_box_in_the_card_is_said():
    cfg = LatentActionConfig.from_dict({**LatentActionConfig.preset("debug").to_dict(), "crop_box": [24, 28, 32, 36]})
    with pytest.warns(UserWarning, match="crop_box .* no agent_box"):
        _with_card(LatentActionModule(cfg), {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a card that names the box: nothing to say
        _with_card(LatentActionModule(cfg), {"agent_box": {"top": 28, "left": 29, "bottom": 36, "right": 36}})


def test_label_fraction_trains_a_head_on_a_fixed_share_of_transitions():
    from genie.core.errors import GenieInputError

    card = {"has_actions": True, "num_actions": 15, "merged_action": [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4]}
    m = _with_card(_module(label_fraction=0.5, label_weight=1.0), card)
    assert m.label_head is not None and m.label_head.out_features == 9
    batch = {"video": torch.rand(8, 4, 3, 64, 64) * 2 - 1, "actions": torch.randint(0, 15, (8, 3)),
             "episode_id": torch.arange(8), "start": torch.zeros(8, dtype=torch.long)}
    labelled = m._labelled(batch, 3)
    assert 0 < labelled.float().mean() < 1
    assert torch.equal(labelled, m._labelled(batch, 3))  # the same transitions every time
    logged = {}
    m.log = lambda name, value, **k: logged.__setitem__(name, value)
    loss = m.training_step(batch, 0)
    assert "train/label_ce" in logged
    loss.backward()
    assert m.label_head.weight.grad.abs().sum() > 0
    assert m.model.encoder_patch_embed.weight.grad.abs().sum() > 0  # the head's gradient reaches the encoder
    assert not any(k.startswith("label_head") for k in m.model.state_dict())  # training only
    with pytest.raises(GenieInputError, match="true actions"):
        _with_card(_module(label_fraction=0.1), {"has_actions": False})
    with pytest.raises(ValueError, match="label_fraction"):
        _module(label_fraction=1.5)


class _Episodes:
    """A stand-in training set read by episode: 12 episodes of 10 frames with actions = frame index % 15."""

    card = {"has_actions": True, "num_actions": 15, "merged_action": [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4]}
    frame_shape = (64, 64, 3)
    num_episodes = 12
    clip_len = 4

    def episode_id(self, e):
        return 100 + e

    def episode_actions(self, e):
        return np.arange(10) % 15

    def item(self, e, start):
        g = torch.Generator().manual_seed(e * 100 + start)
        return {"video": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1,
                "actions": torch.as_tensor(self.episode_actions(e)[start:start + 3])}


def test_label_batch_draws_labelled_windows_every_step():
    """label_batch > 0 (LAOM's separate labelled batch): a fixed pool of whole windows, about label_fraction of
    them, and every step trains the head on label_batch of them, whatever the unlabelled batch holds."""
    from types import SimpleNamespace

    from genie.core.errors import GenieInputError

    def attach(m, ds):
        m._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_set=ds))  # noqa: SLF001
        type(m).trainer = property(lambda self: self._trainer)
        try:
            m.setup("fit")
        finally:
            del type(m).trainer
        return m

    m = attach(_module(label_fraction=0.5, label_weight=1.0, label_batch=3), _Episodes())
    windows = 12 * (10 // 4)
    assert 0 < len(m._label_pool) < windows  # about half of the 24 windows
    assert all(start % 4 == 0 and start + 4 <= 10 for _, start in m._label_pool)
    again = attach(_module(label_fraction=0.5, label_weight=1.0, label_batch=3), _Episodes())
    assert again._label_pool == m._label_pool  # fixed by the hash, not by a random draw
    logged = {}
    m.log = lambda name, value, **k: logged.__setitem__(name, value)
    loss = m.training_step({"video": torch.rand(2, 4, 3, 64, 64) * 2 - 1}, 0)  # an unlabelled batch
    assert "train/label_ce" in logged
    loss.backward()
    assert m.label_head.weight.grad.abs().sum() > 0
    assert m.model.encoder_patch_embed.weight.grad.abs().sum() > 0
    assert torch.equal(m._label_loss(torch.device("cpu")), m._label_loss(torch.device("cpu")))  # same step, same draw
    with pytest.raises(GenieInputError, match="labels none"):
        attach(_module(label_fraction=1e-9, label_batch=3), _Episodes())
    with pytest.raises(ValueError, match="label_batch"):
        _module(label_batch=-1)
