"""Acting inside the world model (issue 28): the heads on a tiny recording, planning where the best action is known,
CMA-ES on a toy objective and in a stub dream, bad input as one line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_pipelines.storage import DatasetWriter, Episode
from genie.acting.dream import DreamSettings, cma_minimise, controller_actions, dream_returns
from genie.acting.heads import (
    HeadsConfig,
    RewardHeads,
    fit_heads,
    head_examples,
    load_heads,
    roc_auc,
    save_heads,
    score_heads,
)
from genie.acting.plan import PlanSettings, PromptBuffer, all_sequences, plan, trajectory_value
from genie.core.errors import GenieInputError
from genie.export import save_export
from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionModel
from tests.test_agents import cli, one_error_line
from tokenizer.config import TokenizerConfig
from tokenizer.model import VideoTokenizer


def _episode(e: int, n: int, won: bool) -> Episode:
    """Dark noise frames; the last frame of a won episode is white (the 'coin'), of a lost one red."""
    rng = np.random.default_rng(e)
    frames = rng.integers(0, 60, size=(n, 64, 64, 3)).astype(np.uint8)
    frames[-1] = (255, 255, 255) if won else (255, 0, 0)
    rewards = np.zeros(n, np.float32)
    rewards[-1] = 10.0 if won else 0.0
    dones = np.zeros(n, bool)
    dones[-1] = True
    return Episode(frames=frames, actions=rng.integers(0, 15, n).astype(np.int16), rewards=rewards, dones=dones,
                   level_seed=e)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    root = tmp_path_factory.mktemp("acting")
    with DatasetWriter(root / "data", chunk_len=8, card={"source": "coinrun", "num_actions": 15}) as w:
        for e in range(6):
            w.add_episode(_episode(e, 6 + e, won=e % 2 == 0), "train")
        for e in range(6, 8):
            w.add_episode(_episode(e, 7, won=e % 2 == 0), "val")
        w.close()
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig.preset("debug")).eval()
    return root, tok


def test_head_targets_belong_to_the_frame_the_step_is_taken_from(rec):
    root, tok = rec
    ex = head_examples(tok, root / "data", "train", windows=1)
    assert len(ex) == sum(min(tok.config.num_frames, 6 + e) - 1 for e in range(6))
    # per episode: the reward and end sit on the last pair only, rewards on won episodes only
    assert int(ex.targets[:, 1].sum()) == 6 and int(ex.targets[:, 0].sum()) == 3
    assert ex.targets[:, 0].le(ex.targets[:, 1]).all()  # the coin ends the episode


def test_heads_learn_the_recording_and_round_trip(rec, tmp_path):
    root, tok = rec
    ex = head_examples(tok, root / "data", "train", windows=2)
    torch.manual_seed(0)
    heads = RewardHeads(HeadsConfig(tok.config.codebook_size, tuple(tok.config.grid), embed=8, channels=16))
    losses = fit_heads(heads, ex, steps=60, batch=32, lr=1e-2)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    m = score_heads(heads, ex)
    assert m["end"]["auc"] > 0.9 and m["reward"]["auc"] > 0.9
    assert m["end"]["majority_accuracy"] == pytest.approx(1 - 6 / len(ex))
    save_heads(heads, tmp_path / "h", {"note": "test"})
    again = load_heads(tmp_path / "h", tokenizer=tok)
    assert torch.equal(again(ex.prev[:4], ex.cur[:4]), heads(ex.prev[:4], ex.cur[:4]))
    with pytest.raises(GenieInputError):
        load_heads(tmp_path / "nothing")


def test_evaluate_scores_the_heads_on_the_split_it_is_given(rec, tmp_path, capsys):
    """`genie evaluate --heads`: the same figures as score_heads on that split's frame pairs, in the JSON and the table;
    heads made for another tokenizer, or a model without one, are one line and exit 2."""
    root, _ = rec
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig.preset("debug"))
    tok(torch.rand(2, tok.config.num_frames, 3, 64, 64) * 2 - 1)  # a first training-mode pass initialises the codebook
    save_export(tok.eval(), tmp_path / "tok", "tokenizer")
    heads = RewardHeads(HeadsConfig(tok.config.codebook_size, tuple(tok.config.grid), embed=8, channels=16))
    fit_heads(heads, head_examples(tok, root / "data", "train", windows=2), steps=40, batch=32, lr=1e-2)
    save_heads(heads, tmp_path / "h", {"note": "test"})
    code, out, _ = cli(capsys, "evaluate", "--model", tmp_path / "tok", "--data", root / "data", "--split", "val",
                       "--heads", tmp_path / "h", "--out", tmp_path / "e.json", "--quiet", "--device", "cpu")
    assert code == 0
    got = json.loads((tmp_path / "e.json").read_text())["heads"]
    want = score_heads(heads, head_examples(tok, root / "data", "val", max_episodes=128, windows=2, seed=0))
    assert got["reward"] == pytest.approx(want["reward"]) and got["end"] == pytest.approx(want["end"])
    assert got["episodes"] == 2 and got["end"]["positives"] == 2
    assert "| heads | end: accuracy (majority) / AUC" in out
    other = RewardHeads(HeadsConfig(tok.config.codebook_size * 2, tuple(tok.config.grid), embed=8, channels=16))
    save_heads(other, tmp_path / "h2", {"note": "test"})
    base = ["evaluate", "--data", root / "data", "--out", tmp_path / "e2.json", "--quiet", "--device", "cpu"]
    assert "tokenizer has" in one_error_line(capsys, *base, "--model", tmp_path / "tok", "--heads", tmp_path / "h2")
    save_export(LatentActionModel(LatentActionConfig.preset("debug")).eval(), tmp_path / "lam", "lam")
    assert "holds no tokenizer" in one_error_line(capsys, *base, "--model", tmp_path / "lam", "--heads", tmp_path / "h")
    assert not (tmp_path / "e2.json").exists()


def test_roc_auc():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # ties count half
    assert roc_auc(np.array([0.1, 0.2]), np.array([0, 0])) is None


class StubDynamics(torch.nn.Module):
    """The next frame's tokens are all the id of the action that leads to it (so a frame shows its action)."""

    def __init__(self, num_actions: int = 8, grid=(2, 2)):
        super().__init__()
        self.config = SimpleNamespace(num_actions=num_actions, num_frames=6, context_frames=5, vocab_size=num_actions,
                                      grid=grid, null_action=False)
        self.mask_id = num_actions
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens, actions, cache=None, return_cache=False, prev_tokens=None, where=None, null_actions=None):
        b, t, h, w = tokens.shape
        last = actions[:, -1] if actions is not None and actions.shape[1] else torch.zeros(b, dtype=torch.long)
        logits = torch.nn.functional.one_hot(last, self.config.vocab_size).float() * 20  # (b, v)
        logits = logits[:, None, None, None].expand(b, t, h, w, -1)
        past = 0 if cache is None else cache.num_frames
        return (logits, SimpleNamespace(num_frames=past + t)) if return_cache else logits


