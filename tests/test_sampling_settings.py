"""SamplingSettings: each sampling setting is checked in one place, with one message, for every caller
(genie generate, genie play, the world model, the rollout)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from dynamics.config import DynamicsConfig
from dynamics.model import DynamicsModel
from genie.core.errors import GenieInputError
from genie.sampling import AUTO_WINDOW_HOP, MAX_STEPS, Rollout, SamplingSettings, rollout_tokens
from tests.test_world_model import genie_in_process, one_error_line, world  # noqa: F401  (module-scoped debug model)

BAD = [
    (dict(steps=0), f"steps 0: must be an integer 1..{MAX_STEPS}"),
    (dict(steps=MAX_STEPS + 1), f"steps {MAX_STEPS + 1}: must be an integer 1..{MAX_STEPS}"),
    (dict(steps=2.0), "steps 2.0: must be an integer"),
    (dict(steps=True), "steps True: must be an integer"),
    (dict(temperature=-0.5), "temperature -0.5: must be a number 0..10 (0 = greedy)"),
    (dict(temperature=math.nan), "temperature nan: must be a number 0..10"),
    (dict(temperature=math.inf), "temperature inf: must be a number 0..10"),
    (dict(temperature="hot"), "temperature 'hot': must be a number"),
    (dict(unmask="best"), "unmask 'best': must be one of confidence, random"),
    (dict(context=0), "context 0: must be a whole number of frames >= 1"),
    (dict(window_hop=0), "window hop 0: must be a whole number of frames >= 1"),
    (dict(context=2, window_hop=3), "window hop 3: must be 1..2 (the context)"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_settings_are_refused_once_with_one_message(fields, message):
    with pytest.raises(GenieInputError) as e:
        SamplingSettings(**fields)
    assert str(e.value).startswith(message)
    with pytest.raises(GenieInputError):  # replace re-runs the same check
        dataclasses.replace(SamplingSettings(), **fields)


def test_the_model_window_bounds_context_and_hop():
    dyn = DynamicsModel(DynamicsConfig.preset("debug")).eval()  # num_frames 4: context 1..3
    s = SamplingSettings(steps=np.int64(3), temperature=1, window_hop=None)
    assert type(s.steps) is int and type(s.temperature) is float and s.effective_hop is None
    checked = s.for_dynamics(dyn)
    assert (checked.max_context, checked.effective_context, checked.effective_hop) == (3, 3, min(AUTO_WINDOW_HOP, 3))
    with pytest.raises(GenieInputError, match=r"context 4: must be 1\.\.3 \(the dynamics model's 4-frame window"):
        SamplingSettings(context=4).for_dynamics(dyn)
    with pytest.raises(GenieInputError, match=r"window hop 5: must be 1\.\.3 \(the context\)"):
        SamplingSettings(window_hop=5).for_dynamics(dyn)
    # separate keywords override the settings' fields (None: not given); the result is checked again
    assert SamplingSettings.from_args(SamplingSettings(steps=3), temperature=0, context=None).steps == 3
    with pytest.raises(GenieInputError, match="steps 0"):
        SamplingSettings.from_args(steps=0)
    # a rollout keeps its window; a step may change steps, temperature and the unmasking rule
    prompt = torch.randint(0, 32, (1, 1, 8, 8))
    roll = Rollout(dyn, prompt, settings=SamplingSettings(steps=2, window_hop=2))
    roll.step(torch.tensor([1]), settings=SamplingSettings(steps=3, temperature=0, unmask="random", window_hop=2))
    with pytest.raises(ValueError, match="keeps its context 3 and window hop 2"):
        roll.step(torch.tensor([1]), settings=SamplingSettings(window_hop=1))
    # settings and the separate keywords sample the same
    acts = torch.tensor([[1, 2, 3, 4, 5]])
    a = rollout_tokens(dyn, prompt, acts, settings=SamplingSettings(steps=3, window_hop=2),
                       generator=torch.Generator().manual_seed(0))
    b = rollout_tokens(dyn, prompt, acts, steps=3, window_hop=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_generate_play_and_the_world_model_give_the_same_message(world, tmp_path, capsys):  # noqa: F811
    from PIL import Image

    from genie.play import load_player
    from genie.world_model import WorldModel

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "p.png")
    for flags, message in [(("--steps", "0"), "steps 0: must be an integer 1..64"),
                           (("--temperature", "nan"), "temperature nan: must be a number 0..10"),
                           (("--context", "4"), "context 4: must be 1..3 (the dynamics model's 4-frame window")]:
        code, _, err = genie_in_process(capsys, "generate", "--model", world / "world", "--prompt", tmp_path / "p.png",
                                        "--actions", "1", "--out", tmp_path / "o.gif", "--device", "cpu", *flags)
        assert message in one_error_line(code, err)
        field = {"--steps": "steps", "--temperature": "temperature", "--context": "context"}[flags[0]]
        value = float(flags[1]) if field == "temperature" else int(flags[1])
        with pytest.raises(GenieInputError) as e:
            load_player(world / "world", device="cpu", warmup=False, **{field: value})
        assert message in str(e.value)
    wm = WorldModel.from_pretrained(world / "world")
    with pytest.raises(GenieInputError, match="steps 0: must be an integer 1..64"):
        wm.generate(torch.zeros(1, 3, 64, 64), [1], steps=0)
    with pytest.raises(GenieInputError, match="action id 8 is outside the latent action vocabulary 0..7"):
        wm.check_actions([0, 8])


def test_each_command_takes_its_sampling_defaults_from_one_place():
    """genie generate and evaluate sample with SamplingSettings' defaults, genie play with PLAY_SETTINGS: an option
    left out keeps that default (the parser holds none of its own), an option given changes only itself."""
    from genie.cli import build_parser, sampling_from_args
    from genie.play import PLAY_SETTINGS

    parser = build_parser()
    gen = ["generate", "--model", "m", "--prompt", "p.png", "--actions", "1", "--out", "o.gif"]
    play = ["play", "--model", "m"]
    assert sampling_from_args(parser.parse_args(gen), SamplingSettings()) == SamplingSettings()
    assert sampling_from_args(parser.parse_args(play), PLAY_SETTINGS) == PLAY_SETTINGS
    assert PLAY_SETTINGS != SamplingSettings()  # play's own defaults (8 steps, the window hop of AUTO) survive
    hot = sampling_from_args(parser.parse_args(play + ["--temperature", "0.5", "--top-k", "8"]), PLAY_SETTINGS)
    assert hot == dataclasses.replace(PLAY_SETTINGS, temperature=0.5, top_k=8)
    ev = parser.parse_args(["evaluate", "--model", "m", "--data", "d", "--out", "o.json"])
    assert ev.temperature is None and ev.guidance is None  # evaluate() takes SamplingSettings' own
