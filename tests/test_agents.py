"""Agents from latent actions (genie.agents, `genie agent train|eval|report`): the environment loop, action alignment
of the cloned targets, save → load equality, the whole train → eval path on a tiny recording, bad input as one line."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from data_pipelines.storage import DatasetWriter
from genie.agents.agent import ClonedPolicy, dictionary_probs, load_agent
from genie.agents.evaluate import bar_markdown, paired_difference, report_markdown, wilson_interval
from genie.agents.loop import play
from genie.agents.model import PolicyConfig, PolicyNet
from genie.agents.train import Transitions, class_weights, lam_labels, raw_action_table
from genie.core.errors import GenieInputError
from genie.export import save_export
from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionModel
from tests.conftest import coded_episode

MERGED = [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4]
NAMES = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP", "D", "A", "W", "S", "Q", "E"]
needs_procgen = pytest.mark.skipif(importlib.util.find_spec("procgen") is None, reason="procgen (the [coinrun] extra) not installed")


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A tiny CoinRun-like recording (15 actions merged to 9; train, val, test), one without actions, a debug LAM."""
    root = tmp_path_factory.mktemp("agents")
    card = {"source": "coinrun", "num_actions": 15, "action_names": NAMES, "merged_action": MERGED,
            "recipe": {"start_level": 0, "num_levels": 100}}
    with DatasetWriter(root / "data", chunk_len=16, card=card) as w:
        for e in range(4):
            w.add_episode(coded_episode(e, 30 + 7 * e, h=64, w=64), "train")
        w.add_episode(coded_episode(40, 20, h=64, w=64), "val")
        w.close()
    with DatasetWriter(root / "unlabelled", chunk_len=16) as w:
        w.add_episode(dataclasses.replace(coded_episode(0, 20, h=64, w=64), actions=None), "train")
        w.close()
    torch.manual_seed(0)
    lam = LatentActionModel(LatentActionConfig.preset("debug"))
    lam(torch.rand(2, 4, 3, 64, 64) * 2 - 1)  # a first training-mode pass initialises the codebook
    save_export(lam.eval(), root / "lam", "lam")
    torch.manual_seed(1)
    other = LatentActionModel(LatentActionConfig.preset("debug"))
    other(torch.rand(2, 4, 3, 64, 64) * 2 - 1)
    save_export(other.eval(), root / "other-lam", "lam")
    return root


