"""`genie data coinrun --action-repeat MEAN`: held random actions with the asked mean run length."""

from __future__ import annotations

import numpy as np
import pytest
from test_coinrun import FakeGym3Env

import data_pipelines.coinrun as coinrun
from data_pipelines.storage import read_card
from genie.cli import main


@pytest.fixture
def fake_procgen(monkeypatch):
    monkeypatch.setattr(coinrun, "_import_procgen", lambda: FakeGym3Env)


def _run_lengths(stream: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of equal values in a 1-D sequence."""
    change = np.flatnonzero(np.diff(stream) != 0)
    bounds = np.concatenate([[-1], change, [len(stream) - 1]])
    return np.diff(bounds)


def test_policy_mean_run_length_matches_mean():
    policy = coinrun.RandomPolicy(num_envs=4, seed=0, action_repeat=8)
    acts = np.stack([policy() for _ in range(600)])  # (steps, envs)
    runs = np.concatenate([_run_lengths(acts[:, i]) for i in range(4)])
    # a hold ends with probability 1/8 per step, but the fresh draw repeats the old action 1 time in 15
    expected = 8 * 15 / 14
    assert abs(runs.mean() - expected) < 0.2 * expected, runs.mean()
    # per environment: the streams are not copies of one another
    assert not np.array_equal(acts[:, 0], acts[:, 1])
    uniform = coinrun.RandomPolicy(num_envs=4, seed=0, action_repeat=1)
    runs1 = np.concatenate([_run_lengths(np.stack([uniform() for _ in range(600)])[:, i]) for i in range(1)])
    assert runs1.mean() < 1.3


def test_recorded_actions_are_held(fake_procgen):
    list(coinrun.record_episodes(80, num_envs=2, seed=3, action_repeat=8, progress=False))
    sent = np.stack(FakeGym3Env.sent)  # every step's actions, across episode resets
    assert len(sent) > 150
    runs = np.concatenate([_run_lengths(sent[:, i]) for i in range(sent.shape[1])])
    assert 6 < runs.mean() < 11.5


def test_mean_one_reproduces_the_uniform_recording(fake_procgen):
    old = list(coinrun.record_episodes(6, num_envs=3, seed=11, progress=False))
    # the original policy: one rng.integers call per step from default_rng(seed)
    rng = np.random.default_rng(11)
    expected = [rng.integers(0, coinrun.NUM_ACTIONS, size=3) for _ in range(len(FakeGym3Env.sent))]
    assert all(np.array_equal(a, b) for a, b in zip(FakeGym3Env.sent, expected))
    new = list(coinrun.record_episodes(6, num_envs=3, seed=11, action_repeat=1, progress=False))
    for x, y in zip(old, new):
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.actions, y.actions)


def test_card_records_the_policy(fake_procgen, tmp_path):
    coinrun.record_coinrun(tmp_path / "d", 4, num_envs=2, seed=0, action_repeat=8, progress=False)
    card = read_card(tmp_path / "d")
    assert card["recipe"]["action_repeat"] == 8
    assert "mean 8 steps" in card["recipe"]["policy"]


@pytest.mark.parametrize("bad", ["0.5", "0", "-3", "nan", "inf", "abc"])
def test_bad_action_repeat_exits_2(bad, tmp_path, capsys, fake_procgen):
    with pytest.raises(SystemExit) as e:
        main(["data", "coinrun", "--out", str(tmp_path / "d"), "--episodes", "2", "--action-repeat", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("genie: error:") and "action-repeat" in err[-1]
    assert not (tmp_path / "d").exists()
