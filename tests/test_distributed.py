"""Inference split across processes with accelerate (torchrun, 2 CPU processes over gloo): same totals as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import DatasetWriter
from tests.conftest import ROOT, coded_episode, run_genie
from tests.test_world_model import world  # noqa: F401  (fixture)


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                           "--standalone", "-m", "genie", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))


def test_tokenize_under_torchrun_matches_one_process(world, tmp_path):  # noqa: F811
    data = tmp_path / "video"
    with DatasetWriter(data, chunk_len=8, card={"num_actions": 15}) as w:
        for e, n in enumerate([9, 14, 6, 11, 7]):  # 5 episodes: an uneven share between 2 processes
            w.add_episode(coded_episode(e, n, h=64, w=64), "train")
        w.add_episode(coded_episode(50, 10, h=64, w=64), "val")
        w.close()
    args = ["tokenize", "--tokenizer", world / "tokenizer", "--lam", world / "lam", "--data", data, "--device", "cpu",
            "--quiet", "--batch-size", "2"]
    one = run_genie(*args, "--out", tmp_path / "one", timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(*args, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("tokenized") == 1 and "2 processes" in two.stdout  # the main process reports, once
    for split in ("train", "val"):
        a, b = ClipDataset(tmp_path / "one", split, clip_len=1), ClipDataset(tmp_path / "two", split, clip_len=1)
        assert a.num_episodes == b.num_episodes
        for e in range(a.num_episodes):
            assert a.episode_id(e) == b.episode_id(e)
            assert np.array_equal(a.episode_frames(e), b.episode_frames(e))
            assert np.array_equal(a.episode_actions(e), b.episode_actions(e))


def test_evaluate_under_torchrun_gives_the_totals_of_one_process(world, tmp_path):  # noqa: F811
    data = tmp_path / "video"
    with DatasetWriter(data, chunk_len=8, card={"merged_action": [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4]}) as w:
        for e in range(3):
            w.add_episode(coded_episode(e, 12, h=64, w=64), "test")
        w.close()
    args = ["evaluate", "--model", world / "world", "--data", data, "--device", "cpu", "--quiet", "--num-clips", "10",
            "--steps", "2", "--horizon", "3", "--seed", "1"]
    one = run_genie(*args, "--out", tmp_path / "one.json", timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(*args, "--out", tmp_path / "two.json")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (a.pop("processes"), b.pop("processes")) == (1, 2)
    assert a == b  # 10 clips in batches of 8/8/4 shared 2:1 or 1:2 between the processes, same figures