class StubHeads:
    """Reward where the frame shows action `good`; an end without reward where it shows `deadly`."""

    def __init__(self, good: int, deadly: int | None = None):
        self.good, self.deadly = good, deadly
        self.config = SimpleNamespace(channels=1)

    def probs(self, prev, cur):
        shown = cur[:, 0, 0]
        r = (shown == self.good).float()
        e = torch.maximum(r, (shown == self.deadly).float()) if self.deadly is not None else r
        return r, e

    def features(self, prev, cur):
        return torch.ones(cur.shape[0], 2)


def test_plan_finds_the_rewarded_action_and_avoids_death():
    dyn, tokens = StubDynamics(), torch.zeros(3, 1, 2, 2, dtype=torch.long)
    for horizon in (1, 2, 3):
        best, values = plan(dyn, StubHeads(good=5), tokens, None, PlanSettings(horizon=horizon, replan=1))
        assert values.shape == (3, 8 ** horizon) and (best[:, 0] == 5).all()
    # two steps: 2 then 5 reaches the coin later, 3 dies at once; the planner takes the long way round 3
    best, _ = plan(dyn, StubHeads(good=5, deadly=3), tokens, None, PlanSettings(horizon=2))
    assert (best[:, 0] == 5).all()
    seqs = all_sequences(8, 2)
    assert seqs.shape == (64, 2) and seqs[13].tolist() == [1, 5]
    # a death first forfeits what follows
    v = trajectory_value(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]]), 0.9, 1.0)
    assert v[0] == pytest.approx(-1.0) and v[1] == pytest.approx(0.9)


