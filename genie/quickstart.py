"""`genie quickstart`: the whole pipeline on CoinRun, sized for a 2-core machine.

record CoinRun (train levels and held-out levels) → train tokenizer, LAM, dynamics (`cpu` presets,
within the time budget) → tokenize → assemble → evaluate → probe → sample clips. With
`--pretrained`, the committed models in `pretrained/` are used and training is skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from data_pipelines.errors import GenieInputError

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
# share of the training budget per stage
SHARES = {"tokenizer": 0.4, "lam": 0.2, "dynamics": 0.4}
# Rates of the `cpu` presets on the reference 2-core machine (benchmarks/results): tokenising with the
# tokenizer + LAM, and training the dynamics model. The dynamics share of the budget is split so that
# tokenising takes only as many episodes as the dynamics model can see in the time left.
TOKENIZE_FPS, DYNAMICS_TRAIN_FPS = 100.0, 20.0
RESERVE_MINUTES = 5.0  # evaluation, probe and sample clips at the end (3.9 min measured), and start-up
STAGE_OVERHEAD_MINUTES = 0.3  # each training run: set-up before its timer starts, final validation and export
CONFIG_DIRS = {"tokenizer": "tokenizer", "lam": "latent_actions", "dynamics": "dynamics"}


def _hms(minutes: float) -> str:
    """Lightning max_time for a stage given `minutes` of wall time, less its set-up and export."""
    s = max(int((minutes - STAGE_OVERHEAD_MINUTES) * 60), 10)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def quickstart(out: str | Path = "quickstart", minutes: float = 30.0, pretrained: bool = False, tiny: bool = False,
               episodes: int | None = None, overwrite: bool = False) -> dict:
    from data_pipelines.coinrun import record_coinrun
    from genie.evaluate import evaluate, markdown_table
    from genie.probe import probe
    from genie.training import run_train
    from genie.world_model import WorldModel

    t0 = time.perf_counter()
    out = Path(out)
    if pretrained:
        missing = [s for s in ("tokenizer", "lam", "dynamics") if not (PRETRAINED / s / "model.safetensors").is_file()]
        if missing:
            raise GenieInputError(f"--pretrained: no committed {', '.join(missing)} model in {PRETRAINED} yet; "
                                  "run `genie quickstart` without it to train them")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GenieInputError(f"{out}: exists and is not empty (pass --overwrite to start over)")
    out.mkdir(parents=True, exist_ok=True)
    preset = "debug" if tiny else "cpu"
    n_train = episodes or (6 if tiny else 200)
    n_test = max(2, n_train // 10)
    max_steps = 200 if tiny else 1000
    data, heldout = out / "data" / "coinrun", out / "data" / "heldout"
    if pretrained:  # nothing to train: only the held-out levels are needed
        print(f"[1/6] recording CoinRun: {n_test} episodes on held-out levels")
    else:
        print(f"[1/6] recording CoinRun: {n_train} episodes on training levels, {n_test} on held-out levels")
        record_coinrun(data, n_train, start_level=0, num_levels=100000, seed=0, max_steps=max_steps, overwrite=True,
                       val_fraction=0.1, test_fraction=0.0, progress=not tiny)
    record_coinrun(heldout, n_test, start_level=1_000_000, num_levels=100000, seed=1, max_steps=max_steps,
                   split="test", overwrite=True, progress=not tiny)

    model = out / "model"
    if pretrained:
        print("[2-4/6] using the committed pretrained models (no training)")
        WorldModel.assemble(PRETRAINED / "tokenizer", PRETRAINED / "lam", PRETRAINED / "dynamics", model, overwrite=True)
    else:
        def minutes_left() -> float:  # training time left once the end's evaluation is set aside
            return max(minutes - (time.perf_counter() - t0) / 60 - (1 if tiny else RESERVE_MINUTES), 1.0)

        train_minutes = minutes_left()
        runs = {}
        common = ["--trainer.enable_progress_bar", "false"] if tiny else []
        for i, stage in enumerate(("tokenizer", "lam")):
            print(f"[{2 + i}/6] training the {stage} ({preset} preset, ≤ {train_minutes * SHARES[stage]:.1f} min)")
            runs[stage] = out / "runs" / stage
            extra = ["--trainer.max_steps", "30"] if tiny else []
            run_train(stage, ["--config", str(REPO / "configs" / CONFIG_DIRS[stage] / f"{preset}.yaml"),
                              "--data.data", str(data), "--trainer.default_root_dir", str(runs[stage]),
                              "--trainer.max_time", _hms(train_minutes * SHARES[stage]), *extra, *common])
        from data_pipelines.storage import read_card
        from genie.tokenize import tokenize_dataset

        left = minutes_left()
        limit = None
        if not tiny:  # tokenising time τ and training time left − τ, with TOKENIZE_FPS·τ = DYNAMICS_TRAIN_FPS·(left − τ)
            split = read_card(data)["splits"]["train"]
            tau = left * DYNAMICS_TRAIN_FPS / (TOKENIZE_FPS + DYNAMICS_TRAIN_FPS)
            n = max(4, round(TOKENIZE_FPS * 60 * tau / (split["frames"] / split["episodes"])))
            limit = {"train": n, "val": max(2, n // 8)}
        print(f"[4/6] tokenizing {'all' if limit is None else limit['train']} training episodes with the tokenizer and "
              f"the LAM, then training the dynamics model (≤ {left:.1f} min for both)")
        tokens = out / "data" / "tokens"
        tokenize_dataset(runs["tokenizer"] / "export", data, tokens, lam_dir=runs["lam"] / "export", overwrite=True,
                         max_episodes=limit, progress=not tiny)
        runs["dynamics"] = out / "runs" / "dynamics"
        remaining = minutes_left()
        extra = ["--trainer.max_steps", "30"] if tiny else []
        run_train("dynamics", ["--config", str(REPO / "configs" / "dynamics" / f"{preset}.yaml"), "--data.data", str(tokens),
                               "--trainer.default_root_dir", str(runs["dynamics"]), "--trainer.max_time", _hms(remaining),
                               *extra, *common])
        WorldModel.assemble(runs["tokenizer"] / "export", runs["lam"] / "export", runs["dynamics"] / "export", model,
                            overwrite=True)

    print("[5/6] evaluating on held-out levels and probing the latent actions")
    horizon = 3 if tiny else 10
    # 8 MaskGIT steps per frame (the speed target's setting) keep the report to minutes on 2 cores;
    # `genie evaluate --steps 25` gives the slower, Genie-default figure.
    res = evaluate(model, heldout, split="test", num_clips=8 if tiny else 64, seed=0, steps=4 if tiny else 8,
                   horizon=horizon, delta_t=2 if tiny else 4, progress=not tiny)
    (out / "report.json").write_text(json.dumps(res, indent=2))
    table = markdown_table(res)
    (out / "report.md").write_text(table)
    probe(model, heldout, out / "probe", prompts=2 if tiny else 4, repeat=2 if tiny else 4, steps=4 if tiny else 8)

    print("[6/6] generating sample clips")
    import torch

    from data_pipelines.clips import ClipDataset, video_to_frames
    from genie.video_io import write_clip

    wm = WorldModel.from_pretrained(model)
    prompt = ClipDataset(heldout, "test", clip_len=1, num_clips=1, seed=0)[0]["video"]
    samples = []
    for a in range(min(wm.num_actions, 4)):
        video = wm.generate(prompt[None], [a] * (3 if tiny else 8), steps=4 if tiny else 25, seed=0)
        path = write_clip(out / "samples" / f"action_{a}.gif", video_to_frames(video[0]), fps=4, scale=2)
        samples.append(str(path))
    minutes_taken = (time.perf_counter() - t0) / 60
    print()
    print(table)
    print(f"quickstart finished in {minutes_taken:.1f} min")
    print(f"  model:   {model}")
    print(f"  report:  {out / 'report.md'} (and report.json)")
    print(f"  probe:   {out / 'probe' / 'index.html'}")
    print(f"  samples: {out / 'samples'}/")
    print("next:")
    print(f"  genie generate --model {model} --prompt FRAME.png --actions 0,1,2,3 --out clip.mp4")
    print(f"  genie evaluate --model {model} --data {heldout} --out eval.json")
    print(f"  genie probe --model {model} --data {heldout} --out probe/")
    return {"minutes": minutes_taken, "model": str(model), "report": res, "samples": samples}
