"""`genie quickstart --tiny`: the whole pipeline end to end (record, train ×3, tokenize, evaluate, probe, sample)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.conftest import run_genie


@pytest.mark.skipif(importlib.util.find_spec("procgen") is None, reason="procgen (the [coinrun] extra) not installed")
def test_quickstart_tiny_end_to_end(tmp_path):
    out = tmp_path / "qs"
    p = run_genie("quickstart", "--tiny", "--out", out, "--episodes", "4", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "quickstart finished in" in p.stdout and "genie generate --model" in p.stdout
    # stdout is a pipe: each stage's training says where it ended (4 episodes leave no val split, so no
    # validation lines), and Lightning no longer warns about how the CLI was invoked
    for stage in ("tokenizer", "lam", "dynamics"):
        assert f"{stage} step 30/30  train/loss " in p.stdout, p.stdout[-3000:]
    assert "args parameter" not in p.stderr, p.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert {"tokenizer", "lam", "world_model"} <= set(report)
    assert (out / "probe" / "index.html").is_file() and (out / "model" / "dynamics" / "model.safetensors").is_file()
    assert len(list((out / "samples").glob("action_*.gif"))) == 4
    p = run_genie("quickstart", "--tiny", "--out", out)
    assert p.returncode == 2 and "--overwrite" in p.stderr


def test_pretrained_without_committed_models_is_a_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    import genie.quickstart as qs
    from genie.core.errors import GenieInputError

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


def test_quickstart_tiny_on_a_folder_of_non_square_videos(tmp_path):
    """Three 80×60 (width×height) mp4 files and a corrupt one: imported at 64×48 with --fit pad, three stages
    trained at 48×64 (H×W), evaluated on a held-out file without action metrics, probed and sampled."""
    from tests.conftest import smooth_frames, write_video

    videos = tmp_path / "my videos"
    videos.mkdir()
    for i in range(3):
        write_video(videos / f"game{i}.mp4", smooth_frames(12, 60, 80, seed=i))
    (videos / "broken.mp4").write_bytes(b"\x00" * 500)
    out = tmp_path / "qs"
    p = run_genie("quickstart", "--tiny", "--videos", videos, "--out", out, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "importing" in p.stdout and "at 64×48 (width×height" in p.stdout
    assert "no action metrics" in p.stdout and "skipping" in p.stderr and "broken.mp4" in p.stderr
    for stage in ("tokenizer", "lam"):
        cfg = json.loads((out / "model" / stage / "config.json").read_text())["genie_config"]
        assert cfg["image_size"] == [48, 64]
    assert json.loads((out / "model" / "dynamics" / "config.json").read_text())["genie_config"]["grid"] == [6, 8]
    report = json.loads((out / "report.json").read_text())
    assert report["split"] in ("test", "val") and {"tokenizer", "lam", "world_model"} <= set(report)
    assert "not computed" in report["lam"]["action_metrics"]
    assert "No action metrics" in (out / "report.md").read_text()
    from PIL import Image

    gif = Image.open(out / "samples" / "action_0.gif")
    assert gif.size == (2 * 64, 2 * 48)  # written at ×2
    assert (out / "probe" / "index.html").is_file()
    card = json.loads((out / "data" / "videos" / "genie_dataset.json").read_text())
    assert card["fit"]["mode"] == "pad" and card["fit"]["sources"][0]["source"] == [60, 80]


def test_quickstart_videos_bad_input_exit_2(tmp_path):
    p = run_genie("quickstart", "--tiny", "--videos", tmp_path / "nope", "--out", tmp_path / "qs")
    assert p.returncode == 2 and "no such folder" in p.stderr and not (tmp_path / "qs").exists()
    (tmp_path / "v").mkdir()
    from tests.conftest import smooth_frames, write_video

    write_video(tmp_path / "v" / "a.mp4", smooth_frames(6, 48, 64))
    p = run_genie("quickstart", "--tiny", "--videos", tmp_path / "v", "--resolution", "60x40", "--out", tmp_path / "qs")
    assert p.returncode == 2 and "multiples of 16" in p.stderr and not (tmp_path / "qs").exists()


def test_validation_interval_follows_the_budget(tmp_path):
    """A short budget validates often enough for a curve; a long one keeps the preset's interval; the
    step time it divides by is measured on the stage's model at the corpus's frame size."""
    from genie.quickstart import REPO, step_seconds, val_interval, video_resolution
    from tests.conftest import smooth_frames, write_video

    assert val_interval(2.4, 2.7, 200) == 6  # 53 tokenizer steps of 2.7 s in 2.4 min → ~8 validations
    assert val_interval(600, 2.7, 200) == 200 and val_interval(0.1, 60, 200) == 5
    for stage, d in (("tokenizer", "tokenizer"), ("lam", "latent_actions"), ("dynamics", "dynamics")):
        s = step_seconds(stage, REPO / "configs" / d / "debug.yaml", (48, 64), torch.device("cpu"), grid=(6, 8))
        assert 0 < s < 30
    write_video(tmp_path / "atari.mp4", smooth_frames(2, 210, 160))
    assert video_resolution(tmp_path) == (64, 48)  # H×W: 64 high, 48 wide, like the 210×160 source
