"""`genie data import|info|coinrun` from the command line: frame-exact import and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_pipelines.clips import ClipDataset, VideoFolderClipDataset
from data_pipelines.importing import import_videos
from data_pipelines.video import _decode_pyav, resize_frames
from genie.core.frames import video_to_frames
from tests.conftest import ROOT, run_genie, smooth_frames, stderr_line, write_video


@pytest.fixture
def video_dir(tmp_path):
    d = tmp_path / "videos"
    (d / "sub").mkdir(parents=True)
    write_video(d / "a.mp4", smooth_frames(12, 64, 64, seed=0))
    write_video(d / "sub" / "b.mkv", smooth_frames(9, 48, 80, seed=1), codec="ffv1", pix_fmt="bgr0")
    write_video(d / "c.avi", smooth_frames(7, 64, 64, seed=2), codec="mjpeg", pix_fmt="yuvj420p")
    return d


def test_import_is_frame_exact_against_pyav(video_dir, tmp_path):
    s = import_videos(video_dir, tmp_path / "ds", resolution=64, val_fraction=0, test_fraction=0, progress=False)
    assert s["imported"] == 3 and not s["skipped"]
    ds = ClipDataset(tmp_path / "ds", "train", clip_len=2)
    by_source = {}
    for e in range(ds.num_episodes):
        src = ds.episode(e).source
        by_source[src] = ds.episode_frames(e)
    assert set(by_source) == {"a.mp4", "sub/b.mkv", "c.avi"}
    for rel, frames in by_source.items():
        ref = resize_frames(_decode_pyav(video_dir / rel), 64, "pad")  # the default fit keeps the whole frame
        assert np.array_equal(frames, ref), rel
    assert by_source["a.mp4"].shape == (12, 64, 64, 3)
    # 80×48 (width×height) letterboxed into 64×64: black bars above and below, content between
    b = by_source["sub/b.mkv"]
    assert b[:, :12].max() == 0 and b[:, -12:].max() == 0 and b[:, 14:50].mean() > 30
    assert not ds.has_actions and "actions" not in ds[0]


def test_video_folder_source_matches_import(video_dir, tmp_path):
    import_videos(video_dir, tmp_path / "ds", resolution=64, val_fraction=0, test_fraction=0, progress=False)
    direct = VideoFolderClipDataset(video_dir, "train", clip_len=3, resolution=64, val_fraction=0, test_fraction=0)
    imported = ClipDataset(tmp_path / "ds", "train", clip_len=3)
    assert len(direct) == len(imported) == (12 - 2) + (9 - 2) + (7 - 2)
    a = sorted(video_to_frames(direct[i]["video"]).tobytes() for i in range(len(direct)))
    b = sorted(video_to_frames(imported[i]["video"]).tobytes() for i in range(len(imported)))
    assert a == b


def test_import_skips_and_names_bad_files(video_dir, tmp_path):
    good = (video_dir / "a.mp4").read_bytes()
    (video_dir / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (video_dir / "corrupt.mp4").write_bytes(os.urandom(5000))
    (video_dir / "empty.webm").write_bytes(b"")
    (video_dir / "notes.txt").write_text("not a video")
    p = run_genie("data", "import", "--videos", video_dir, "--out", tmp_path / "ds", "--quiet",
                  "--val-fraction", "0", "--test-fraction", "0")
    assert p.returncode == 0, p.stderr
    for name in ("truncated.mp4", "corrupt.mp4", "empty.webm"):
        assert f"skipping {video_dir / name}" in p.stderr
    assert "skipped 3 unreadable" in p.stdout and "ignored 1 non-video files" in p.stdout
    card = json.loads((tmp_path / "ds" / "genie_dataset.json").read_text())
    assert sorted(s["file"] for s in card["skipped"]) == ["corrupt.mp4", "empty.webm", "truncated.mp4"]
    info = json.loads(run_genie("data", "info", tmp_path / "ds", "--json").stdout)
    assert info["episodes"] == 3 and info["has_actions"] is False and info["resolution"] == [64, 64]


@pytest.mark.parametrize("case", ["empty_dir", "missing_dir", "file_not_dir", "only_bad_videos", "no_videos"])
def test_import_bad_folders_exit_2(tmp_path, case):
    d = tmp_path / "in"
    if case == "empty_dir":
        d.mkdir()
    elif case == "file_not_dir":
        d.write_text("x")
    elif case == "only_bad_videos":
        d.mkdir()
        (d / "x.mp4").write_bytes(b"\x00" * 100)
    elif case == "no_videos":
        d.mkdir()
        (d / "readme.md").write_text("hi")
    p = run_genie("data", "import", "--videos", d, "--out", tmp_path / "ds", "--quiet")
    assert p.returncode == 2
    line = stderr_line(p)
    assert str(d) in line
    assert not (tmp_path / "ds").exists()
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".ds")], "partial folder left behind"


def test_out_not_empty_refused_unless_overwrite(video_dir, tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = run_genie("data", "import", "--videos", video_dir, "--out", out, "--quiet")
    assert p.returncode == 2 and "--overwrite" in stderr_line(p) and (out / "keep.txt").exists()
    p = run_genie("data", "import", "--videos", video_dir, "--out", out, "--quiet", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert not (out / "keep.txt").exists() and (out / "genie_dataset.json").exists()


def test_info_on_foreign_folder_exit_2(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "dataset_info.json").write_text("{}")
    p = run_genie("data", "info", tmp_path / "x")
    assert p.returncode == 2 and "not a genie dataset" in stderr_line(p)
    (tmp_path / "x" / "genie_dataset.json").write_text("{not json")
    p = run_genie("data", "info", tmp_path / "x")
    assert p.returncode == 2 and "unreadable dataset card" in stderr_line(p)


def test_killed_recording_leaves_no_dataset(tmp_path):
    """SIGKILL midway: the output folder must not exist (only a hidden .partial folder may)."""
    import importlib.util

    if importlib.util.find_spec("procgen") is None:
        pytest.skip("procgen not installed")
    out = tmp_path / "cr"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "genie", "data", "coinrun", "--out", str(out), "--episodes", "500",
                          "--quiet"], env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any(x.name.startswith(".cr.partial") and any(x.rglob("*.arrow"))
                                             for x in tmp_path.iterdir()):
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists()
    p2 = run_genie("data", "info", out)
    assert p2.returncode == 2


def test_coinrun_bad_arguments_exit_2(tmp_path):
    p = run_genie("data", "coinrun", "--out", tmp_path / "x", "--episodes", "0")
    assert p.returncode == 2 and "--episodes" in stderr_line(p)


def atari_frames(n: int = 6) -> np.ndarray:
    """210 rows × 160 columns like Atari, with a white 'score' band in rows 0-19 and a white 'paddle'
    band in rows 190-209: what a square centre crop removes."""
    f = smooth_frames(n, 210, 160, seed=3) // 2
    f[:, :20] = 255
    f[:, 190:] = 255
    return f


@pytest.fixture
def atari_dir(tmp_path):
    d = tmp_path / "atari"
    d.mkdir()
    write_video(d / "breakout.mp4", atari_frames())
    return d


def test_import_fit_pad_keeps_the_whole_frame(atari_dir, tmp_path):
    p = run_genie("data", "import", "--videos", atari_dir, "--out", tmp_path / "ds", "--quiet",
                  "--resolution", "64x48", "--val-fraction", "0", "--test-fraction", "0")
    assert p.returncode == 0, p.stderr
    assert "fitted to 64×48 (width×height) by --fit pad from 160×210 (1)" in p.stdout
    frames = ClipDataset(tmp_path / "ds", "train", clip_len=2).episode_frames(0)
    assert frames.shape == (6, 48, 64, 3)  # 64 wide, 48 high
    card = json.loads((tmp_path / "ds" / "genie_dataset.json").read_text())
    src = card["fit"]["sources"][0]
    assert card["fit"]["mode"] == "pad" and card["fit"]["target"] == {"height": 48, "width": 64}
    assert src["source"] == [210, 160] and src["files"] == 1 and src["crop_rows"] == [0, 0] and src["crop_cols"] == [0, 0]
    l, r = src["pad_cols"]
    assert l + r == 64 - src["scaled"][1] and l > 0 and src["scaled"][0] == 48
    assert frames[:, :, :l - 1].max() == 0 and frames[:, :, 64 - r + 1:].max() == 0  # black side bars
    content = frames[:, :, l + 1:64 - r - 1]
    assert content[:, :3].min() > 200 and content[:, -3:].min() > 200  # score and paddle bands survive


def test_import_fit_crop_says_what_it_dropped(atari_dir, tmp_path):
    p = run_genie("data", "import", "--videos", atari_dir, "--out", tmp_path / "ds", "--quiet", "--fit", "crop",
                  "--resolution", "64", "--val-fraction", "0", "--test-fraction", "0")
    assert p.returncode == 0, p.stderr
    assert "--fit crop drops 50 of 210 rows (25 top, 25 bottom) of 160×210 frames (1 file)" in p.stderr
    frames = ClipDataset(tmp_path / "ds", "train", clip_len=2).episode_frames(0)
    assert frames.shape == (6, 64, 64, 3) and frames[:, :2].max() < 200  # the bands are gone, and we said so
    card = json.loads((tmp_path / "ds" / "genie_dataset.json").read_text())
    assert card["fit"]["sources"][0]["crop_rows"] == [25, 25] and card["recipe"]["fit"] == "crop"


def test_import_fit_stretch_and_height_by_width(atari_dir, tmp_path):
    p = run_genie("data", "import", "--videos", atari_dir, "--out", tmp_path / "ds", "--quiet", "--fit", "stretch",
                  "--resolution", "48x64", "--val-fraction", "0", "--test-fraction", "0")
    assert p.returncode == 0, p.stderr
    frames = ClipDataset(tmp_path / "ds", "train", clip_len=2).episode_frames(0)
    assert frames.shape == (6, 64, 48, 3)  # 48 wide, 64 high
    assert frames[:, :3].min() > 200 and frames[:, -3:].min() > 200 and frames[:, :, :2].max() > 0  # no bars
    info = json.loads(run_genie("data", "info", tmp_path / "ds", "--json").stdout)
    assert info["resolution"] == [64, 48]


@pytest.mark.parametrize("res", ["64x", "axb", "4x64", "0"])
def test_import_bad_resolution_exit_2(atari_dir, tmp_path, res):
    p = run_genie("data", "import", "--videos", atari_dir, "--out", tmp_path / "ds", "--quiet", "--resolution", res)
    assert p.returncode == 2 and "--resolution" in stderr_line(p)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("n, expected", [(1, {"train": 1}), (2, {"train": 1, "val": 1}),
                                         (3, {"train": 1, "val": 1, "test": 1}), (5, None)])
def test_small_folders_always_get_held_out_files(tmp_path, n, expected):
    d = tmp_path / "few"
    d.mkdir()
    for i in range(n):
        write_video(d / f"clip{i}.mp4", smooth_frames(4, 32, 48, seed=i))
    (d / "zz_corrupt.mp4").write_bytes(os.urandom(3000))  # skipped before the splits are drawn
    s = import_videos(d, tmp_path / "ds", resolution=32, progress=False)  # default 5% / 5%
    assert [r for r, _ in s["skipped"]] == ["zz_corrupt.mp4"]
    if expected is None:  # the path hash decides the rest; every split still holds a file
        assert set(s["splits"]) == {"train", "val", "test"} and sum(s["splits"].values()) == n
    else:
        assert s["splits"] == expected
    direct = {split: len(VideoFolderClipDataset(d, split, clip_len=2, resolution=32).files) for split in s["splits"]}
    assert direct == s["splits"]  # reading the folder directly gives the same split sizes


def test_a_file_that_decodes_too_long_is_skipped_and_named(tmp_path, monkeypatch, capsys):
    """A per-file decode timeout: a decoder that hangs on one file costs that file, not the import."""
    import time as _time

    import data_pipelines.importing as imp
    from tests.conftest import smooth_frames, write_video

    videos = tmp_path / "v"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4", "slow.mp4"):
        write_video(videos / name, smooth_frames(6, 32, 32))
    real = imp.read_video_fitted

    def hanging(path, *args, **kwargs):
        if path.name == "slow.mp4":
            _time.sleep(30)  # interrupted by the 0.5 s limit
        return real(path, *args, **kwargs)

    monkeypatch.setattr(imp, "read_video_fitted", hanging)
    t = _time.perf_counter()
    s = imp.import_videos(videos, tmp_path / "out", resolution=32, decode_timeout=0.5, progress=False,
                          val_fraction=0, test_fraction=0)
    assert _time.perf_counter() - t < 20
    assert s["imported"] == 2 and [r for r, _ in s["skipped"]] == ["slow.mp4"]
    assert "longer than 0.5 s" in s["skipped"][0][1] and "slow.mp4" in capsys.readouterr().err
