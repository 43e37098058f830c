"""Dynamics stage training on token shards, and `genie tokenize --lam` storing the LAM's actions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import DatasetWriter, Episode
from dynamics.config import DynamicsConfig
from genie.core.frames import frames_to_video
from genie.export import load_export, save_export
from tests.conftest import ROOT, coded_episode, run_genie, stderr_line

CONFIGS = sorted((ROOT / "configs" / "dynamics").glob("*.yaml"))


def token_dataset(path, cfg: DynamicsConfig, episodes: int = 3, n: int = 12):
    rng = np.random.default_rng(0)
    with DatasetWriter(path, chunk_len=8, card={"vocab_size": cfg.vocab_size, "num_actions": cfg.num_actions}) as w:
        for e in range(episodes + 1):
            ids = rng.integers(0, cfg.vocab_size, (n, *cfg.grid, 1)).astype(np.uint16)
            acts = rng.integers(0, cfg.num_actions, n).astype(np.int16)
            w.add_episode(Episode(frames=ids, actions=acts, level_seed=e), "train" if e < episodes else "val")
        w.close()
    return path


def test_yaml_presets_match_the_python_presets():
    assert {p.stem for p in CONFIGS} == {"debug", "cpu", "coinrun-paper"}
    for p in CONFIGS:
        assert DynamicsConfig.from_dict(yaml.safe_load(p.read_text())["model"]["config"]) == DynamicsConfig.preset(p.stem)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_fast_dev_run_every_yaml(tmp_path, config):
    cfg = DynamicsConfig.preset(config.stem)
    data = token_dataset(tmp_path / "tokens", cfg)
    p = run_genie("train", "dynamics", "--config", config, "--data.data", data, "--trainer.default_root_dir", tmp_path / "run",
                  "--trainer.enable_progress_bar", "false", "--trainer.fast_dev_run", "1", "--data.batch_size", "1",
                  "--data.clip_len", "2", "--trainer.precision", "32-true", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def test_train_export_and_wrong_data(tmp_path, coded_dataset):
    cfg = DynamicsConfig.preset("debug")
    data = token_dataset(tmp_path / "tokens", cfg)
    p = run_genie("train", "dynamics", "--config", "configs/dynamics/debug.yaml", "--data.data", data,
                  "--trainer.default_root_dir", tmp_path / "run", "--trainer.enable_progress_bar", "false",
                  "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--model.clean_context_prob", "0.5")
    assert p.returncode == 0, p.stderr[-3000:]
    model = load_export(tmp_path / "run" / "export", "dynamics")
    assert model.config == cfg
    import csv

    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "version_0" / "metrics.csv").open()))
    val = [r for r in rows if r.get("val/next_frame_accuracy")]
    assert len(val) == 2  # steps 2 and 4
    for r in val:  # random tokens: copying the previous frame hits about 1 / vocab
        assert 0.0 <= float(r["val/next_frame_accuracy"]) <= 1.0 and float(r["val/copy_last_accuracy"]) < 0.2
    # video instead of tokens, and a grid that does not match: one clear line, exit 2
    video, _ = coded_dataset
    p = run_genie("train", "dynamics", "--config", "configs/dynamics/debug.yaml", "--data.data", video,
                  "--trainer.default_root_dir", tmp_path / "run2", "--data.clip_len", "2")
    assert p.returncode == 2 and "token dataset" in stderr_line(p)
    other = token_dataset(tmp_path / "tokens4", DynamicsConfig.preset("debug", grid=(4, 4)))
    p = run_genie("train", "dynamics", "--config", "configs/dynamics/debug.yaml", "--data.data", other,
                  "--trainer.default_root_dir", tmp_path / "run3")
    assert p.returncode == 2 and "4×4" in stderr_line(p) and "8×8" in stderr_line(p)


def test_tokenize_with_lam_stores_latent_actions(tmp_path):
    from genie.tokenize import tokenize_dataset
    from latent_actions.config import LatentActionConfig
    from latent_actions.model import LatentActionModel
    from tokenizer.config import TokenizerConfig
    from tokenizer.model import VideoTokenizer

    torch.manual_seed(0)
    x = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    tok, lam = VideoTokenizer(TokenizerConfig.preset("debug")), LatentActionModel(LatentActionConfig.preset("debug"))
    tok(x), lam(x)  # k-means init of both codebooks
    save_export(tok.eval(), tmp_path / "tok", "tokenizer")
    save_export(lam.eval(), tmp_path / "lam", "lam")
    data = tmp_path / "video"
    with DatasetWriter(data, chunk_len=8) as w:
        w.add_episode(coded_episode(0, 11, h=64, w=64), "train")
        w.close()
    tokenize_dataset(tmp_path / "tok", data, tmp_path / "tokens", lam_dir=tmp_path / "lam", progress=False)
    card = json.loads((tmp_path / "tokens" / "genie_dataset.json").read_text())
    assert card["actions"] == "latent" and card["num_actions"] == 8 and card["vocab_size"] == 32
    stored = ClipDataset(tmp_path / "tokens", "train", clip_len=2).episode_actions(0)
    frames = ClipDataset(data, "train", clip_len=2).episode_frames(0)
    lam = load_export(tmp_path / "lam", "lam")
    with torch.no_grad():  # windows of 4 frames overlapping by one: transitions 0-2, 3-5, 6-8, 9
        expect = np.concatenate([lam.infer_actions(frames_to_video(frames[s:s + 4])[None])[0].numpy() for s in (0, 3, 6)]
                                + [lam.infer_actions(frames_to_video(frames[9:11])[None])[0].numpy()])
    assert np.array_equal(stored[:10], expect) and stored[10] == -1


def test_tokenize_max_episodes_keeps_the_first_episodes_of_each_split(tmp_path):
    from genie.tokenize import tokenize_dataset
    from tokenizer.config import TokenizerConfig
    from tokenizer.model import VideoTokenizer

    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig.preset("debug"))
    tok(torch.rand(1, 4, 3, 64, 64) * 2 - 1)
    save_export(tok.eval(), tmp_path / "tok", "tokenizer")
    data = tmp_path / "video"
    with DatasetWriter(data, chunk_len=8) as w:
        for e, n in enumerate((5, 7, 6)):
            w.add_episode(coded_episode(e, n, h=64, w=64), "train")
        w.add_episode(coded_episode(3, 4, h=64, w=64), "val")
        w.close()
    s = tokenize_dataset(tmp_path / "tok", data, tmp_path / "tokens", max_episodes=2, progress=False)
    assert s["frames"] == 5 + 7 + 4
    tokens, video = ClipDataset(tmp_path / "tokens", "train", clip_len=2), ClipDataset(data, "train", clip_len=2)
    assert tokens.num_episodes == 2 and [len(tokens.episode_frames(e)) for e in range(2)] == [5, 7]
    assert np.array_equal(tokens.episode_actions(1), video.episode_actions(1))
    assert ClipDataset(tmp_path / "tokens", "val", clip_len=2).num_episodes == 1
    card = json.loads((tmp_path / "tokens" / "genie_dataset.json").read_text())
    assert card["max_episodes_per_split"] == 2
    s = tokenize_dataset(tmp_path / "tok", data, tmp_path / "tokens1", max_episodes={"train": 1}, progress=False)
    assert s["frames"] == 5 + 4  # a dict limits only the splits it names


def test_init_from_adds_the_copy_gate_to_a_plain_export(tmp_path):
    """`--init_from` a plain export into a model with prev_token_input + copy_gate (how the committed dynamics model
    moves onto the `cpu` recipe): the new model's logits are the export's plus log(v - 1) on each position's
    previous token, nothing else; dropping an option the export has is still refused."""
    import math

    from dynamics.model import DynamicsModel
    from dynamics.module import DynamicsModule
    from genie.core.errors import GenieInputError
    from genie.train import InitFromExportCallback

    torch.manual_seed(0)
    src = DynamicsModel(DynamicsConfig.preset("debug")).eval()
    save_export(src, tmp_path / "plain", "dynamics")
    module = DynamicsModule(DynamicsConfig.preset("debug", prev_token_input=True, copy_gate=True))
    InitFromExportCallback(str(tmp_path / "plain")).setup(None, module, "fit")
    grown = module.model.eval()
    tokens = torch.randint(0, 32, (2, 4, 8, 8))
    actions = torch.randint(0, 8, (2, 3))
    last = torch.zeros_like(tokens, dtype=torch.bool)
    last[:, -1] = True
    inp = tokens.masked_fill(last, src.mask_id)
    with torch.no_grad():
        expected = src(inp, actions, where=last)
        expected[torch.arange(expected.shape[0]), tokens[:, -2].flatten()] += math.log(31)
        torch.testing.assert_close(grown(inp, actions, where=last), expected)
    save_export(grown, tmp_path / "gated", "dynamics")
    with pytest.raises(GenieInputError, match="config differs: copy_gate True"):
        InitFromExportCallback(str(tmp_path / "gated")).setup(None, DynamicsModule(DynamicsConfig.preset("debug")), "fit")
