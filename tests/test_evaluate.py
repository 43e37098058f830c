"""Metrics on toy inputs with known answers, and `genie evaluate` on a debug world model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import DatasetWriter
from dynamics.config import DynamicsConfig
from dynamics.model import DynamicsModel
from genie.core.errors import GenieInputError
from genie.core.metrics import MAX_PSNR_DB, action_components, normalized_mutual_info, psnr
from genie.eval_results import markdown_table
from genie.evaluate import evaluate, evaluate_tokenizer, linear_probe_accuracy, mean_ci95
from genie.export import save_export
from genie.sampling import SamplingSettings
from genie.world_model import WorldModel
from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionModel
from tests.conftest import coded_episode, run_genie
from tests.test_world_model import world  # noqa: F401  (fixture)
from tokenizer.config import TokenizerConfig
from tokenizer.model import VideoTokenizer
from tokenizer.module import TokenizerModule


def test_psnr_of_a_known_noise_level():
    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.2  # in [-1,1] units: 0.1 on [0,1] → MSE 0.01 → 20 dB
    assert torch.allclose(psnr(y, x), torch.full((2,), 20.0), atol=1e-4)


def test_psnr_of_identical_frames_is_capped():
    x = torch.rand(2, 4, 3, 8, 8) * 2 - 1
    assert torch.equal(psnr(x, x), torch.full((2, 4), MAX_PSNR_DB))


@torch.no_grad()
def test_tokenizer_validation_and_evaluate_agree_to_the_last_digit(tmp_path):
    """`val/psnr` and `val/ssim` of training and `genie evaluate`'s psnr_db and ssim are one computation."""
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8) as w:
        for e in range(2):
            w.add_episode(coded_episode(e, 12, h=64, w=64), "test")
        w.close()
    torch.manual_seed(0)
    module = TokenizerModule(TokenizerConfig.preset("debug"), image_every_n_val=0).eval()
    res = evaluate_tokenizer(module.model, data, "test", num_clips=4, seed=0, batch=4)
    ds = ClipDataset(data, "test", clip_len=module.model.config.num_frames, num_clips=4, seed=0)
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    module.validation_step({"video": torch.stack([ds[i]["video"] for i in range(len(ds))])}, batch_idx=1)
    assert logged["val/psnr"] == res.psnr_db
    assert logged["val/ssim"] == res.ssim


def test_nmi_of_perfect_and_independent_labellings():
    a = np.repeat(np.arange(4), 250)
    assert normalized_mutual_info(a, (a + 1) % 4) == pytest.approx(1.0)  # a relabelling is perfect
    b = np.tile(np.arange(5), 200)  # independent of a by construction
    assert normalized_mutual_info(a, b) == pytest.approx(0.0, abs=1e-9)
    assert normalized_mutual_info(a, np.zeros_like(a)) == 0.0


def test_action_components_from_procgen_names():
    names = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP", "D", "A"]
    c = action_components({"action_names": names})
    assert c["horizontal"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 1, 1]  # left / none / right
    assert c["vertical"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 1]  # down / none / up
    assert action_components({"action_names": ["fire", "noop"]}) is None
    assert action_components({}) is None


def test_linear_probe_and_interval():
    codes = np.tile(np.arange(6), 100)
    assert linear_probe_accuracy(codes, codes % 3, 6) == 1.0
    shuffled = np.random.default_rng(0).permutation(codes % 3)
    assert linear_probe_accuracy(codes, shuffled, 6) < 0.5
    m = mean_ci95(np.array([1.0, 2.0, 3.0, 4.0]))
    assert m.mean == 2.5 and m.ci95[0] < 2.5 < m.ci95[1] and m.n == 4