def test_plan_with_a_prompt_of_several_frames():
    dyn = StubDynamics()
    tokens = torch.zeros(2, 3, 2, 2, dtype=torch.long)
    best, _ = plan(dyn, StubHeads(good=6), tokens, torch.zeros(2, 2, dtype=torch.long), PlanSettings(horizon=2))
    assert (best[:, 0] == 6).all()


def test_prompt_buffer_pads_and_restarts():
    buf = PromptBuffer(3)
    f = np.zeros((2, 2, 4, 4, 3), np.uint8)
    f[:, 1] = 10
    buf.update(f, np.array([True, True]))
    f[:, 1] = 20
    buf.update(f, np.array([False, True]))
    p = buf.prompts([0, 1])
    assert p.shape == (2, 3, 3, 4, 4)
    assert len(buf.frames[0]) == 2 and len(buf.frames[1]) == 1  # env 1 restarted its episode
    assert torch.equal(p[1, 0], p[1, 2])  # padded with its oldest frame


def test_cma_es_minimises_a_toy_objective():
    target = np.array([3.0, -1.0, 0.5, 2.0])
    best, history = cma_minimise(lambda xs: ((xs - target) ** 2).sum(1), np.zeros(4), 1.0, generations=60,
                                 popsize=8, seed=0)
    assert np.abs(best - target).max() < 0.05 and history[-1][0] < history[0][0]


def test_controller_trained_in_a_stub_dream_beats_random_actions():
    dyn, heads = StubDynamics(), StubHeads(good=5)
    start = torch.zeros(2, 2, 2, dtype=torch.long)
    settings = DreamSettings(steps=3, starts=2, popsize=6, generations=8, maskgit_steps=1)
    w = torch.zeros(1, 3 * 8)
    w[0, 2 * 8 + 5] = 1.0  # bias row: always action 5
    assert controller_actions(w, torch.ones(1, 4, 2)).eq(5).all()
    assert dream_returns(dyn, heads, w, start, settings)[0, 0] == pytest.approx(10.0)  # the coin ends the dream

    def loss(xs):
        return -dream_returns(dyn, heads, torch.as_tensor(xs, dtype=torch.float32), start, settings).mean(1).numpy()

    best, _ = cma_minimise(loss, np.zeros(3 * 8), 0.5, settings.generations, settings.popsize, seed=0)
    rnd = dream_returns(dyn, heads, torch.zeros(1, 24), start, settings, random_actions=True).mean()
    assert -loss(best[None])[0] > float(rnd)


def test_bad_input_is_one_line(rec, tmp_path, capsys):
    root, _ = rec
    base = ["--model", tmp_path / "none", "--heads", tmp_path / "h", "--start-level", "0", "--num-levels", "1"]
    assert "--horizon" in one_error_line(capsys, "plan", *base, "--out", tmp_path / "p.json", "--horizon", "9")
    assert "--replan" in one_error_line(capsys, "plan", *base, "--out", tmp_path / "p.json", "--replan", "3")
    assert ".json" in one_error_line(capsys, "plan", *base, "--out", tmp_path / "p.txt")
    assert "no such world-model folder" in one_error_line(capsys, "plan", *base, "--out", tmp_path / "p.json")
    assert "--popsize" in one_error_line(capsys, "dream", *base, "--data", root / "data", "--out", tmp_path / "d.json",
                                         "--popsize", "1")
    assert "no tokenizer" in one_error_line(capsys, "heads", "train", "--model", tmp_path, "--data", root / "data",
                                            "--out", tmp_path / "h")
    code, _, _ = cli(capsys, "plan", "--help")
    assert code == 0
