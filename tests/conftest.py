"""Shared fixtures: small synthetic datasets and videos made on the spot (tests never download)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def coded_episode(episode: int, n: int, h: int = 16, w: int = 16, rng=None):
    """Frames whose pixels encode (episode, frame index, previous action) so tests can check alignment.

    pixel [0,0,0] = episode, [0,0,1] = frame index mod 256, [0,0,2] = the action taken at the previous
    frame (255 at frame 0). actions[i] is the action taken at frame i.
    """
    from data_pipelines.storage import Episode

    rng = rng or np.random.default_rng(episode)
    actions = rng.integers(0, 15, size=n).astype(np.int16)
    frames = rng.integers(0, 256, size=(n, h, w, 3)).astype(np.uint8)
    frames[:, 0, 0, 0] = episode
    frames[:, 0, 0, 1] = np.arange(n) % 256
    frames[0, 0, 0, 2] = 255
    frames[1:, 0, 0, 2] = actions[:-1]
    dones = np.zeros(n, bool)
    dones[-1] = True
    return Episode(frames=frames, actions=actions, rewards=np.zeros(n, np.float32), dones=dones, level_seed=1000 + episode)


@pytest.fixture
def coded_dataset(tmp_path):
    """A dataset of 6 train + 2 val coded episodes of varied length, chunk_len 8 (clips cross chunks)."""
    from data_pipelines.storage import DatasetWriter

    out = tmp_path / "coded"
    lengths = [5, 23, 40, 9, 17, 31]
    with DatasetWriter(out, chunk_len=8, card={"source": "test", "num_actions": 15}) as w:
        for e, n in enumerate(lengths):
            w.add_episode(coded_episode(e, n), "train")
        w.add_episode(coded_episode(100, 20), "val")
        w.add_episode(coded_episode(101, 12), "val")
        w.close()
    return out, lengths


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264", fps: int = 10, pix_fmt: str = "yuv420p"):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = pix_fmt
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def smooth_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A moving colour gradient: compresses well and survives yuv420p nearly unchanged."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        out[t, ..., 0] = (xx * 4 + t * 7 + seed * 11) % 256
        out[t, ..., 1] = (yy * 4 + t * 3) % 256
        out[t, ..., 2] = ((xx + yy) * 2 + seed * 40) % 256
    return out


def run_genie(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "genie", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))


def stderr_line(p: subprocess.CompletedProcess) -> str:
    lines = [l for l in p.stderr.strip().splitlines() if l.startswith("genie: error")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return lines[0]