def test_evaluate_debug_world_is_deterministic(world, tmp_path):  # noqa: F811
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8, card={"merged_action": [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4]}) as w:
        for e in range(3):
            w.add_episode(coded_episode(e, 12, h=64, w=64), "test")
        w.close()
    kw = dict(split="test", num_clips=6, seed=1, steps=2, horizon=3, delta_t=2, progress=False)
    a = evaluate(world / "world", data, **kw).to_dict()
    b = evaluate(world / "world", data, **kw).to_dict()
    assert a == b
    # the JSON's keys, in order, as every result file since these figures were introduced has them
    assert list(a) == ["model", "data", "split", "num_clips", "seed", "device", "processes", "stages", "tokenizer",
                       "lam", "world_model", "fvd"]
    assert list(a["tokenizer"]) == ["clips", "clip_len", "psnr_db", "psnr_db_by_level_type", "ssim", "codebook_usage",
                                    "codebook_perplexity", "token_stability"]
    assert list(a["lam"]) == ["clips", "transitions", "code_usage", "codes_used", "num_actions", "code_perplexity",
                              "next_frame_psnr_inferred_db", "next_frame_psnr_random_db", "psnr_gap_db", "true_actions",
                              "nmi", "nmi_shuffled", "probe_accuracy", "probe_accuracy_shuffled", "few_labels",
                              "supervised_ceiling"]
    wm = a["world_model"]
    assert list(wm) == ["clips", "horizon", "maskgit_steps", "temperature", "rollout_psnr_db", "rollout_ssim",
                        "copy_last_frame_psnr_db", "above_baseline_every_step", "rollout_mean_psnr_db",
                        "copy_last_frame_mean_psnr_db", "mean_psnr_minus_copy_last_db", "copy_last_tokens_psnr_db",
                        "copy_last_tokens_mean_psnr_db", "mean_psnr_minus_copy_last_tokens_db", "tokenizer_recon_psnr_db",
                        "tokenizer_recon_mean_psnr_db", "delta_t_psnr_t2_db", "agent_box", "action_margin_db",
                        "action_margin_mean_db", "action_margin_clips"]
    assert len(wm["rollout_psnr_db"]) == 3 and len(wm["copy_last_frame_psnr_db"]) == 3
    assert wm["delta_t_psnr_t2_db"]["n"] == 6
    p = run_genie("evaluate", "--model", world / "tokenizer", "--data", data, "--out", tmp_path / "e.json",
                  "--num-clips", "4", "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["stages"] == ["tokenizer"] and (tmp_path / "e.md").read_text().startswith("| stage")


def test_probe_writes_its_files(world, tmp_path):  # noqa: F811
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8, card={"action_names": [str(i) for i in range(15)]}) as w:
        for e in range(3):
            w.add_episode(coded_episode(e, 8, h=64, w=64), "test")
        w.close()
    p = run_genie("probe", "--model", world / "world", "--data", data, "--out", tmp_path / "probe", "--prompts", "2",
                  "--repeat", "2", "--steps", "2")
    assert p.returncode == 0, p.stderr[-2000:]
    files = {f.name for f in (tmp_path / "probe").iterdir()}
    assert {"grid.png", "index.html", "confusion.json", "confusion.png", "keymap.json", "probe.json"} <= files
    assert {f"action_{a}.gif" for a in range(8)} <= files
    from PIL import Image

    assert Image.open(tmp_path / "probe" / "grid.png").size == (2 * 64 * 9, 2 * 64 * 2)
    conf = json.loads((tmp_path / "probe" / "confusion.json").read_text())
    assert len(conf["counts"]) == 8 and sum(map(sum, conf["counts"])) > 0
    counts = np.array(conf["counts"])  # the keymap's accuracy: each latent read as its most frequent true action
    assert conf["accuracy"] == round(counts.max(1).sum() / counts.sum(), 4) and conf["transitions"] == counts.sum()
    assert conf["majority_accuracy"] == round(counts.sum(0).max() / counts.sum(), 4) <= conf["accuracy"]
    assert "keymap accuracy" in p.stdout
    assert "rolling out 2 prompts" in p.stderr and "inferring latent actions" in p.stderr  # the progress bars


