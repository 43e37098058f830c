"""The whole pipeline on CUDA: each stage trains a few steps with validation on, exports, tokenises, generates
and evaluates on the GPU (issue 11). Skipped on machines without CUDA; run it whenever a GPU is available:

    python -m pytest -q tests/gpu

`GENIE_GPU_TESTS_DEVICE=cpu` dry-runs the same module on the CPU (fp32), to check it before a GPU is lent.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from data_pipelines.storage import DatasetWriter
from genie.export import load_export
from genie.world_model import WorldModel
from tests.conftest import coded_episode, run_genie

DEVICE = os.environ.get("GENIE_GPU_TESTS_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device on this machine")
DEV = "cuda:0" if DEVICE == "cuda" else "cpu"

GPU = ["--trainer.accelerator", "gpu" if DEVICE == "cuda" else "cpu", "--trainer.devices", "1",
       "--trainer.precision", "bf16-mixed" if DEVICE == "cuda" else "32-true",
       "--trainer.enable_progress_bar", "false", "--data.num_workers", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Video data with actions, and the three debug stages trained on CUDA with validation every 2 steps."""
    root = tmp_path_factory.mktemp("gpu")
    data = root / "video"
    with DatasetWriter(data, chunk_len=16, card={"source": "test", "num_actions": 15}) as w:
        for e in range(6):
            w.add_episode(coded_episode(e, 24, h=64, w=64), "train")
        for e in (90, 91):
            w.add_episode(coded_episode(e, 24, h=64, w=64), "val")
        for e in (95, 96):
            w.add_episode(coded_episode(e, 24, h=64, w=64), "test")
        w.close()
    runs = {}
    for stage, cfg in (("tokenizer", "tokenizer"), ("lam", "latent_actions")):
        runs[stage] = root / stage
        p = run_genie("train", stage, "--config", f"configs/{cfg}/debug.yaml", "--data.data", data,
                      "--trainer.default_root_dir", runs[stage], "--trainer.max_steps", "6",
                      "--trainer.val_check_interval", "2", *GPU, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    tokens = root / "tokens"
    p = run_genie("tokenize", "--tokenizer", runs["tokenizer"] / "export", "--lam", runs["lam"] / "export",
                  "--data", data, "--out", tokens, "--device", DEVICE, "--quiet", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"on {DEV}" in p.stdout
    runs["dynamics"] = root / "dynamics"
    p = run_genie("train", "dynamics", "--config", "configs/dynamics/debug.yaml", "--data.data", tokens,
                  "--trainer.default_root_dir", runs["dynamics"], "--trainer.max_steps", "6",
                  "--trainer.val_check_interval", "2", "--data.clip_len", "4", *GPU, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    WorldModel.assemble(runs["tokenizer"] / "export", runs["lam"] / "export", runs["dynamics"] / "export", root / "world")
    return root, data


def test_each_stage_trained_with_validation_and_exported(trained):
    root, _ = trained
    import csv

    for stage in ("tokenizer", "lam", "dynamics"):
        assert json.loads((root / stage / "export" / "genie_export.json").read_text())["global_step"] == 6
        rows = list(csv.DictReader(open(root / stage / "csv" / "version_0" / "metrics.csv")))
        assert any(r.get("val/loss") or r.get("val/psnr") for r in rows), stage  # validation ran on CUDA
        load_export(root / stage / "export", stage)


def test_generate_on_cuda_is_deterministic_and_matches_the_step_api(trained):
    root, _ = trained
    wm = WorldModel.from_pretrained(root / "world").to(DEV)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    a = wm.generate(x, [1, 2, 3], steps=4, seed=3)
    b = wm.generate(x, [1, 2, 3], steps=4, seed=3)
    assert a.device == torch.device(DEV) and torch.equal(a, b)
    state = wm.reset(x, seed=3)
    assert state.generator.device == torch.device(DEV)
    frame = wm.step(state, 1, steps=4)
    assert frame.device == torch.device(DEV) and torch.isfinite(frame).all()


def test_genie_generate_evaluate_probe_on_cuda(trained, tmp_path):
    root, data = trained
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "p.png")
    p = run_genie("generate", "--model", root / "world", "--prompt", tmp_path / "p.png", "--actions", "0,1,2",
                  "--out", tmp_path / "c.gif", "--steps", "4", "--device", DEVICE, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    for i in range(2):  # same seed, same figures on the same device
        p = run_genie("evaluate", "--model", root / "world", "--data", data, "--out", tmp_path / f"e{i}.json",
                      "--num-clips", "4", "--steps", "2", "--horizon", "3", "--device", DEVICE, "--quiet", timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
    e0, e1 = (json.loads((tmp_path / f"e{i}.json").read_text()) for i in range(2))
    assert e0["device"] == DEV and e0["world_model"] == e1["world_model"]
    p = run_genie("probe", "--model", root / "world", "--data", data, "--out", tmp_path / "probe", "--prompts", "2",
                  "--repeat", "2", "--steps", "2", "--device", DEVICE, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA")
def test_an_out_of_range_cuda_index_is_one_line(trained, tmp_path):
    root, data = trained
    p = run_genie("evaluate", "--model", root / "world", "--data", data, "--out", tmp_path / "e.json",
                  "--device", f"cuda:{torch.cuda.device_count()}")
    assert p.returncode == 2 and "out of range" in p.stderr and "Traceback" not in p.stderr
