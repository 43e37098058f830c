"""Training machinery (shared by every stage), exercised on the tokenizer: CLI, YAMLs, resume, DDP, export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from data_pipelines.storage import DatasetWriter
from genie.core.errors import GenieInputError
from genie.export import load_export, save_export
from tests.conftest import ROOT, coded_episode, run_genie, stderr_line
from tokenizer.config import PRESETS, TokenizerConfig
from tokenizer.model import VideoTokenizer

CONFIGS = sorted((ROOT / "configs" / "tokenizer").glob("*.yaml"))
STAGE_DIRS = {"tokenizer": "tokenizer", "lam": "latent_actions"}
ALL_CONFIGS = [(stage, p) for stage, d in STAGE_DIRS.items() for p in sorted((ROOT / "configs" / d).glob("*.yaml"))]


def is_overlay(path) -> bool:
    """A YAML that changes training options of the `cpu` preset (e.g. cpu-labels.yaml) rather than naming a model."""
    return "config" not in (yaml.safe_load(path.read_text()).get("model") or {})


def config_args(path) -> list:
    """--config arguments that train with `path`: an overlay goes on top of its stage's cpu.yaml."""
    return ["--config", path.parent / "cpu.yaml", "--config", path] if is_overlay(path) else ["--config", path]


@pytest.fixture(scope="module")
def video64(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "d64"
    with DatasetWriter(out, chunk_len=16, card={"num_actions": 15}) as w:
        for e in range(4):
            w.add_episode(coded_episode(e, 24, h=64, w=64), "train")
        w.add_episode(coded_episode(9, 24, h=64, w=64), "val")
        w.close()
    return out


def _train(tmp_path, data, *extra, config="configs/tokenizer/debug.yaml"):
    return run_genie("train", "tokenizer", "--config", config, "--data.data", data,
                     "--trainer.default_root_dir", tmp_path / "run", "--trainer.enable_progress_bar", "false",
                     *extra, timeout=300)


def test_yaml_presets_match_the_python_presets():
    from latent_actions.config import PRESETS as LAM_PRESETS
    from latent_actions.config import LatentActionConfig

    for d, presets, cls in (("tokenizer", PRESETS, TokenizerConfig), ("latent_actions", LAM_PRESETS, LatentActionConfig)):
        files = [p for p in sorted((ROOT / "configs" / d).glob("*.yaml")) if not is_overlay(p)]
        assert {p.stem for p in files} == set(presets)
        for p in files:
            cfg = yaml.safe_load(p.read_text())["model"]["config"]
            assert cls.from_dict(cfg) == cls.preset(p.stem), p


@pytest.mark.parametrize("stage,config", ALL_CONFIGS, ids=lambda x: x if isinstance(x, str) else x.stem)
def test_fast_dev_run_every_yaml(tmp_path, video64, stage, config):
    p = run_genie("train", stage, *config_args(config), "--data.data", video64, "--trainer.default_root_dir", tmp_path / "run",
                  "--trainer.enable_progress_bar", "false", "--trainer.fast_dev_run", "1", "--data.batch_size", "1",
                  "--data.clip_len", "2", "--data.num_workers", "0", "--trainer.precision", "32-true", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.parametrize("box", [True, False], ids=["agent_box", "no_box"])
def test_lam_cpu_preset_takes_its_crop_from_the_card(tmp_path, box):
    """`genie train lam` with the `cpu` preset (crop_box "card"): CoinRun's card gives the measured [26, 26, 38, 38]
    window, an imported video's card (no agent_box) trains without a crop; the export holds the settled box."""
    from data_pipelines.coinrun import AGENT_BOX

    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=16, card={"num_actions": 15, **({"agent_box": AGENT_BOX} if box else {})}) as w:
        w.add_episode(coded_episode(0, 8, h=64, w=64), "train")
        w.add_episode(coded_episode(1, 8, h=64, w=64), "val")
        w.close()
    p = run_genie("train", "lam", "--config", ROOT / "configs" / "latent_actions" / "cpu.yaml", "--data.data", data,
                  "--trainer.default_root_dir", tmp_path / "run", "--trainer.enable_progress_bar", "false",
                  "--trainer.fast_dev_run", "1", "--data.batch_size", "1", "--data.clip_len", "2", timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    expected = [26, 26, 38, 38] if box else None
    assert load_export(tmp_path / "run" / "export", "lam").config.crop_box == expected
    assert ("crop_box card: [26, 26, 38, 38]" if box else "crop_box card: off") in p.stdout


def test_train_resume_and_export(tmp_path, video64):
    p = _train(tmp_path, video64, "--trainer.max_steps", "6", "--trainer.val_check_interval", "3")
    assert p.returncode == 0, p.stderr[-3000:]
    # stdout is a pipe here: one line per validation, and no warning about how the CLI was invoked
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("tokenizer step ")]
    assert [ln.split()[2] for ln in lines] == ["3/6", "6/6"], p.stdout[-3000:]
    assert all("train/loss" in ln and "val/psnr" in ln and ln.endswith("steps/s") for ln in lines), lines
    assert "args parameter" not in p.stderr, p.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "export" / "genie_export.json").read_text())["global_step"] == 6
    first = load_export(run / "export", "tokenizer")
    # `genie export` of last.ckpt: the same weights, and the checkpoint's step (not 0)
    p = run_genie("export", "tokenizer", "--ckpt", run / "checkpoints" / "last.ckpt", "--out", tmp_path / "from-ckpt")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "from-ckpt" / "genie_export.json").read_text())["global_step"] == 6
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(),
                                                  load_export(tmp_path / "from-ckpt", "tokenizer").state_dict().values()))
    # resume from last.ckpt: the step count continues from 6, it does not restart; --init_from (here a fresh
    # export) is applied first and then overridden by the checkpoint's weights
    fresh = tmp_path / "fresh"
    save_export(VideoTokenizer(TokenizerConfig.preset("debug")), fresh, "tokenizer")
    p = _train(tmp_path, video64, "--trainer.max_steps", "10", "--trainer.val_check_interval", "3", "--ckpt_path", "last",
               "--init_from", fresh)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"initialised the tokenizer weights from {fresh}" in p.stdout, p.stdout[-3000:]
    assert "tokenizer step 9/10" in p.stdout or "tokenizer step 10/10" in p.stdout, p.stdout[-3000:]
    assert json.loads((run / "export" / "genie_export.json").read_text())["global_step"] == 10
    logs = sorted((run / "csv").glob("version_*/metrics.csv"))
    assert len(logs) == 2
    steps = {int(r["step"]) for r in csv.DictReader(open(logs[1])) if r.get("train/loss")}
    assert steps and min(steps) >= 6
    second = load_export(run / "export", "tokenizer")
    x = torch.rand(1, 4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert not torch.equal(first(x).recon, second(x).recon)
    # validation wrote PSNR/SSIM, codebook usage and a reconstruction image
    keys = set(next(csv.DictReader(open(logs[0]))).keys())
    assert {"val/psnr", "val/ssim", "val/codebook_usage", "val/perplexity"} <= keys
    assert list(run.glob("tensorboard/version_*/images/recon_step*.png"))


def test_init_from_copies_an_exports_weights_and_rejects_another_config(tmp_path):
    from genie.train import InitFromExportCallback
    from tokenizer.module import TokenizerModule

    torch.manual_seed(1)
    src = VideoTokenizer(TokenizerConfig.preset("debug"))
    save_export(src, tmp_path / "src", "tokenizer")
    torch.manual_seed(2)
    module = TokenizerModule(TokenizerConfig.preset("debug"))
    assert not all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), module.model.state_dict().values()))
    InitFromExportCallback(str(tmp_path / "src")).setup(None, module, "fit")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), module.model.state_dict().values()))
    other = TokenizerModule(TokenizerConfig.preset("debug", codebook_size=64))
    with pytest.raises(GenieInputError, match=r"--init_from .*src: its tokenizer config differs: codebook_size 32 \(training: 64\)"):
        InitFromExportCallback(str(tmp_path / "src")).setup(None, other, "fit")