def test_a_rollout_shorter_than_delta_t_reports_delta_at_its_last_step(world, tmp_path):  # noqa: F811
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8) as w:
        w.add_episode(coded_episode(0, 12, h=64, w=64), "test")
        w.close()
    p = run_genie("evaluate", "--model", world / "world", "--data", data, "--out", tmp_path / "e.json",
                  "--num-clips", "2", "--steps", "2", "--horizon", "3", "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    w = json.loads((tmp_path / "e.json").read_text())["world_model"]
    assert "delta_t_psnr_t3_db" in w and len(w["rollout_psnr_db"]) == 3


def test_split_defaults_to_the_one_that_exists(world, tmp_path):  # noqa: F811
    """An imported corpus of a few files may have train and val but no test: evaluate and probe use val
    and say so; an explicit --split that is empty is still an error."""
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8) as w:
        w.add_episode(coded_episode(0, 10, h=64, w=64), "train")
        w.add_episode(coded_episode(1, 10, h=64, w=64), "val")
        w.close()
    p = run_genie("evaluate", "--model", world / "tokenizer", "--data", data, "--out", tmp_path / "e.json",
                  "--num-clips", "2", "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "has no test split, using val" in p.stderr
    assert json.loads((tmp_path / "e.json").read_text())["split"] == "val"
    p = run_genie("evaluate", "--model", world / "tokenizer", "--data", data, "--out", tmp_path / "e2.json",
                  "--num-clips", "2", "--quiet", "--split", "test")
    assert p.returncode == 2 and "test" in p.stderr and not (tmp_path / "e2.json").exists()


def test_probe_on_a_lam_export_alone(world, tmp_path):  # noqa: F811
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8) as w:  # train split only
        for e in range(2):
            w.add_episode(coded_episode(e, 8, h=64, w=64), "train")
        w.close()
    p = run_genie("probe", "--model", world / "lam", "--data", data, "--out", tmp_path / "probe", "--prompts", "2",
                  "--repeat", "3", "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "has no test or val split, using train" in p.stderr
    assert "rolling out" not in p.stderr and "inferring" not in p.stderr  # --quiet: no bar
    res = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert res["rollouts"].startswith("LAM decoder") and res["split"] == "train" and res["num_actions"] == 8
    conf = json.loads((tmp_path / "probe" / "confusion.json").read_text())  # the LAM alone infers the codes
    assert len(conf["counts"]) == 8 and sum(map(sum, conf["counts"])) > 0
    from PIL import Image

    assert Image.open(tmp_path / "probe" / "grid.png").size == (2 * 64 * 9, 2 * 64 * 2)
    # the frames are the LAM decoder's: the same as calling it directly, and they differ between actions
    from data_pipelines.clips import ClipDataset
    from genie.action_atlas import lam_rollout
    from genie.export import load_export

    lam = load_export(world / "lam", "lam").eval()
    first = ClipDataset(data, "train", clip_len=4, num_clips=64, seed=0)[0]["video"][:1][None]
    with torch.no_grad():
        r0, r5 = lam_rollout(lam, first, 0, 3), lam_rollout(lam, first, 5, 3)
        direct = lam.decode_with_actions(first, torch.zeros(1, 1, dtype=torch.long)).clamp(-1, 1)
    assert r0.shape == (1, 4, 3, 64, 64) and torch.equal(r0[:, 1], direct[:, 0])
    assert not torch.equal(r0[:, 1:], r5[:, 1:])
    p = run_genie("probe", "--model", world / "tokenizer", "--data", data, "--out", tmp_path / "p2")
    assert p.returncode == 2 and "LAM export" in p.stderr


def test_mean_rollout_against_copy_last_is_reported_with_an_interval(world, tmp_path):  # noqa: F811
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8) as w:
        for e in range(2):
            w.add_episode(coded_episode(e, 12, h=64, w=64), "test")
        w.close()
    res = evaluate(world / "world", data, split="test", num_clips=4, seed=0, steps=2, horizon=3, progress=False)
    wm = res.to_dict()["world_model"]
    d = wm["mean_psnr_minus_copy_last_db"]
    assert d["n"] == 4
    assert np.isclose(wm["rollout_mean_psnr_db"], np.mean(wm["rollout_psnr_db"]), atol=1e-4)
    assert np.isclose(d["mean"], wm["rollout_mean_psnr_db"] - wm["copy_last_frame_mean_psnr_db"], atol=1e-4)
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]


