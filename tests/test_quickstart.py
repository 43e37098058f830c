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
