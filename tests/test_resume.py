"""Nothing lost on a kill: a run killed mid-training and resumed with `--ckpt_path last` is the unbroken run.

For each stage (debug presets, CPU, fp32): one unbroken run of 12 steps against a run killed after
step 5 (a callback of the tests', `tests/power_cut.py`, that SIGKILLs the process, or a real SIGKILL from
outside at a random moment) and resumed from its last checkpoint (every 2 steps) to 12. The data has 5 batches per epoch, so the
resumed runs restart mid-epoch and cross epoch boundaries; validation runs every 4 steps. Final
weights and every logged train loss must be bitwise equal.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_pipelines.storage import DatasetWriter, Episode
from tests.conftest import ROOT, coded_episode

CONFIGS = {"tokenizer": "configs/tokenizer/debug.yaml", "lam": "configs/latent_actions/debug.yaml",
           "dynamics": "configs/dynamics/debug.yaml"}
STEPS = 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 8-frame train episodes (10 clips of 4 frames: 5 batches of 2 per epoch) and one val episode."""
    root = tmp_path_factory.mktemp("resume")
    with DatasetWriter(root / "video", chunk_len=16) as w:
        for e in range(2):
            w.add_episode(coded_episode(e, 8, h=64, w=64), "train")
        w.add_episode(coded_episode(9, 8, h=64, w=64), "val")
        w.close()
    rng = np.random.default_rng(0)
    with DatasetWriter(root / "tokens", chunk_len=8, card={"vocab_size": 32, "num_actions": 8}) as w:
        for e in range(3):
            ids = rng.integers(0, 32, (8, 8, 8, 1)).astype(np.uint16)
            acts = rng.integers(0, 8, 8).astype(np.int16)
            w.add_episode(Episode(frames=ids, actions=acts, level_seed=e), "train" if e < 2 else "val")
        w.close()
    return {"tokenizer": root / "video", "lam": root / "video", "dynamics": root / "tokens"}


def _cmd(stage: str, data: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "genie", "train", stage, "--config", CONFIGS[stage], "--data.data", str(data),
            "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "4", "--checkpoint_every", "2",
            "--trainer.log_every_n_steps", "1", "--data.num_workers", "0", *extra]


def _env(**kw: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **kw)


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(**env), cwd=str(ROOT))


def _losses(root: Path) -> dict[int, str]:
    """step → train/loss as logged (text, so equality is bitwise); later log versions win."""
    out = {}
    for f in sorted((root / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        out.update({int(r["step"]): r["train/loss"] for r in csv.DictReader(f.open()) if r.get("train/loss")})
    return out


def _compare(unbroken: Path, resumed: Path) -> float:
    a, b = load_file(unbroken / "export" / "model.safetensors"), load_file(resumed / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    la, lb = _losses(unbroken), _losses(resumed)
    assert sorted(la) == list(range(STEPS)), la
    assert la == lb, "logged train losses differ after the resume"
    assert diff == 0.0, f"final weights differ by up to {diff}"
    return diff


@pytest.fixture(scope="module")
def unbroken(data, tmp_path_factory):
    runs = {}

    def get(stage):
        if stage not in runs:
            root = tmp_path_factory.mktemp(f"unbroken-{stage}")
            p = _run(_cmd(stage, data[stage], root))
            assert p.returncode == 0, p.stderr[-3000:]
            runs[stage] = root
        return runs[stage]
    return get


@pytest.mark.parametrize("stage", ["tokenizer", "lam", "dynamics"])
def test_killed_at_step_5_and_resumed_is_the_unbroken_run(stage, data, unbroken, tmp_path):
    root = tmp_path / "run"
    p = _run(_cmd(stage, data[stage], root, "--trainer.callbacks+=tests.power_cut.KillAtStep",
                  "--trainer.callbacks.step=5"))
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert not (root / "export").exists()
    # the last checkpoint is from step 4, so step 4 is replayed from the restored RNG and data position
    state = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    p = _run(_cmd(stage, data[stage], root, "--ckpt_path", "last"))
    assert p.returncode == 0, p.stderr[-3000:]
    _compare(unbroken(stage), root)


def test_real_sigkill_at_a_random_moment_then_resume(data, unbroken, tmp_path):
    """SIGKILL from outside, at a seeded random delay after the first checkpoint appears."""
    stage, root = "lam", tmp_path / "run"
    proc = subprocess.Popen(_cmd(stage, data[stage], root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=_env(), cwd=str(ROOT))
    ckpt, deadline = root / "checkpoints" / "last.ckpt", time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(17).uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= step <= STEPS
    if proc.returncode != 0:  # the kill landed before the run ended (maybe after its last checkpoint, before the export)
        p = _run(_cmd(stage, data[stage], root, "--ckpt_path", "last"))
        assert p.returncode == 0, p.stderr[-3000:]
    print(f"killed after checkpoint at step {step}")
    _compare(unbroken(stage), root)


def test_resumable_sampler_skips_what_was_trained_on(coded_dataset):
    from data_pipelines.datamodule import VideoDataModule

    path, _ = coded_dataset
    dm = VideoDataModule(str(path), clip_len=4, batch_size=3, num_workers=0, seed=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    full = [b["start"].tolist() + b["episode_id"].tolist() for b in loader]
    loader.load_state_dict({"epoch": 0, "batches": 2, "seed": 3})
    assert [b["start"].tolist() + b["episode_id"].tolist() for b in loader] == full[2:]
    assert len(loader) == len(full)  # Lightning counts the skipped batches itself
    assert [b["start"].tolist() + b["episode_id"].tolist() for b in loader] == full  # the skip is used once
    loader.sampler.set_epoch(1)
    other = [b["start"].tolist() + b["episode_id"].tolist() for b in loader]
    assert other != full and sorted(map(tuple, other)) != []  # a new epoch, a new order
    loader.load_state_dict({"epoch": 0, "batches": len(full), "seed": 3})  # saved at the epoch's end
    assert loader.sampler.epoch == 1 and [b["start"].tolist() + b["episode_id"].tolist() for b in loader] == other