@pytest.mark.parametrize("tokenizer_frames", [4, 2])
def test_token_space_references_bound_a_copy_only_dynamics_model(tmp_path, tokenizer_frames):
    """An untrained copy-gate dynamics model at temperature 0 copies the prompt's tokens (the gate's init
    puts half the probability on frame t-1's token), so its rollout is the copy-last-tokens reference.
    A tokenizer shorter than the rollout encodes the true clip in windows."""
    torch.manual_seed(0)
    x = torch.rand(2, tokenizer_frames, 3, 64, 64) * 2 - 1
    tok = VideoTokenizer(TokenizerConfig.preset("debug", num_frames=tokenizer_frames))
    lam = LatentActionModel(LatentActionConfig.preset("debug"))
    tok(x), lam(x[:, :2])
    dyn = DynamicsModel(DynamicsConfig.preset("debug", prev_token_input=True, copy_gate=True))
    for stage, m in (("tokenizer", tok), ("lam", lam), ("dynamics", dyn)):
        save_export(m.eval(), tmp_path / stage, stage)
    WorldModel.assemble(tmp_path / "tokenizer", tmp_path / "lam", tmp_path / "dynamics", tmp_path / "world")
    data = tmp_path / "d"
    with DatasetWriter(data, chunk_len=8) as w:
        for e in range(2):
            w.add_episode(coded_episode(e, 12, h=64, w=64), "test")
        w.close()
    res = evaluate(tmp_path / "world", data, split="test", num_clips=4, seed=0, steps=2, horizon=3, temperature=0,
                   progress=False).world_model
    assert res.rollout_psnr_db == res.copy_last_tokens_psnr_db
    assert res.mean_psnr_minus_copy_last_tokens_db.mean == 0
    assert len(res.tokenizer_recon_psnr_db) == 3
    # the copy reference is not the reconstruction: the clips move
    assert res.copy_last_tokens_mean_psnr_db != res.tokenizer_recon_mean_psnr_db


def test_agent_box_figures_and_the_action_margin(world, tmp_path):  # noqa: F811
    """With an agent_box in the card, the agent-box PSNRs are the whole-frame computation on the crop; the action
    margin exists per step, and is exactly 0 for a dynamics model whose frames do not depend on the action."""
    from genie.evaluate import action_margin
    from genie.world_model import WorldModel

    data = tmp_path / "d"
    card = {"merged_action": [0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4],
            "agent_box": {"top": 16, "left": 16, "bottom": 48, "right": 48}}
    with DatasetWriter(data, chunk_len=8, card=card) as w:
        for e in range(2):
            w.add_episode(coded_episode(e, 12, h=64, w=64), "test")
        w.close()
    res = evaluate(world / "world", data, split="test", num_clips=4, seed=1, steps=2, horizon=3, progress=False)
    wm = res.to_dict()["world_model"]
    assert wm["agent_box"] == {"top": 16, "left": 16, "bottom": 48, "right": 48}
    assert len(wm["agent_box_rollout_psnr_db"]) == 3 and len(wm["action_margin_db"]) == 3
    assert wm["action_margin_clips"] == 4
    assert wm["agent_box_copy_last_psnr_db"] != wm["copy_last_frame_psnr_db"]  # the crop, not the frame
    # the margin is drawn last: leaving it out (as quickstart does for most clips) changes no other figure
    res0 = evaluate(world / "world", data, split="test", num_clips=4, seed=1, steps=2, horizon=3, progress=False,
                    margin_clips=0).to_dict()["world_model"]
    assert "action_margin_db" not in res0
    assert res0 == {k: v for k, v in wm.items() if not k.startswith("action_margin")}
    with pytest.raises(GenieInputError, match="--margin-clips"):
        evaluate(world / "world", data, split="test", num_clips=4, margin_clips=-1, progress=False)
    model = WorldModel.from_pretrained(world / "world")
    with torch.no_grad():
        model.dynamics.action_embed.weight.zero_()  # every action now gives the same logits
    video = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    tokens = model.tokenizer.encode(video)
    acts = torch.tensor([[0, 3, 5], [7, 1, 2]])
    m = action_margin(model, tokens, acts, video[:, 1:], SamplingSettings(steps=2, temperature=0.0),
                      generator=torch.Generator().manual_seed(0))
    assert m.shape == (2, 3) and m.abs().max() < 0.05  # 0 up to float rounding between batch rows


