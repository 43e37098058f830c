"""CoinRun recording: exact episode boundaries under gym3 auto-reset, action alignment, determinism."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import data_pipelines.coinrun as coinrun
import data_pipelines.coinrun_search as coinrun_search
from data_pipelines.clips import ClipDataset
from data_pipelines.storage import load_split


class FakeGym3Env:
    """gym3 semantics without procgen: observe() → (reward for the last act, obs, first).

    Pixels encode [env, episode number, step in episode, previous action]; an episode of length L
    ends when the action at step L-1 is taken, and that terminal reward is action + 1.
    """

    sent: list = []

    def __init__(self, num, env_name, distribution_mode, start_level, num_levels, rand_seed):
        self.num, self.rng = num, np.random.default_rng(rand_seed)
        self.length = self.rng.integers(3, 12, size=num)
        self.step_i = np.zeros(num, int)
        self.episode = np.zeros(num, int)
        self.prev = np.full(num, 255)
        self.first = np.ones(num, bool)
        self.rew = np.zeros(num, np.float32)
        FakeGym3Env.sent = []

    def observe(self):
        ob = np.zeros((self.num, 64, 64, 3), np.uint8)
        ob[:, 0, 0, 0] = np.arange(self.num)
        ob[:, 0, 0, 1] = self.episode
        ob[:, 0, 0, 2] = self.step_i
        ob[:, 0, 1, 0] = self.prev
        return self.rew.copy(), {"rgb": ob}, self.first.copy()

    def get_info(self):
        return [{"level_seed": int(1000 * i + self.episode[i])} for i in range(self.num)]

    def act(self, ac):
        ac = np.asarray(ac)
        FakeGym3Env.sent.append(ac.copy())
        self.step_i += 1
        self.prev = ac.copy()
        self.rew[:] = 0
        self.first[:] = False
        for i in range(self.num):
            if self.step_i[i] == self.length[i]:
                self.rew[i] = ac[i] + 1
                self.first[i] = True
                self.step_i[i] = 0
                self.episode[i] += 1
                self.prev[i] = 255
                self.length[i] = self.rng.integers(3, 12)


@pytest.fixture
def fake_procgen(monkeypatch):
    monkeypatch.setattr(coinrun, "_import_procgen", lambda: FakeGym3Env)


def test_episode_boundaries_and_action_alignment(fake_procgen):
    eps = list(coinrun.record_episodes(7, num_envs=3, seed=5, progress=False))
    assert len(eps) == 7
    per_env = {}
    for ep in eps:
        f = ep.frames
        env, epno = int(f[0, 0, 0, 0]), int(f[0, 0, 0, 1])
        per_env.setdefault(env, []).append(epno)
        n = len(ep)
        assert (f[:, 0, 0, 0] == env).all() and (f[:, 0, 0, 1] == epno).all(), "frame of another episode"
        assert (f[:, 0, 0, 2] == np.arange(n)).all(), "episode does not start at its first frame"
        # the action recorded at frame i is the one the next frame shows as its cause
        assert (f[1:, 0, 1, 0] == ep.actions[:-1]).all()
        assert f[0, 0, 1, 0] == 255
        # the last frame carries the terminal action and its reward; done only there
        assert ep.rewards[-1] == ep.actions[-1] + 1 and (ep.rewards[:-1] == 0).all()
        assert ep.dones[-1] and not ep.dones[:-1].any()
        assert ep.level_seed == 1000 * env + epno
    # each env keeps its own first episodes (quota 3, 2, 2): no bias toward short episodes
    assert {k: sorted(v) for k, v in per_env.items()} == {0: [0, 1, 2], 1: [0, 1], 2: [0, 1]}


def test_recorded_actions_are_the_sent_ones(fake_procgen):
    eps = list(coinrun.record_episodes(2, num_envs=1, seed=1, progress=False))
    sent = [int(a[0]) for a in FakeGym3Env.sent]
    recorded = [int(a) for ep in eps for a in ep.actions]
    assert recorded == sent[:len(recorded)]


def test_max_steps_cuts_without_done(fake_procgen):
    eps = list(coinrun.record_episodes(6, num_envs=2, seed=2, max_steps=4, progress=False))
    for ep in eps:
        assert len(ep) <= 4
        assert (ep.frames[:, 0, 0, 2] == np.arange(len(ep))).all()
        assert ep.dones[-1] == (len(ep) < 4 or ep.rewards[-1] > 0)


def test_dataset_clips_never_contain_a_reset(fake_procgen, tmp_path):
    coinrun.record_coinrun(tmp_path / "d", 12, num_envs=4, seed=0, val_fraction=0, test_fraction=0,
                           chunk_len=4, progress=False)
    ds = ClipDataset(tmp_path / "d", "train", clip_len=3)
    dones = np.concatenate([np.asarray(r["dones"]) for r in sorted(load_split(tmp_path / "d", "train").data.table.to_pylist(),
                                                                  key=lambda r: (r["episode_id"], r["offset"]))])
    for i in range(len(ds)):
        e, s = ds.index.locate(i)
        g = ds._ep_start[e] + s + np.arange(3)
        assert not dones[g[:-1]].any(), "a clip continues past an episode end"
        steps = ds.clip_frames(e, s)[:, 0, 0, 2].astype(int)
        assert (np.diff(steps) == 1).all()


def test_split_by_level_seed_is_disjoint():
    seeds = range(5000)
    splits = {s: coinrun.split_of_seed(s, 0.1, 0.1) for s in seeds}
    counts = {k: sum(v == k for v in splits.values()) for k in ("train", "val", "test")}
    assert 350 < counts["val"] < 650 and 350 < counts["test"] < 650
    assert all(coinrun.split_of_seed(s, 0.1, 0.1) == splits[s] for s in seeds)


@pytest.mark.skipif(importlib.util.find_spec("procgen") is None, reason="procgen (the [coinrun] extra) not installed")
def test_real_coinrun_is_deterministic_and_well_formed(tmp_path):
    a = list(coinrun.record_episodes(3, num_envs=2, seed=7, max_steps=60, progress=False))
    b = list(coinrun.record_episodes(3, num_envs=2, seed=7, max_steps=60, progress=False))
    for x, y in zip(a, b):
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.actions, y.actions)
        assert x.level_seed == y.level_seed
    for ep in a:
        assert ep.frames.shape[1:] == (64, 64, 3) and ep.frames.dtype == np.uint8
        assert ep.actions.min() >= 0 and ep.actions.max() < 15
        assert not ep.dones[:-1].any()
    c = list(coinrun.record_episodes(3, num_envs=2, seed=8, max_steps=60, progress=False))
    assert any(not np.array_equal(x.frames, y.frames) for x, y in zip(a, c))


@pytest.mark.skipif(importlib.util.find_spec("procgen") is None, reason="procgen (the [coinrun] extra) not installed")
def test_real_coinrun_first_frame_follows_reset():
    """With one env, frames of consecutive episodes must differ at the boundary (new level drawn)."""
    eps = list(coinrun.record_episodes(3, num_envs=1, seed=3, progress=False))
    seeds = [ep.level_seed for ep in eps]
    assert len(set(seeds)) == 3
    for ep in eps:
        assert ep.dones[-1] or len(ep) == 1000


@pytest.mark.skipif(importlib.util.find_spec("procgen") is None, reason="procgen (the [coinrun] extra) not installed")
def test_search_demonstrator_is_deterministic_and_named_in_the_card(tmp_path):
    from data_pipelines.storage import read_card

    kw = dict(num_envs=2, seed=3, start_level=1000000, num_levels=50, max_steps=300, policy="search", progress=False)
    a = list(coinrun.record_episodes(2, **kw))
    b = list(coinrun.record_episodes(2, **kw))
    for x, y in zip(a, b):
        assert np.array_equal(x.actions, y.actions) and np.array_equal(x.frames, y.frames)
        assert x.dones[-1] and x.rewards[-1] > 0, "the demonstrator did not reach the coin"
    s = coinrun.record_coinrun(tmp_path / "d", 1, policy="search", num_envs=1, seed=0, start_level=1000000,
                               num_levels=1, max_steps=300, progress=False)
    assert s["successes"] == 1
    recipe = read_card(tmp_path / "d")["recipe"]
    assert recipe["policy_name"] == "search" and recipe["policy"].startswith("search demonstrator")


def test_search_right_swaps_the_default_move_and_keeps_the_search():
    h = 32
    lib, right = coinrun_search._candidate_library(h), coinrun_search._candidate_library(h, coinrun_search._RIGHT)
    assert (lib[0] == coinrun_search._RIGHT_UP).all() and (lib[1] == coinrun_search._RIGHT).all()  # search's library as before
    assert (right[0] == coinrun_search._RIGHT).all() and (right[1] == coinrun_search._RIGHT_UP).all()
    assert lib.shape == right.shape
    # the two libraries are the same sequences with RIGHT and RIGHT+UP exchanged
    swap = {coinrun_search._RIGHT: coinrun_search._RIGHT_UP, coinrun_search._RIGHT_UP: coinrun_search._RIGHT}
    assert (np.vectorize(lambda a: swap.get(int(a), int(a)))(lib) == right).all()
    assert "hold-RIGHT (jumps only" in coinrun.policy_name(1, "search-right")
    assert coinrun.policy_name(1, "search") == coinrun.SearchExpert.DESCRIPTION


def test_policy_options_are_checked(tmp_path):
    from genie.core.errors import GenieInputError

    with pytest.raises(GenieInputError, match="--policy must be one of"):
        coinrun.record_coinrun(tmp_path / "d", 1, policy="expert", progress=False)
    with pytest.raises(GenieInputError, match="random only"):
        coinrun.record_coinrun(tmp_path / "d", 1, policy="search", action_repeat=8, progress=False)
    assert not (tmp_path / "d").exists()
    with pytest.raises(GenieInputError, match="not the CoinRun layout"):
        coinrun_search.procgen_positions(b"\x00" * 64)



class HalfLostGym3Env(FakeGym3Env):
    """The fake env, but an episode ending on an even action is lost (reward 0)."""

    def act(self, ac):
        super().act(ac)
        self.rew[np.asarray(ac) % 2 == 0] = 0


def test_successes_only_keeps_the_episodes_that_reached_the_coin(monkeypatch, tmp_path):
    monkeypatch.setattr(coinrun, "_import_procgen", lambda: HalfLostGym3Env)
    s = coinrun.record_coinrun(tmp_path / "d", 6, num_envs=2, seed=0, successes_only=True, val_fraction=0,
                               test_fraction=0, progress=False)
    assert s["successes"] == 6 and s["played"] > 6
    ds = ClipDataset(tmp_path / "d", "train", clip_len=2)
    eps = [ds.episode(e) for e in range(ds.num_episodes)]
    assert len(eps) == 6 and all(ep.dones[-1] and ep.rewards[-1] > 0 for ep in eps)
    from data_pipelines.storage import read_card

    assert read_card(tmp_path / "d")["recipe"]["played"] == s["played"]