def cli(capsys, *args) -> tuple[int, str, str]:
    """`genie ARGS` in this process: (exit code, stdout, stderr)."""
    from genie.cli import main

    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(capsys, *args) -> str:
    code, _, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("genie: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


class CodedLAM(torch.nn.Module):
    """A stand-in LAM whose latent action of each transition is the index (pixel [0,0,1]) of the frame it moves to."""

    class config:
        num_frames = 6

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def infer_actions(self, video):
        idx = torch.round((video[:, :, 1, 0, 0] + 1) * 127.5).long()  # (b, t) frame index of each frame
        return idx[:, 1:]


def test_cloned_targets_are_aligned_with_their_frames(rec):
    tr = Transitions(rec / "data", "train")
    assert len(tr) == sum(30 + 7 * e - 1 for e in range(4))  # an episode's last frame has no transition
    index = tr.frames[:, 0, 0, 1].astype(int)  # frame index within its episode
    cur, prev = index[tr.cur], index[tr.prev]
    assert (prev == np.maximum(cur - 1, 0)).all()  # previous frame, or the first one itself
    episode = tr.frames[:, 0, 0, 0]
    assert (episode[tr.cur] == episode[tr.prev]).all()  # never a frame of another episode
    # the true target of transition t is the action taken at frame t, which frame t+1 shows as its cause
    after = tr.frames[tr.cur + 1, 0, 0, 2]
    assert (after == tr.actions).all()
    # LAM labels: every transition labelled once, with the latent of the step it makes (clips overlap by one frame)
    labels = lam_labels(CodedLAM(), tr)
    assert (labels == cur + 1).all()
    assert raw_action_table({"merged_action": MERGED, "num_actions": 15}) == list(range(9))


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and abs(hi - 0.2775) < 1e-3
    lo, hi = wilson_interval(5, 10)
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3
    assert wilson_interval(200, 200)[1] == 1.0


def _eval(kind, wins, n=10, **kw):
    """A genie agent eval result of `kind` that succeeds on the levels in `wins` (of levels 0..n-1)."""
    per = [[lv, int(lv in wins), 10.0 * (lv in wins), 5] for lv in range(n)]
    return {"kind": kind, "success_rate": len(wins) / n, "ci95": list(wilson_interval(len(wins), n)),
            "mean_return": 10.0 * len(wins) / n, "return_ci95": [0.0, 10.0], "episodes": n, "levels": [0, n],
            "cpu_seconds": 1.0, "per_level": per, **kw}


def test_report_pairs_agents_with_the_constant_policy_and_checks_the_bar():
    rand, base = _eval("random", {0}), _eval("right-up", {0, 1, 2, 3, 4})
    oracle = _eval("oracle", {0, 1, 2, 3, 4, 5, 6, 7, 8}, act="sample")
    latent = _eval("latent", {0, 1, 2, 3, 4, 5}, labels=200, decode="sample")
    assert paired_difference(oracle, base)[0] == 0.4
    assert paired_difference(base, base) == (0.0, 0.0, 0.0)
    assert paired_difference(oracle, {**base, "per_level": [[99, 1, 10.0, 5]]}) is None  # no shared level
    md = report_markdown([latent, oracle, base, rand])
    assert "Δ success vs always RIGHT+UP" in md and "+0.400" in md
    # (0.6 - 0.1) / (0.9 - 0.1) = 0.625 of the gain over random; (0.6 - 0.5) / (0.9 - 0.5) = 0.25 over RIGHT+UP
    assert "recovers 0.625 of the gain over random (bar NOT met); 0.250 of the gain over always RIGHT+UP" in md
    assert "above random's 0.100" in md
    good = _eval("latent", {0, 1, 2, 3, 4, 5, 6, 7}, labels=200, decode="argmax")
    assert "recovers 0.875 of the gain over random (bar met)" in bar_markdown([rand, oracle, good])
    assert "n/a" in bar_markdown([_eval("random", {0, 1}), _eval("oracle", {0}), good])
    assert bar_markdown([oracle, latent]) == ""  # no random play to measure a gain from


def test_class_weights_balance_the_loss():
    t = np.array([0] * 90 + [1] * 10)
    assert class_weights(t, 3, 0.0) is None
    w = class_weights(t, 3, 1.0).numpy()
    assert np.isclose(w[0] * 90, w[1] * 10) and w[2] == 0  # each present class weighs the same in total
    assert np.isclose((w[t]).mean(), 1.0)  # the mean weight per transition stays 1
    half = class_weights(t, 3, 0.5).numpy()
    assert np.isclose(half[1] / half[0], 3.0)


class FakeLevelEnv:
    """LevelEnv semantics without procgen: level L's episode lasts L steps and succeeds when the last action is 7.
    Frames carry (level, step) in pixel [0, 0]."""

    def __init__(self, levels, num_envs):
        self.queue, self.num_envs, self.results = list(levels), num_envs, []
        self.level, self.step = [None] * num_envs, np.zeros(num_envs, int)
        self.first = np.ones(num_envs, bool)
        for i in range(num_envs):
            self.level[i] = self.queue.pop(0) if self.queue else None

    @property
    def done(self):
        return all(lv is None for lv in self.level)

    def observe(self):
        ob = np.zeros((self.num_envs, 4, 4, 3), np.uint8)
        for i in range(self.num_envs):
            ob[i, 0, 0, :2] = (self.level[i] or 0, self.step[i])
        return np.zeros(self.num_envs), ob, self.first.copy()

    def act(self, actions):
        self.first[:] = False
        self.step += 1
        for i in range(self.num_envs):
            if self.level[i] is not None and self.step[i] == self.level[i]:
                self.results.append({"level": self.level[i], "success": bool(actions[i] == 7), "steps": int(self.step[i]),
                                     "return": 10.0 * (actions[i] == 7)})
                self.level[i] = self.queue.pop(0) if self.queue else None
                self.step[i], self.first[i] = 0, True


def test_loop_plays_one_episode_per_level_and_hands_the_previous_frame():
    seen = []

    def policy(frames, first, generator):
        prev, cur = frames[:, 0, 0, 0], frames[:, 1, 0, 0]
        for i in range(len(first)):
            if first[i]:
                assert (prev[i] == cur[i]).all() and cur[i, 1] == 0  # an episode's first frame, twice
            else:
                assert prev[i, 0] == cur[i, 0] and prev[i, 1] + 1 == cur[i, 1]  # same level, one step before
        seen.append(len(first))
        return torch.randint(6, 8, (len(first),), generator=generator).numpy()

    results = play(policy, FakeLevelEnv([3, 5, 2, 4, 6], 2), torch.Generator().manual_seed(0))
    assert sorted(r["level"] for r in results) == [2, 3, 4, 5, 6]
    again = play(policy, FakeLevelEnv([3, 5, 2, 4, 6], 2), torch.Generator().manual_seed(0))
    assert results == again  # seeded


def test_agent_save_load_and_decode(rec, tmp_path, capsys):
    code, out, err = cli(capsys, "agent", "train", "--kind", "latent", "--data", rec / "data", "--model", rec / "lam",
                         "--labels", "25", "--out", tmp_path / "latent", "--steps", "5", "--preset", "debug", "--quiet",
                         "--device", "cpu", "--decode", "argmax")
    assert code == 0, err
    agent = load_agent(tmp_path / "latent")
    assert agent.kind == "latent" and agent.labels == 25 and agent.net.config.num_outputs == 8
    net = PolicyNet(PolicyConfig.from_dict(agent.config["policy"]))
    net.load_state_dict(agent.net.state_dict())
    frames = torch.randint(0, 256, (5, 2, 64, 64, 3), dtype=torch.uint8)
    torch.testing.assert_close(net.eval()(frames), agent.net(frames))
    # argmax decode plays each code's most frequent real class, as the map's dictionary says
    probs = dictionary_probs(agent.amap)
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))
    pol = ClonedPolicy(agent, act="argmax")
    codes = agent.net(frames).argmax(-1)
    expect = agent.raw_action[agent.amap.code_to_class()[codes.numpy()]]
    got = pol(frames.numpy(), np.zeros(5, bool), torch.Generator().manual_seed(0))
    assert (got == expect).all()
    sampled = ClonedPolicy(agent, decode="sample")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert (sampled(frames.numpy(), None, g1) == sampled(frames.numpy(), None, g2)).all()


