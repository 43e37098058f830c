"""A full disk: writing a dataset or an export onto a 1 MiB tmpfs fails with one clear line and exit 2,
and leaves nothing that looks complete (an earlier export at the same place stays whole)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import smooth_frames, write_video
from tests.test_fuzz import cli


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for this test (needs root / CAP_SYS_ADMIN; skipped otherwise)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (mount exited {p.returncode}: {p.stderr.strip()[:200]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


def _fill(disk: Path, leave: int) -> None:
    """Fill the filesystem until about `leave` bytes are free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("genie: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_import_onto_a_full_disk(small_disk, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):  # 3 × 40 frames of 64×64 RGB: 1.5 MB of raw frames for a 1 MiB disk
        write_video(videos / f"v{i}.mp4", smooth_frames(40, 64, 64, seed=i))
    out = small_disk / "ds"
    code, _, err = cli("data", "import", "--videos", videos, "--out", out, "--resolution", "64")
    assert code == 2
    line = _error_line(err)
    assert str(out) in line and "no space left" in line
    assert sorted(p.name for p in small_disk.iterdir()) == []  # no dataset, and no temporary left behind


def _checkpoint(path: Path) -> Path:
    from tokenizer.config import TokenizerConfig
    from tokenizer.module import TokenizerModule

    torch.manual_seed(0)
    m = TokenizerModule(TokenizerConfig.preset("debug"))
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, path)
    return path


def test_export_onto_a_full_disk_keeps_the_previous_export(small_disk, tmp_path):
    from genie.export import load_export

    ckpt = _checkpoint(tmp_path / "tok.ckpt")
    out = small_disk / "exp"
    code, _, err = cli("export", "tokenizer", "--ckpt", ckpt, "--out", out)
    assert code == 0, err[-3000:]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fill(small_disk, leave=16 * 1024)  # far less than model.safetensors needs
    code, _, err = cli("export", "tokenizer", "--ckpt", ckpt, "--out", out)
    assert code == 2
    line = _error_line(err)
    assert str(out) in line and "no space left" in line
    assert sorted(p.name for p in small_disk.iterdir()) == ["exp", "filler"]  # no temporary left behind
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    load_export(out, "tokenizer")  # still whole and loadable
    (small_disk / "filler").unlink()
    _fill(small_disk, leave=16 * 1024)
    code, _, err = cli("export", "tokenizer", "--ckpt", ckpt, "--out", small_disk / "fresh")
    assert code == 2 and "no space left" in _error_line(err)
    assert not (small_disk / "fresh").exists()
