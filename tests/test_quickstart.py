"""`genie quickstart --tiny`: the whole pipeline end to end (record, train ×3, tokenize, evaluate, probe, sample)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import run_genie


@pytest.mark.skipif(importlib.util.find_spec("procgen") is None, reason="procgen (the [coinrun] extra) not installed")
def test_quickstart_tiny_end_to_end(tmp_path):
    out = tmp_path / "qs"
    p = run_genie("quickstart", "--tiny", "--out", out, "--episodes", "4", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "quickstart finished in" in p.stdout and "genie generate --model" in p.stdout
    report = json.loads((out / "report.json").read_text())
    assert {"tokenizer", "lam", "world_model"} <= set(report)
    assert (out / "probe" / "index.html").is_file() and (out / "model" / "dynamics" / "model.safetensors").is_file()
    assert len(list((out / "samples").glob("action_*.gif"))) == 4
    p = run_genie("quickstart", "--tiny", "--out", out)
    assert p.returncode == 2 and "--overwrite" in p.stderr


def test_pretrained_without_committed_models_is_a_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    import genie.quickstart as qs
    from data_pipelines.errors import GenieInputError

    monkeypatch.setattr(qs, "PRETRAINED", tmp_path / "empty")
    with pytest.raises(GenieInputError, match="tokenizer, lam, dynamics"):
        qs.quickstart(tmp_path / "out", pretrained=True)
    assert not (tmp_path / "out").exists()


def test_committed_pretrained_models_assemble_and_generate(tmp_path):
    """The exports in pretrained/ fit together, so `genie generate` works right after install."""
    import torch

    from genie.quickstart import PRETRAINED
    from genie.world_model import WorldModel

    if not all((PRETRAINED / s / "model.safetensors").is_file() for s in ("tokenizer", "lam", "dynamics")):
        pytest.skip("no committed pretrained models")
    WorldModel.assemble(PRETRAINED / "tokenizer", PRETRAINED / "lam", PRETRAINED / "dynamics", tmp_path / "wm")
    wm = WorldModel.from_pretrained(tmp_path / "wm")
    prompt = torch.zeros(1, 1, 3, 64, 64)
    a = wm.generate(prompt, [0, 1], steps=2, seed=0)
    assert a.shape == (1, 3, 3, 64, 64) and torch.equal(a, wm.generate(prompt, [0, 1], steps=2, seed=0))