@needs_procgen
def test_train_eval_report_end_to_end(rec, tmp_path, capsys):
    code, _, err = cli(capsys, "agent", "train", "--kind", "oracle", "--data", rec / "data", "--out", tmp_path / "oracle",
                       "--steps", "10", "--preset", "debug", "--quiet", "--device", "cpu")
    assert code == 0, err
    code, out, err = cli(capsys, "agent", "train", "--kind", "latent", "--data", rec / "data", "--model", rec / "lam",
                         "--labels", "50", "--out", tmp_path / "latent-n50", "--steps", "10", "--preset", "debug",
                         "--quiet", "--device", "cpu")
    assert code == 0, err
    assert "map fitted on 50 labels" in out
    # the same policy with a map from 25 labels: only the map is fitted
    code, _, err = cli(capsys, "agent", "train", "--kind", "latent", "--data", rec / "data", "--model", rec / "lam",
                       "--labels", "25", "--policy-from", tmp_path / "latent-n50", "--steps", "0",
                       "--out", tmp_path / "latent-n25", "--quiet", "--device", "cpu")
    assert code == 0, err
    a, b = load_agent(tmp_path / "latent-n50"), load_agent(tmp_path / "latent-n25")
    assert all(torch.equal(x, y) for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values()))
    assert (a.labels, b.labels) == (50, 25)
    shutil.move(tmp_path / "latent-n50", tmp_path / "moved")  # the folder alone plays: no LAM, no data needed
    evals = []
    for name, agent in (("oracle", tmp_path / "oracle"), ("latent-n50", tmp_path / "moved"),
                        ("latent-n25", tmp_path / "latent-n25"), ("random", "random")):
        code, out, err = cli(capsys, "agent", "eval", "--agent", agent, "--start-level", 1000000, "--num-levels", 3,
                             "--max-steps", 25, "--num-envs", 2, "--out", tmp_path / f"{name}.json", "--quiet",
                             "--device", "cpu")
        assert code == 0, err
        res = json.loads((tmp_path / f"{name}.json").read_text())
        assert res["episodes"] == 3 and [r[0] for r in res["per_level"]] == [1000000, 1000001, 1000002]
        assert res["ci95"][0] <= res["success_rate"] <= res["ci95"][1]
        assert all(r[3] <= 25 for r in res["per_level"])
        evals.append(tmp_path / f"{name}.json")
    code, out, err = cli(capsys, "agent", "report", "--evals", *evals, "--out", tmp_path / "report")
    assert code == 0, err
    assert (tmp_path / "report" / "success_vs_labels.png").stat().st_size > 1000
    assert "latent BC, N = 25" in (tmp_path / "report" / "agents.md").read_text()