def test_level_types_of_synthetic_frames():
    from genie.evaluate import level_types

    dark = -torch.ones(1, 2, 3, 64, 64)  # black
    flat = torch.full((1, 2, 3, 64, 64), 0.4)  # one bright colour
    stripes = flat.clone()
    stripes[..., ::2] = -0.2  # a fine pattern: large neighbour differences
    assert level_types(torch.cat([dark, flat, stripes])) == ["dark", "bright", "textured"]


def _handmade_evaluation():
    """Every figure `genie evaluate` can report, with round values: no model needed."""
    from genie.eval_results import (
        AgentBoxResult,
        CeilingResult,
        Evaluation,
        FewLabelResult,
        FVDResult,
        Interval,
        LamResult,
        TokenizerResult,
        TokenStability,
        WorldModelResult,
    )

    iv = Interval(1.25, (0.5, 2.0), 64)
    tok = TokenizerResult(clips=8, clip_len=16, psnr_db=25.5, ssim=0.73125, codebook_usage=0.98, codebook_perplexity=900.0,
                          psnr_db_by_level_type={"dark": {"clips": 2, "psnr_db": 30.0}, "textured": {"clips": 0, "psnr_db": None},
                                                 "bright": {"clips": 6, "psnr_db": 24.0}},
                          token_stability=TokenStability(0.5, 0.9, None, "rule"))
    lam = LamResult(clips=8, transitions=120, code_usage=1.0, codes_used=8, num_actions=8, code_perplexity=7.5,
                    next_frame_psnr_inferred_db=23.75, next_frame_psnr_random_db=21.25, psnr_gap_db=2.5,
                    true_actions="merged", nmi=0.25, nmi_shuffled=0.0125, probe_accuracy=0.5, probe_accuracy_shuffled=0.25,
                    nmi_components={"horizontal": 0.125, "vertical": 0.0625},
                    few_labels=FewLabelResult("fit", [{"labels": 200, "dictionary_accuracy": 0.5, "linear_accuracy": 0.625,
                                                       "majority_accuracy": 0.25}]),
                    supervised_ceiling=CeilingResult(0.5, 0.0, 0.75, 0.25, 0.5, {"steps": 8000},
                                                     {"horizontal": 0.375, "vertical": 0.25}))
    box = AgentBoxResult((16, 16, 48, 48), {k: [20.0, 19.5] for k in ("rollout", "copy_last", "tokenizer_recon")},
                         {k: 19.75 for k in ("rollout", "copy_last", "tokenizer_recon")}, iv)
    wm = WorldModelResult(clips=64, horizon=2, maskgit_steps=4, temperature=1.0, rollout_psnr_db=[20.0, 18.0],
                          rollout_ssim=[0.5, 0.25], copy_last_frame_psnr_db=[24.0, 16.0], rollout_mean_psnr_db=19.0,
                          copy_last_frame_mean_psnr_db=20.0, mean_psnr_minus_copy_last_db=iv,
                          copy_last_tokens_psnr_db=[18.0, 15.0], copy_last_tokens_mean_psnr_db=16.5,
                          mean_psnr_minus_copy_last_tokens_db=iv, tokenizer_recon_psnr_db=[25.0, 25.5],
                          tokenizer_recon_mean_psnr_db=25.25, delta_t=4, delta_t_psnr_db=Interval(2.18, (1.54, 2.83), 64),
                          agent_box=box, action_margin_db=[0.5, -0.25], action_margin_mean_db=iv, action_margin_clips=32)
    fvd = FVDResult(fvd=123.45, clips=64, frames=11, resolution="224x224", embedding="I3D logits (400)",
                    fvd_copy_last_frame=99.0)
    return Evaluation(model="m", data="d", split="test", num_clips=64, seed=0, device="cpu", processes=1,
                      stages=["dynamics", "lam", "tokenizer"], tokenizer=tok, lam=lam, world_model=wm, fvd=fvd)


