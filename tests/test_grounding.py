"""Latent → real action maps (genie.grounding, `genie ground`): recovery of a known table, the written map and
what reads it, and bad input as one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_pipelines.storage import DatasetWriter
from genie.core.errors import GenieInputError
from genie.export import save_export
from genie.grounding import (
    ActionMap,
    Transitions,
    fit_action_map,
    fit_dictionary,
    fit_linear,
    grounding_table,
    lam_fingerprint,
    load_action_map,
    save_action_map,
)
from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionModel
from tests.conftest import coded_episode, run_genie, stderr_line

MERGED = [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4]
NAMES = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP", "D", "A", "W", "S", "Q", "E"]


def synthetic(n: int, seed: int) -> Transitions:
    """4 codes each standing for one of 3 classes (code 3 is noise), latents that encode the class linearly."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    true_code = np.array([2, 0, 1])[labels]  # class 0 -> code 2, class 1 -> code 0, class 2 -> code 1
    codes = np.where(rng.random(n) < 0.9, true_code, 3)
    latents = rng.normal(size=(n, 6))
    latents[:, 0] += 3 * (labels == 0)
    latents[:, 1] += 3 * (labels == 2)
    return Transitions(latents.astype(np.float32), codes, labels)


def test_the_maps_recover_a_known_latent_to_action_table():
    fit, held = synthetic(400, 0), synthetic(400, 1)
    counts = fit_dictionary(fit.codes, fit.labels, 4, 3)
    assert list(counts[:3].argmax(1)) == [1, 2, 0]
    linear = fit_linear(fit.latents, fit.labels, 3)
    assert (linear.predict(held.latents) == held.labels).mean() > 0.85
    rows = grounding_table(fit, held, 4, 3, budgets=(25, 200, 1000))
    assert [r["labels"] for r in rows] == [25, 200]  # a budget beyond the data is left out
    assert rows[-1]["dictionary_accuracy"] > 0.85 > rows[-1]["majority_accuracy"]
    amap = fit_action_map(fit, ["A", "B", "C"], 4, 200, "x", {})
    assert amap.class_to_code() == {"A": 2, "B": 0, "C": 1}
    assert amap.latent_for("b") == 0
    with pytest.raises(GenieInputError, match="unknown real action"):
        amap.latent_for("JUMP")
    again = ActionMap.from_dict(json.loads(json.dumps(amap.to_dict())))
    assert again.class_to_code() == amap.class_to_code()
    np.testing.assert_allclose(again.linear.logits(held.latents), amap.linear.logits(held.latents))
    with pytest.raises(GenieInputError, match="more than"):
        fit_action_map(fit, ["A", "B", "C"], 4, 401, "x", {})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny CoinRun-like recording (train + test levels, 15 actions merged to 9) and a debug LAM export."""
    root = tmp_path_factory.mktemp("ground")
    card = {"source": "coinrun", "num_actions": 15, "action_names": NAMES, "merged_action": MERGED}
    with DatasetWriter(root / "data", chunk_len=16, card=card) as w:
        for e in range(5):
            w.add_episode(coded_episode(e, 40, h=64, w=64), "train")
        for e in range(2):
            w.add_episode(coded_episode(50 + e, 20, h=64, w=64), "test")
        w.close()
    torch.manual_seed(0)
    lam = LatentActionModel(LatentActionConfig.preset("debug"))
    lam(torch.rand(2, 4, 3, 64, 64) * 2 - 1)
    save_export(lam.eval(), root / "lam", "lam")
    import dataclasses

    with DatasetWriter(root / "unlabelled", chunk_len=16) as w:
        w.add_episode(dataclasses.replace(coded_episode(0, 20, h=64, w=64), actions=None), "train")
        w.add_episode(dataclasses.replace(coded_episode(1, 20, h=64, w=64), actions=None), "test")
        w.close()
    return root


def test_ground_writes_a_map_that_generate_and_the_lam_check_read(labelled, tmp_path):
    p = run_genie("ground", "--model", labelled / "lam", "--data", labelled / "data", "--labels", "25", "--no-ceiling",
                  "--quiet", "--out", tmp_path / "g.json")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "g.json").read_text())
    assert [r["labels"] for r in res["rows"]] == [25, 100]  # 5 episodes of 40 frames hold 195 transitions
    assert all(0 <= r["dictionary_accuracy"] <= 1 for r in res["rows"])
    from genie.export import load_export

    lam = load_export(labelled / "lam", "lam")
    amap = load_action_map(labelled / "lam", lam=lam, required=True)
    assert amap.labels == 25 and amap.lam_sha256 == lam_fingerprint(lam)
    # a map fitted for another LAM is refused
    other = LatentActionModel(LatentActionConfig.preset("debug")).eval()
    with pytest.raises(GenieInputError, match="another LAM"):
        load_action_map(labelled / "lam", lam=other)


def in_process(capsys, *args) -> str:
    """`genie ARGS` in this process (no interpreter start-up): its one error line, after checking exit code 2."""
    from genie.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genie: error")]
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_ground_bad_input_is_one_line(labelled, tmp_path, capsys):
    p = run_genie("ground", "--model", labelled / "lam", "--data", labelled / "unlabelled", "--no-ceiling")
    assert p.returncode == 2 and "no true actions" in stderr_line(p)
    assert "more than" in in_process(capsys, "ground", "--model", labelled / "lam", "--data", labelled / "data",
                                     "--labels", "100000", "--no-ceiling")
    assert "no such model folder" in in_process(capsys, "ground", "--model", tmp_path / "nothing", "--data",
                                                labelled / "data")
    bad = tmp_path / "lam"
    import shutil

    shutil.copytree(labelled / "lam", bad)
    (bad / "action_map.json").write_text("{not json")
    with pytest.raises(GenieInputError, match="not a readable action map"):
        load_action_map(bad)
    save_action_map(fit_action_map(synthetic(50, 0), ["A", "B", "C"], 4, 25, "x", {}), bad)
    with pytest.raises(GenieInputError, match="codes"):
        from genie.export import load_export

        load_action_map(bad, lam=load_export(bad, "lam"))


def test_a_real_action_presses_the_code_that_stands_for_it_not_the_most_frequent_one():
    """class_to_code: a code used everywhere (the LAM's "nothing happens") outnumbers the rare action's own code
    in that action's column, yet the action's key goes to the code whose transitions are mostly that action; a
    code labelled once with an action does not win on that single count."""
    # code 0: frequent, mostly A; code 1: B's own, with one stray C; code 2: never labelled; classes A, B, C
    codes = np.array([0] * 80 + [0] * 12 + [1] * 10 + [1] * 1 + [0] * 20)
    labels = np.array([0] * 80 + [1] * 12 + [1] * 10 + [2] * 1 + [2] * 20)
    fit = Transitions(np.zeros((len(codes), 2), np.float32), codes, labels)
    amap = fit_action_map(fit, ["A", "B", "C"], 3, len(codes), "x", {})
    assert amap.counts[0, 1] > amap.counts[1, 1]  # the old rule (most frequent code in B's column) pressed code 0
    assert amap.class_to_code() == {"A": 0, "B": 1, "C": 0}