def test_bad_input_is_one_line(rec, tmp_path, capsys):
    assert "no true actions" in one_error_line(capsys, "agent", "train", "--kind", "oracle", "--data", rec / "unlabelled",
                                               "--out", tmp_path / "a", "--preset", "debug")
    assert "no true actions" in one_error_line(capsys, "agent", "train", "--kind", "latent", "--data",
                                               rec / "unlabelled", "--model", rec / "lam", "--out", tmp_path / "a")
    assert "more than" in one_error_line(capsys, "agent", "train", "--kind", "latent", "--data", rec / "data", "--model",
                                         rec / "lam", "--labels", "100000", "--steps", "2", "--preset", "debug",
                                         "--out", tmp_path / "a", "--quiet")
    assert not (tmp_path / "a").exists()  # nothing half-written
    assert "needs --model" in one_error_line(capsys, "agent", "train", "--kind", "latent", "--data", rec / "data",
                                             "--out", tmp_path / "a")
    (tmp_path / "not-agent").mkdir()
    (tmp_path / "not-agent" / "config.json").write_text("{}")
    assert "not an agent folder" in one_error_line(capsys, "agent", "eval", "--agent", tmp_path / "not-agent",
                                                   "--start-level", 1000000, "--num-levels", 2, "--out", tmp_path / "e.json")
    assert "no such agent folder" in one_error_line(capsys, "agent", "eval", "--agent", tmp_path / "nothing",
                                                    "--start-level", 1000000, "--num-levels", 2, "--out", tmp_path / "e.json")
    assert "must be a .json" in one_error_line(capsys, "agent", "eval", "--agent", "random", "--start-level", 1000000,
                                               "--num-levels", 2, "--out", tmp_path / "e.txt")
    # a map from another model: a latent agent whose action_map.json was fitted for another LAM
    code, _, err = cli(capsys, "agent", "train", "--kind", "latent", "--data", rec / "data", "--model", rec / "lam",
                       "--labels", "25", "--out", tmp_path / "latent", "--steps", "2", "--preset", "debug", "--quiet")
    assert code == 0, err
    code, _, err = cli(capsys, "agent", "train", "--kind", "latent", "--data", rec / "data", "--model",
                       rec / "other-lam", "--labels", "25", "--out", tmp_path / "latent-other", "--steps", "2",
                       "--preset", "debug", "--quiet")
    assert code == 0, err
    shutil.copy(tmp_path / "latent-other" / "action_map.json", tmp_path / "latent" / "action_map.json")
    assert "another LAM" in one_error_line(capsys, "agent", "eval", "--agent", tmp_path / "latent", "--start-level",
                                           1000000, "--num-levels", 2, "--out", tmp_path / "e.json")
    with pytest.raises(GenieInputError, match="not a latent agent cloned on this LAM"):
        from genie.agents.train import train_agent

        train_agent("latent", rec / "data", tmp_path / "x", model=rec / "lam", labels=25, steps=0,
                    policy_from=tmp_path / "latent-other", progress=False)
    # evaluating on the levels the agent was trained on is refused
    assert "overlap" in one_error_line(capsys, "agent", "eval", "--agent", tmp_path / "latent-other", "--start-level",
                                       50, "--num-levels", 2, "--out", tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()


@needs_procgen
def test_the_demonstrator_beats_random_play():
    from genie.agents.evaluate import evaluate_agent

    kw = dict(start_level=1000000, num_levels=4, num_envs=4, device="cpu", progress=False)
    search, rand = evaluate_agent("search", **kw), evaluate_agent("random", **kw)
    assert search["successes"] == 4 > rand["successes"]
    assert search["mean_steps"] < rand["mean_steps"]
    # search-right's default move alone (always RIGHT) is stopped by the first wall; its search is not
    kw["max_steps"] = 200
    assert evaluate_agent("search-right", **kw)["successes"] == 4 > evaluate_agent("right", **kw)["successes"]