# The table of _handmade_evaluation as `genie evaluate` has rendered it since each figure was introduced.
HANDMADE_TABLE = """\
| stage | metric | value |
|---|---|---|
| tokenizer | reconstruction PSNR | 25.50 dB |
| tokenizer | PSNR by level type (clips) | dark 30.00 (2), textured n/a (0), bright 24.00 (6) |
| tokenizer | SSIM | 0.7312 |
| tokenizer | codebook usage | 98.0% (perplexity 900.0) |
| tokenizer | identical tokens between consecutive frames: all / unchanged patches | 50.0% / 90.0% (n/a of patches unchanged) |
| LAM | codes used | 8 of 8 (perplexity 7.50) |
| LAM | next-frame PSNR inferred / random action | 23.75 / 21.25 dB |
| LAM | next-frame PSNR gap (what the action carries) | 2.50 dB |
| LAM | NMI vs true actions (shuffled) | 0.250 (0.013) |
| LAM | linear-probe accuracy (shuffled) | 0.500 (0.250) |
| LAM | supervised inverse-dynamics ceiling: NMI (shuffled) / accuracy (majority) | 0.500 (0.000) / 0.750 (0.250) |
| LAM | LAM NMI as a share of the ceiling's | 50.0% |
| LAM | NMI by component, LAM / ceiling | horizontal 0.125 / 0.375, vertical 0.062 / 0.250 |
| LAM | 200 labels: dictionary / linear map on the latent / majority accuracy | 0.500 / 0.625 / 0.250 |
| world model | rollout PSNR per step | 20.00, 18.00 |
| world model | copy-last-frame PSNR | 24.00, 16.00 |
| world model | mean rollout / copy-last PSNR (2 steps) | 19.00 / 20.00 dB, difference +1.25 dB, 95% CI [+0.50, +2.00] (n=64) |
| world model | copy-last through the tokenizer (prompt tokens repeated) | 18.00, 15.00; mean 16.50 dB, rollout minus it +1.25 dB, 95% CI [+0.50, +2.00] |
| world model | tokenizer reconstruction of the true frames (a perfect dynamics model) | 25.00, 25.50; mean 25.25 dB |
| world model | agent-box PSNR, rollout | 20.00, 19.50; mean 19.75 dB |
| world model | agent-box PSNR, copy-last-frame | 20.00, 19.50; mean 19.75 dB |
| world model | agent-box PSNR, tokenizer reconstruction | 20.00, 19.50; mean 19.75 dB |
| world model | action margin: inferred minus best other action, one step from true context | +0.50, -0.25; mean +1.25 dB, 95% CI [+0.50, +2.00] (n=64) |
| world model | ΔtPSNR (t4) | 2.180 dB, 95% CI [1.540, 2.830] (n=64) |
| world model | FVD (64 clips of 11 frames, 224x224) | 123.5 (copy-last-frame 99.0) |
"""


def test_each_figure_renders_as_before():
    """The markdown table renders every figure as it always has (ΔtPSNR names its t, intervals their n), and
    the JSON keeps its keys: the ΔtPSNR key names t, the agent box's figures sit flat beside the whole-frame ones."""
    res = _handmade_evaluation()
    assert markdown_table(res) == HANDMADE_TABLE
    d = json.loads(json.dumps(res.to_dict()))
    assert list(d) == ["model", "data", "split", "num_clips", "seed", "device", "processes", "stages", "tokenizer",
                       "lam", "world_model", "fvd"]
    w = d["world_model"]
    assert w["delta_t_psnr_t4_db"] == {"mean": 2.18, "ci95": [1.54, 2.83], "n": 64} and w["above_baseline_every_step"] is False
    assert w["agent_box"] == {"top": 16, "left": 16, "bottom": 48, "right": 48}
    assert w["agent_box_tokenizer_recon_mean_psnr_db"] == 19.75 and w["action_margin_clips"] == 32
    assert d["lam"]["supervised_ceiling"]["probe"] == {"steps": 8000} and "action_metrics" not in d["lam"]
    assert d["tokenizer"]["token_stability"]["unchanged_patch_share"] is None  # null, not left out
    res.world_model, res.fvd = "not computed: no dynamics", "not computed: no I3D"
    table = markdown_table(res)
    assert "| world model |" not in table and table.endswith("| — | FVD | not computed: no I3D |\n")