def _fit_reconstruction(module, video, steps: int = 3) -> None:
    """A few AdamW steps of the reconstruction loss on what the module leaves trainable, in train mode."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    module.train()
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(module.model(video).recon, video)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_decoder_only_training_grows_the_decoder_and_keeps_the_tokens(tmp_path):
    """`--init_from` an export into a deeper decoder with train_decoder_only: the grown model decodes exactly as the
    export; training moves the decoder and pixel head only, the codebook stays put (eval mode: no EMA), so the
    token ids of any clip stay bit-identical (a dynamics model trained on them stays valid)."""
    from genie.train import InitFromExportCallback
    from tokenizer.module import TokenizerModule

    torch.manual_seed(1)
    cfg = TokenizerConfig.preset("debug", depth_decoder=2)
    src = VideoTokenizer(cfg)
    video = torch.rand(2, 4, 3, *cfg.frame_size) * 2 - 1
    src(video)  # a trained export's codebook is initialised (k-means on its first batch)
    save_export(src.eval(), tmp_path / "src", "tokenizer")
    module = TokenizerModule(TokenizerConfig.preset("debug", depth_decoder=cfg.depth_decoder + 2), lr=1e-2,
                             train_decoder_only=True)
    InitFromExportCallback(str(tmp_path / "src")).setup(None, module, "fit")
    ids = src.encode(video)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module.model.encode(video), ids)
        assert torch.allclose(module.model.decode(ids), src.decode(ids), atol=1e-5)  # the new blocks are the identity
    frozen = {k: v.clone() for k, v in module.model.state_dict().items() if k.split(".")[0] in VideoTokenizer.ENCODER_SIDE}
    decoder = {k: v.clone() for k, v in module.model.state_dict().items() if k.startswith(("decoder.", "to_pixels."))}
    module.train()
    assert not module.model.quantizer.training and module.model.decoder.training
    _fit_reconstruction(module, video)
    state = module.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())  # codebook, encoder, patch embedding
    assert not all(torch.equal(state[k], v) for k, v in decoder.items())
    module.eval()
    with torch.no_grad():
        assert torch.equal(module.model.encode(video), ids)
    shallower = TokenizerModule(TokenizerConfig.preset("debug", depth_decoder=1))
    with pytest.raises(GenieInputError, match="depth_decoder 2 \\(training: 1\\)"):  # shrinking is not growing
        InitFromExportCallback(str(tmp_path / "src")).setup(None, shallower, "fit")


def test_a_refinement_head_grows_onto_an_export_without_one(tmp_path):
    """`--init_from` an export with no conv head (refine_channels 0) into one with refine_channels 8 and no stem: the
    grown model encodes and decodes exactly as the export (the pixel head keeps its rows, the refinement's last conv is
    zero); decoder-only training then moves the refinement and keeps the tokens; growing a head onto one fails."""
    from genie.train import InitFromExportCallback
    from tokenizer.module import TokenizerModule

    torch.manual_seed(3)
    cfg = TokenizerConfig.preset("debug")
    src = VideoTokenizer(cfg)
    video = torch.rand(2, 4, 3, *cfg.frame_size) * 2 - 1
    src(video)
    save_export(src.eval(), tmp_path / "src", "tokenizer")
    module = TokenizerModule(TokenizerConfig.preset("debug", refine_channels=8), lr=1e-2, train_decoder_only=True)
    assert module.model.stem is None and module.model.refine is not None
    InitFromExportCallback(str(tmp_path / "src")).setup(None, module, "fit")
    ids = src.encode(video)
    module.eval()
    with torch.no_grad():
        assert torch.equal(module.model.encode(video), ids)
        torch.testing.assert_close(module.model.decode(ids), src.decode(ids))
    refine = {k: v.clone() for k, v in module.model.refine.state_dict().items()}
    _fit_reconstruction(module, video)
    assert not all(torch.equal(module.model.refine.state_dict()[k], v) for k, v in refine.items())
    module.eval()
    with torch.no_grad():
        assert torch.equal(module.model.encode(video), ids)
    save_export(module.model, tmp_path / "headed", "tokenizer")
    wider = TokenizerModule(TokenizerConfig.preset("debug", refine_channels=16))
    with pytest.raises(GenieInputError, match="only onto a tokenizer without one"):
        InitFromExportCallback(str(tmp_path / "headed")).setup(None, wider, "fit")
    # refinement blocks grow onto the headed export: each new block starts as the identity, then trains
    deeper = TokenizerModule(TokenizerConfig.preset("debug", refine_channels=8, refine_depth=2), lr=1e-2,
                             train_decoder_only=True)
    InitFromExportCallback(str(tmp_path / "headed")).setup(None, deeper, "fit")
    deeper.eval()
    with torch.no_grad():
        assert torch.equal(deeper.model.encode(video), ids)
        torch.testing.assert_close(deeper.model.decode(ids), module.model.decode(ids))
    _fit_reconstruction(deeper, video)
    assert all(torch.count_nonzero(block[-1].weight) > 0 for block in deeper.model.refine_blocks)
    with pytest.raises(ValueError, match="refine_depth 1 needs a refinement head"):
        TokenizerConfig.preset("debug", refine_depth=1)


def test_decoder_only_training_through_genie_train_keeps_the_codebook(tmp_path, video64):
    """The real path (Lightning never calls .train() at fit start and restores each module's mode after validation):
    `genie train --model.train_decoder_only true` leaves every encoder-side tensor of the export it starts from equal,
    the codebook's EMA statistics included, and moves the (grown) decoder."""
    torch.manual_seed(1)
    src = VideoTokenizer(TokenizerConfig.preset("debug"))
    src(torch.rand(2, 4, 3, 64, 64) * 2 - 1)  # an initialised codebook, as a trained export has
    save_export(src.eval(), tmp_path / "src", "tokenizer")
    p = _train(tmp_path, video64, "--init_from", tmp_path / "src", "--model.train_decoder_only", "true",
               "--model.config.depth_decoder", "2", "--trainer.max_steps", "4", "--trainer.val_check_interval", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    out = load_export(tmp_path / "run" / "export", "tokenizer").state_dict()
    theirs = src.state_dict()
    side = [k for k in theirs if k.split(".")[0] in VideoTokenizer.ENCODER_SIDE]
    assert any("_codebook.embed_avg" in k for k in side)
    assert [k for k in side if not torch.equal(out[k], theirs[k])] == []
    assert not torch.equal(out["to_pixels.weight"], theirs["to_pixels.weight"])


def test_freeze_codebook_trains_the_encoder_around_a_fixed_codebook(tmp_path, video64):
    """`genie train --model.freeze_codebook true` from an export: the encoder and decoder move, the codebook (its
    vectors and EMA statistics: no EMA step, no dead-code restart) stays the export's, so a code id keeps its vector;
    the commitment loss still reaches the encoder. FSQ, which has no learned codebook, is refused."""
    from tokenizer.module import TokenizerModule

    torch.manual_seed(1)
    src = VideoTokenizer(TokenizerConfig.preset("debug"))
    src(torch.rand(2, 4, 3, 64, 64) * 2 - 1)
    save_export(src.eval(), tmp_path / "src", "tokenizer")
    p = _train(tmp_path, video64, "--init_from", tmp_path / "src", "--model.freeze_codebook", "true",
               "--trainer.max_steps", "4", "--trainer.val_check_interval", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    out, theirs = load_export(tmp_path / "run" / "export", "tokenizer").state_dict(), src.state_dict()
    book = [k for k in theirs if "._codebook." in k]
    assert any(k.endswith("embed_avg") for k in book) and any(k.endswith("cluster_size") for k in book)
    assert [k for k in book if not torch.equal(out[k], theirs[k])] == []
    for moved in ("patch_embed.weight", "quantizer.project_in.weight", "to_pixels.weight"):
        assert not torch.equal(out[moved], theirs[moved]), moved
    module = TokenizerModule(TokenizerConfig.preset("debug"), freeze_codebook=True).train()
    video = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    module.model(video)  # the k-means init
    assert module.model(video).quant_loss > 0  # the commitment loss, though the codebook stays put
    bad = _train(tmp_path / "fsq", video64, "--model.config.quantizer", "fsq", "--model.config.codebook_size", "32",
                 "--model.freeze_codebook", "true", "--trainer.max_steps", "1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert "model.freeze_codebook needs quantizer 'vq'" in bad.stderr


def test_two_process_ddp(tmp_path, video64):
    p = _train(tmp_path, video64, "--trainer.max_steps", "3", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.accelerator", "cpu", "--trainer.val_check_interval", "3")
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "export" / "genie_export.json").read_text())["global_step"] == 3
    assert "distributed_backend=gloo" in p.stderr + p.stdout or "world_size=2" in p.stderr + p.stdout or \
        "GLOBAL_RANK: 1" in p.stderr + p.stdout


@pytest.mark.parametrize("overrides", [{}, dict(quantizer="fsq", codebook_size=32), dict(conv_channels=4)],
                         ids=["vq", "fsq", "conv"])
def test_export_round_trip_is_exact(tmp_path, overrides):
    # fsq: its level grid is a buffer outside the state dict, which transformers' loading leaves uninitialised
    torch.manual_seed(0)
    model = VideoTokenizer(TokenizerConfig.preset("debug", **overrides))
    x = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    model.train()
    model(x)  # k-means init and one EMA update, so buffers differ from a fresh model
    model.eval()
    save_export(model, tmp_path / "exp", "tokenizer")
    loaded = load_export(tmp_path / "exp", "tokenizer")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "model.safetensors"]
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.indices, b.indices)
    assert torch.equal(model.encode(x), loaded.encode(x))


def test_corrupt_export_folder_is_a_clear_error(tmp_path):
    model = VideoTokenizer(TokenizerConfig.preset("debug"))
    save_export(model, tmp_path / "exp", "tokenizer")
    st = tmp_path / "exp" / "model.safetensors"
    st.write_bytes(st.read_bytes()[:200])
    with pytest.raises(GenieInputError, match="corrupt export"):
        load_export(tmp_path / "exp", "tokenizer")
    (tmp_path / "exp" / "model.safetensors").unlink()
    with pytest.raises(GenieInputError, match="missing model.safetensors"):
        load_export(tmp_path / "exp", "tokenizer")
    with pytest.raises(GenieInputError, match="no such export folder"):
        load_export(tmp_path / "nowhere", "tokenizer")
    save_export(model, tmp_path / "exp2", "tokenizer")
    cfg = json.loads((tmp_path / "exp2" / "config.json").read_text())
    cfg["genie_config"]["width"] = 33
    (tmp_path / "exp2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(GenieInputError, match="invalid tokenizer config.*width"):
        load_export(tmp_path / "exp2", "tokenizer")


def test_wrong_resolution_for_preset_exit_2(tmp_path, coded_dataset):
    path, _ = coded_dataset  # 16×16 frames against a 64×64 preset
    p = _train(tmp_path, path, "--trainer.max_steps", "1", "--data.clip_len", "2")
    assert p.returncode == 2
    assert "16×16×3" in stderr_line(p) and "64×64×3" in stderr_line(p)


def test_bad_config_exit_2(tmp_path, video64):
    bad = yaml.safe_load((ROOT / "configs/tokenizer/debug.yaml").read_text())
    del bad["data"]["data"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    p = run_genie("train", "tokenizer", "--config", tmp_path / "bad.yaml", timeout=120)
    assert p.returncode == 2 and "data.data" in p.stderr and "Traceback" not in p.stderr
    bad = yaml.safe_load((ROOT / "configs/tokenizer/debug.yaml").read_text())
    bad["model"]["config"]["width"] = 33  # not divisible by its 2 heads
    (tmp_path / "bad2.yaml").write_text(yaml.safe_dump(bad))
    p = run_genie("train", "tokenizer", "--config", tmp_path / "bad2.yaml", "--data.data", video64, timeout=120)
    assert p.returncode == 2 and "width" in p.stderr and "Traceback" not in p.stderr
    p = run_genie("train", "tokenizer", "--config", tmp_path / "missing.yaml")
    assert p.returncode == 2 and "no such config file" in stderr_line(p)
    # a trainer setting Lightning rejects (the time limit needs DD:HH:MM:SS), before anything is written
    p = run_genie("train", "tokenizer", "--config", ROOT / "configs/tokenizer/debug.yaml", "--data.data", video64,
                  "--trainer.max_time", "00:00:3:5", "--trainer.default_root_dir", tmp_path / "r", timeout=120)
    assert p.returncode == 2 and "trainer:" in stderr_line(p) and "DD:HH:MM:SS" in stderr_line(p)
    assert not (tmp_path / "r" / "export").exists()


def test_lam_export_round_trip(tmp_path):
    from latent_actions.config import LatentActionConfig
    from latent_actions.model import LatentActionModel

    torch.manual_seed(0)
    model = LatentActionModel(LatentActionConfig.preset("debug"))
    x = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    model.train()
    model(x)
    model.eval()
    save_export(model, tmp_path / "lam", "lam")
    loaded = load_export(tmp_path / "lam", "lam")
    with torch.no_grad():
        assert torch.equal(model.infer_actions(x), loaded.infer_actions(x))
        assert torch.equal(model(x).pred, loaded(x).pred)
    with pytest.raises(GenieInputError, match="holds a lam export, expected tokenizer"):
        load_export(tmp_path / "lam", "tokenizer")


def test_tokenize_matches_encode_and_carries_actions(tmp_path, video64):
    from data_pipelines.clips import ClipDataset
    from genie.core.frames import frames_to_video
    from genie.tokenize import tokenize_dataset

    torch.manual_seed(0)
    model = VideoTokenizer(TokenizerConfig.preset("debug"))  # 4-frame windows, 8×8 tokens
    model.train()
    model(torch.rand(2, 4, 3, 64, 64) * 2 - 1)
    model.eval()
    save_export(model, tmp_path / "tok", "tokenizer")
    tokenize_dataset(tmp_path / "tok", video64, tmp_path / "tokens", progress=False)
    src = ClipDataset(video64, "train", clip_len=1)
    toks = ClipDataset(tmp_path / "tokens", "train", clip_len=4)
    assert toks.is_tokens and toks.frame_shape == (8, 8, 1) and toks.num_episodes == src.num_episodes
    for e in range(src.num_episodes):
        frames = src.episode_frames(e)  # 24 frames → six 4-frame windows
        ids = toks.episode_frames(e)[..., 0].astype(np.int64)
        with torch.no_grad():
            ref = model.encode(frames_to_video(frames).view(6, 4, 3, 64, 64)).reshape(24, 8, 8)
        assert np.array_equal(ids, ref.numpy())
        assert np.array_equal(toks.episode_actions(e), src.episode_actions(e))
    item = toks[0]
    assert item["tokens"].shape == (4, 8, 8) and item["tokens"].dtype == torch.int64 and item["actions"].shape == (3,)
    p = run_genie("tokenize", "--tokenizer", tmp_path / "nowhere", "--data", video64, "--out", tmp_path / "t2")
    assert p.returncode == 2 and "no such export folder" in stderr_line(p)


@pytest.mark.parametrize("key, shape", [("video", (2, 5, 3, 8, 8)), ("tokens", (2, 5, 4, 4))])
def test_throughput_counts_video_and_token_clips(key, shape):
    """train/frames_per_s is logged for every stage: video clips (tokenizer, LAM) and token clips (dynamics)."""
    from types import SimpleNamespace

    from genie.core.training import ThroughputCallback

    logged = {}
    module = SimpleNamespace(log=lambda name, value, **kw: logged.__setitem__(name, value))
    cb = ThroughputCallback(every_n_steps=1)
    trainer = SimpleNamespace(global_step=1, world_size=1)
    cb.on_train_start(trainer, module)
    cb.on_train_batch_end(trainer, module, None, {key: torch.zeros(shape)}, 0)
    assert logged["train/frames_per_s"] > 0 and "train/minutes" in logged
    assert cb._frames == 0  # reset after logging the 10 frames
