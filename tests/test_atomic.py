"""Atomic writes: a kill in the middle of writing a checkpoint or an export leaves the previous one whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_pipelines.storage import DatasetWriter
from genie.core import atomic
from tests.conftest import ROOT, coded_episode
from tests.stall_write import MARK

STALL = [sys.executable, str(ROOT / "tests" / "stall_write.py")]


def _env(**kw: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **kw)


def _kill_when_stalled(cmd: list[str], env: dict, timeout: float = 240) -> str:
    """Run `cmd` (under tests/stall_write.py) until it reports that it hangs half-way through a write, then SIGKILL it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(ROOT))
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if MARK in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    out = "".join(seen)
    assert MARK in out, out[-3000:]
    assert proc.returncode == -signal.SIGKILL
    return out


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path):
    p = tmp_path / "report.json"
    atomic.write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["report.json"]
    atomic.write_text(p, "new")
    assert p.read_text() == "new" and sorted(x.name for x in tmp_path.iterdir()) == ["report.json"]


def test_replace_dir_swaps_whole_folders(tmp_path):
    out = tmp_path / "exp"
    for text in ("one", "two"):
        tmp = atomic.temp_dir_beside(out)
        (tmp / "a.txt").write_text(text)
        atomic.replace_dir(tmp, out)
        assert (out / "a.txt").read_text() == text
    assert sorted(x.name for x in tmp_path.iterdir()) == ["exp"]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    out = tmp_path_factory.mktemp("atomic") / "d64"
    with DatasetWriter(out, chunk_len=16) as w:
        for e in range(2):
            w.add_episode(coded_episode(e, 8, h=64, w=64), "train")
        w.close()
    return out


def _train_cmd(data: Path, root: Path, *extra: str, python: list[str] = [sys.executable]) -> list[str]:  # noqa: B006
    return [*python, "-m", "genie", "train", "tokenizer", "--config", "configs/tokenizer/debug.yaml",
            "--data.data", str(data), "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", "6", "--checkpoint_every", "2", "--data.num_workers", "0", *extra]


def test_kill_during_checkpoint_write_keeps_last_ckpt_and_resume_works(video, tmp_path):
    root = tmp_path / "run"
    # the second write of last.ckpt (step 4) stops half-way; the first (step 2) must survive the kill
    _kill_when_stalled(_train_cmd(video, root, python=[*STALL, "last.ckpt:2"]), _env())
    ckpts = root / "checkpoints"
    partial = [p for p in ckpts.iterdir() if p.name != "last.ckpt"]
    assert partial and all(p.name.startswith(".last.ckpt.") for p in partial)  # the half-written temporary
    state = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    with pytest.raises(Exception):  # noqa: B017 (torch reports a truncated file as one of several types)
        torch.load(partial[0], map_location="cpu", weights_only=True)  # the hook really cut a checkpoint in half
    p = subprocess.run(_train_cmd(video, root, "--ckpt_path", "last"), capture_output=True, text=True, timeout=300,
                       env=_env(), cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((root / "export" / "genie_export.json").read_text())["global_step"] == 6
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6


_EXPORT_TWICE = """
import sys, torch
from genie.export import save_export
from tokenizer.config import TokenizerConfig
from tokenizer.model import VideoTokenizer
for seed in (0, 1):
    torch.manual_seed(seed)
    save_export(VideoTokenizer(TokenizerConfig.preset("debug")), sys.argv[1], "tokenizer", extra={"seed": seed})
    print("saved", seed, flush=True)
"""


def test_kill_during_export_write_keeps_the_previous_export(tmp_path):
    from genie.export import load_export
    from tokenizer.config import TokenizerConfig
    from tokenizer.model import VideoTokenizer

    out = tmp_path / "exp"
    text = _kill_when_stalled([*STALL, "exp:2", "-c", _EXPORT_TWICE, str(out)], _env())
    assert "saved 0" in text and "saved 1" not in text
    assert json.loads((out / "genie_export.json").read_text())["seed"] == 0
    loaded = load_export(out, "tokenizer")
    torch.manual_seed(0)
    ref = VideoTokenizer(TokenizerConfig.preset("debug"))
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), loaded.state_dict().values()))
    hidden = [p.name for p in tmp_path.iterdir() if p.name != "exp"]
    assert hidden and all(n.startswith(".exp.") for n in hidden)  # only a hidden temporary beside it
