"""`genie quickstart`: the whole pipeline on CoinRun, sized for a 2-core machine.

record CoinRun (train levels and held-out levels) → train tokenizer, LAM, dynamics (`cpu` presets,
within the time budget) → tokenize → assemble → evaluate → probe → sample clips. With
`--pretrained`, the committed models in `pretrained/` are used and training is skipped.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch
import yaml

from data_pipelines.clips import ClipDataset
from data_pipelines.coinrun import record_coinrun
from data_pipelines.importing import import_videos
from data_pipelines.storage import pick_split, read_card
from data_pipelines.video import VideoDecodeError, decode_video, list_videos, parse_resolution, probe_video
from genie.action_atlas import write_atlas
from genie.core import atomic
from genie.core.device import resolve_device
from genie.core.errors import GenieInputError
from genie.core.frames import video_to_frames
from genie.core.registry import STAGES
from genie.core.training import adamw_kernel
from genie.eval_results import markdown_table
from genie.evaluate import evaluate
from genie.export import load_export
from genie.stages import stage_class
from genie.tokenize import tokenize_dataset
from genie.train import run_train
from genie.video_io import write_clip
from genie.world_model import WorldModel

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "pretrained"
# Trainer settings per device type: fp32 on CPUs (bf16 matmuls are 50-150x slower on CPUs without
# AMX/AVX512-BF16), bf16-mixed and GPU-sized batches (the 3-minute H200 runs of issue 11) on CUDA.
HARDWARE = {
    "cpu": {"precision": "32-true", "batch_size": None, "num_workers": None},
    "cuda": {"precision": "bf16-mixed", "batch_size": 32, "num_workers": 4},
}
RESERVE_MINUTES = 5.0  # evaluation (action margin on 8 clips), probe and sample clips at the end, and start-up
STAGE_OVERHEAD_MINUTES = 0.3  # each training run: set-up before its timer starts, final validation and export


def _hms(minutes: float) -> str:
    """Lightning max_time for a stage given `minutes` of wall time, less its set-up and export."""
    s = max(int((minutes - STAGE_OVERHEAD_MINUTES) * 60), 10)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def trainer_args(device: torch.device, tiny: bool = False) -> list[str]:
    """LightningCLI overrides that put a stage's training on `device` with the settings that fit it."""
    hw = HARDWARE["cuda" if device.type == "cuda" else "cpu"]
    if device.type == "cuda":
        args = ["--trainer.accelerator", "gpu", "--trainer.devices", f"[{device.index or 0}]"]
    else:
        args = ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    args += ["--trainer.precision", hw["precision"]]
    if hw["batch_size"] and not tiny:
        args += ["--data.batch_size", str(hw["batch_size"]), "--data.num_workers", str(hw["num_workers"])]
    return args


def measure_rates(tokenizer_dir: Path, lam_dir: Path, dynamics_config: Path, device: torch.device,
                  batch_size: int | None = None) -> tuple[float, float]:
    """Frames/s of tokenising (tokenizer + LAM encode) and of a dynamics training step on `device`, timed here.

    The time split between tokenising and dynamics training uses these rather than constants for one machine."""
    tok = load_export(tokenizer_dir, "tokenizer").to(device)
    lam = load_export(lam_dir, "lam").to(device)
    cfg = yaml.safe_load(dynamics_config.read_text())
    dcfg = stage_class("dynamics", "config").from_dict(cfg["model"]["config"])
    b = batch_size or cfg["data"].get("batch_size", 8)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    repeats = 3  # timed calls after one warm-up call

    def timed(fn) -> float:
        fn()  # warm-up
        _sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(device)
        return (time.perf_counter() - t) / repeats

    c, w = tok.config.channels, tok.config.num_frames
    video = torch.zeros(b, w, c, *tok.config.frame_size, device=device)
    with torch.no_grad(), autocast:
        tok_s = timed(lambda: (tok.encode(video), lam.infer_actions(video[:, :lam.config.num_frames])))
    dyn = stage_class("dynamics", "model")(dcfg).to(device)
    params = list(dyn.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, **adamw_kernel(params))
    t = dcfg.num_frames
    tokens = torch.zeros(b, t, *dcfg.grid, dtype=torch.long, device=device)
    actions = torch.zeros(b, t - 1, dtype=torch.long, device=device)

    def step():
        with autocast:
            loss = _dynamics_loss(dyn, tokens, actions)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    dyn_s = timed(step)
    return b * w / tok_s, b * t / dyn_s


def _dynamics_loss(model, tokens: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """A stand-in for the dynamics training loss with its cost: logits at ~70% of the positions of frames 1..t-1
    (Genie's mask rates U(0.5, 1)), the head run on those only, as `dynamics.module` does."""
    where = torch.rand(tokens.shape, device=tokens.device) < 0.75
    where[:, 0] = False
    logits = model(tokens.masked_fill(where, model.mask_id), actions, where=where)
    return torch.nn.functional.cross_entropy(logits.float(), tokens[where])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- a folder of the user's own videos (`--videos DIR`) ------------------------------------------------

def video_resolution(videos: str | Path, long_side: int = 64, multiple: int = 16) -> tuple[int, int]:
    """(H, W) for a folder of videos: the most common source aspect, the long side `long_side` and the short
    side rounded to a `multiple` (every preset's patch sizes divide 16), so `--fit pad` adds thin bars at
    most and nothing is cropped. Square sources give long_side × long_side."""
    files, _ = list_videos(videos)
    sizes: Counter = Counter()
    for f in files[:8]:
        try:
            probe_video(f)
            import decord

            sizes[tuple(decord.VideoReader(str(f), num_threads=1)[0].shape[:2])] += 1
        except Exception:
            try:
                sizes[tuple(decode_video(f, backend="pyav").shape[1:3])] += 1
            except VideoDecodeError:
                continue
    if not sizes:
        return long_side, long_side  # import names the unreadable files
    h, w = sizes.most_common(1)[0][0]
    short = max(multiple, round(long_side * min(h, w) / max(h, w) / multiple) * multiple)
    return (long_side, short) if h > w else (short, long_side) if w > h else (long_side, long_side)


# CoinRun is recorded with held actions (a geometric hold of mean 8 steps), as a player holds a key: the `cpu` LAM
# recipe was measured on such data, and one-step random actions barely show (the committed LAM of 2026-11: held-out
# NMI 0.155 with held actions, 0.028 with one-step ones)
ACTION_REPEAT = 8


def _stage_model(stage: str, config_yaml: Path, image_size: tuple[int, int], grid: tuple[int, int] | None = None,
                 card: dict | None = None):
    """The plain model of a stage's YAML at `image_size` (dynamics: on the token `grid`) for the data with this
    `card` (which settles the LAM's crop_box "card"), for timing a step."""
    cfg = dict(yaml.safe_load(config_yaml.read_text())["model"]["config"])
    size = {"grid": list(grid)} if STAGES[stage].data == "tokens" else {"image_size": list(image_size)}
    config = stage_class(stage, "config").from_dict({**cfg, **size})
    if hasattr(config, "with_card"):
        config = config.with_card(card or {})
    return stage_class(stage, "model")(config)


def step_seconds(stage: str, config_yaml: Path, image_size: tuple[int, int], device: torch.device,
                 batch_size: int | None = None, grid: tuple[int, int] | None = None, card: dict | None = None) -> float:
    """Seconds of one bare training step (forward, backward, AdamW) of a stage on `device`, timed here,
    so the validation interval can follow the number of steps the budget allows."""
    data = yaml.safe_load(config_yaml.read_text())["data"]
    b, t = batch_size or data["batch_size"], data["clip_len"]
    model = _stage_model(stage, config_yaml, image_size, grid, card).to(device).train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, **adamw_kernel(params))  # the optimiser `genie train` builds
    H, W = image_size
    video = torch.rand(b, t, 3, H, W, device=device) * 2 - 1

    def step():
        if stage == "tokenizer":
            out = model(video)
            loss = (out.recon - video).pow(2).mean() + out.quant_loss
        elif stage == "lam":
            out = model(video)
            loss = (out.pred - video[:, 1:]).pow(2).mean() + out.quant_loss
        else:
            tokens = torch.randint(0, model.config.vocab_size, (b, t, *model.config.grid), device=device)
            actions = torch.randint(0, model.config.num_actions, (b, t - 1), device=device)
            loss = _dynamics_loss(model, tokens, actions)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (k-means codebook init, allocator)
    _sync(device)
    t0 = time.perf_counter()
    step()  # one timed step: on a 2-minute CPU budget each extra one costs a real training step
    _sync(device)
    return time.perf_counter() - t0


def val_interval(minutes: float, seconds_per_step: float, preset_interval: int, points: int = 8) -> int:
    """Validate about `points` times within the stage's budget (never less often than the preset does),
    so a short run logs a validation curve rather than one point. A bare step is faster than one inside
    the training loop (data, logging), so the count is an upper bound and the curve has ≥ points / 2."""
    expected = max(1, int(minutes * 60 / max(seconds_per_step, 1e-3)))
    return max(5, min(preset_interval, expected // points))


def quickstart(out: str | Path = "quickstart", minutes: float = 30.0, pretrained: bool = False, tiny: bool = False,
               episodes: int | None = None, overwrite: bool = False, device: str | torch.device = "auto",
               videos: str | Path | None = None, resolution: str | None = None) -> dict:
    """The whole pipeline. With `videos`, a folder of the user's own video files replaces CoinRun: they are
    imported (letterboxed to `resolution`, default: 64 on the long side at the videos' aspect), split by file
    (held-out files are evaluated: test, else val, else train) and the models are built for that size."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    out = Path(out)
    if pretrained:
        missing = [s for s in STAGES if not (PRETRAINED / s / "model.safetensors").is_file()]
        if missing:
            raise GenieInputError(f"--pretrained: no committed {', '.join(missing)} model in {PRETRAINED} yet; "
                                  "run `genie quickstart` without it to train them")
    if videos is not None and pretrained:
        raise GenieInputError("--pretrained uses the committed CoinRun models; with --videos the models are trained "
                              "on your videos (leave out --pretrained)")
    if videos is not None:
        list_videos(videos)  # a missing or empty folder fails before anything is written
        size = parse_resolution(resolution) if resolution is not None else video_resolution(videos)
        if size[0] % 16 or size[1] % 16:
            raise GenieInputError(f"--resolution {size[1]}x{size[0]}: width and height must be multiples of 16 "
                                  "(the presets' patch sizes)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GenieInputError(f"{out}: exists and is not empty (pass --overwrite to start over)")
    out.mkdir(parents=True, exist_ok=True)
    preset = "debug" if tiny else "cpu"
    n_train = episodes or (6 if tiny else 200)
    n_test = max(2, n_train // 10)
    max_steps = 200 if tiny else 1000
    data, heldout = out / "data" / "coinrun", out / "data" / "heldout"
    eval_split = "test"
    if videos is not None:
        data = heldout = out / "data" / "videos"
        print(f"[1/6] importing {videos} at {size[1]}×{size[0]} (width×height, --fit pad: whole frames, letterboxed)")
        imp = import_videos(videos, data, resolution=size, fit="pad", overwrite=True, progress=not tiny)
        print(f"      {imp['imported']} files, {imp['frames']} frames [" + ", ".join(f"{k} {v}" for k, v in imp["splits"].items())
              + f"]; skipped {len(imp['skipped'])} unreadable")
        eval_split = pick_split(data)[0]
        if "val" not in imp["splits"]:
            print("      no val split (one file): training runs without validation")
    elif pretrained:  # nothing to train: only the held-out levels are needed
        print(f"[1/6] recording CoinRun: {n_test} episodes on held-out levels")
    else:
        print(f"[1/6] recording CoinRun (random policy holding each action ~{ACTION_REPEAT} steps): {n_train} episodes "
              f"on training levels, {n_test} on held-out levels")
        record_coinrun(data, n_train, start_level=0, num_levels=100000, seed=0, max_steps=max_steps, overwrite=True,
                       val_fraction=0.1, test_fraction=0.0, action_repeat=ACTION_REPEAT, progress=not tiny)
    if videos is None:
        record_coinrun(heldout, n_test, start_level=1_000_000, num_levels=100000, seed=1, max_steps=max_steps,
                       split="test", overwrite=True, action_repeat=ACTION_REPEAT, progress=not tiny)
        size = (64, 64)

    model = out / "model"
    if pretrained:
        print("[2-4/6] using the committed pretrained models (no training)")
        WorldModel.assemble(PRETRAINED / "tokenizer", PRETRAINED / "lam", PRETRAINED / "dynamics", model, overwrite=True)
    else:
        def minutes_left() -> float:  # training time left once the end's evaluation is set aside
            return max(minutes - (time.perf_counter() - t0) / 60 - (1 if tiny else RESERVE_MINUTES), 1.0)

        train_minutes = minutes_left()
        runs = {}
        print(f"training on {dev} ({HARDWARE['cuda' if dev.type == 'cuda' else 'cpu']['precision']})")
        common = (["--trainer.enable_progress_bar", "false"] if tiny else []) + trainer_args(dev, tiny)
        batch = HARDWARE["cuda" if dev.type == "cuda" else "cpu"]["batch_size"]
        yamls = {st: REPO / "configs" / spec.package / f"{preset}.yaml" for st, spec in STAGES.items()}
        tok_patch = yaml.safe_load(yamls["tokenizer"].read_text())["model"]["config"]["patch_size"]
        grid = (size[0] // tok_patch, size[1] // tok_patch)
        # video stages take the frame size, the dynamics stage the token grid
        size_args = {st: ["--model.config.grid", json.dumps(list(grid))] if spec.data == "tokens" else
                     ["--model.config.image_size", json.dumps(list(size))]
                     for st, spec in STAGES.items()} if size != (64, 64) else {}

        # A folder of videos mixes games or scenes: the LAM quantises each transition's latent minus its clip's mean,
        # or what a clip shares (the game) takes the codes — on a dozen Atari videos the uncentred LAM gave every
        # transition of a held-out video 1 code of 8, the centred one 8 of 8 (README, Measured here)
        # and the tokenizer gets the per-clip code-usage entropy term: without it 259 steps on those videos left 23% of
        # its codebook in use on the held-out video (15% in a whole run), with weight 0.3 48% (PSNR 27.6 → 25.7 dB;
        # 0.1: 25%, 1.0: 67%; README, Measured here)
        guard_args: dict[str, list[str]] = {}
        if videos is not None:
            guard_args["lam"] = ["--model.config.center_latents", "true"]
            guard_args["tokenizer"] = ["--model.config.code_entropy_weight", "0.3"]

        # a smoke run: CoinRun's 30 steps; a video folder's 16, validated every 4 (a 4-point curve, < 90 s in all)
        tiny_args = ["--trainer.max_steps", "30"] if videos is None else ["--trainer.max_steps", "16",
                                                                          "--trainer.val_check_interval", "4"]

        def val_args(stage: str, stage_minutes: float) -> list[str]:
            if tiny:  # the debug YAMLs validate every 10 of the 30 steps already
                return []
            preset_interval = yaml.safe_load(yamls[stage].read_text())["trainer"]["val_check_interval"]
            every = val_interval(stage_minutes, step_seconds(stage, yamls[stage], size, dev, batch, grid, read_card(data)),
                                 preset_interval)
            print(f"      validating every {every} steps")
            return ["--trainer.val_check_interval", str(every)]

        for i, stage in enumerate(s for s, spec in STAGES.items() if spec.data == "video"):
            print(f"[{2 + i}/6] training the {stage} ({preset} preset, ≤ {train_minutes * STAGES[stage].train_share:.1f} min)")
            runs[stage] = out / "runs" / stage
            extra = list(tiny_args) if tiny else []
            extra += size_args.get(stage, []) + guard_args.get(stage, [])
            extra += val_args(stage, train_minutes * STAGES[stage].train_share)
            run_train(stage, ["--config", str(yamls[stage]),
                              "--data.data", str(data), "--trainer.default_root_dir", str(runs[stage]),
                              "--trainer.max_time", _hms(train_minutes * STAGES[stage].train_share), *extra, *common])
        left = minutes_left()
        limit = None
        if not tiny:  # tokenising time τ and training time left − τ, with tokenize_fps·τ = train_fps·(left − τ)
            tokenize_fps, train_fps = measure_rates(runs["tokenizer"] / "export", runs["lam"] / "export",
                                                    REPO / "configs" / "dynamics" / f"{preset}.yaml", dev,
                                                    HARDWARE["cuda" if dev.type == "cuda" else "cpu"]["batch_size"])
            print(f"measured on {dev}: tokenising {tokenize_fps:.0f} frames/s, dynamics training {train_fps:.0f} frames/s")
            split = read_card(data)["splits"]["train"]
            tau = left * train_fps / (tokenize_fps + train_fps)
            n = max(4, round(tokenize_fps * 60 * tau / (split["frames"] / split["episodes"])))
            limit = {"train": n, "val": max(2, n // 8)}
        print(f"[4/6] tokenizing {'all' if limit is None else limit['train']} training episodes with the tokenizer and "
              f"the LAM, then training the dynamics model (≤ {left:.1f} min for both)")
        tokens = out / "data" / "tokens"
        tokenize_dataset(runs["tokenizer"] / "export", data, tokens, lam_dir=runs["lam"] / "export", overwrite=True,
                         max_episodes=limit, progress=not tiny, device=dev)
        runs["dynamics"] = out / "runs" / "dynamics"
        remaining = minutes_left()
        extra = list(tiny_args) if tiny else []
        extra += size_args.get("dynamics", []) + val_args("dynamics", remaining)
        run_train("dynamics", ["--config", str(REPO / "configs" / "dynamics" / f"{preset}.yaml"), "--data.data", str(tokens),
                               "--trainer.default_root_dir", str(runs["dynamics"]), "--trainer.max_time", _hms(remaining),
                               *extra, *common])
        WorldModel.assemble(runs["tokenizer"] / "export", runs["lam"] / "export", runs["dynamics"] / "export", model,
                            overwrite=True)

    where = "held-out levels" if videos is None else f"the {eval_split} split ({'held-out files' if eval_split != 'train' else 'training files: no file was held out'})"
    print(f"[5/6] evaluating on {where} and probing the latent actions")
    horizon = 3 if tiny else 10
    # 8 MaskGIT steps per frame (the speed target's setting) keep the report to minutes on 2 cores;
    # `genie evaluate --steps 25` gives the slower, Genie-default figure.
    # The action margin on 8 clips, not evaluate's 32: it rolls out every latent at every step (~17 s a clip on 2
    # cores), and 32 of them took 9 of a 30-minute run's last 10 minutes
    res = evaluate(model, heldout, split=eval_split, num_clips=8 if tiny else 64, seed=0, steps=4 if tiny else 8,
                   horizon=horizon, delta_t=2 if tiny else 4, progress=not tiny, device=dev,
                   margin_clips=4 if tiny else 8)
    atomic.write_text(out / "report.json", json.dumps(res.to_dict(), indent=2))
    table = markdown_table(res)
    if videos is not None:
        table += ("\nNo action metrics (NMI, probe accuracy, supervised ceiling): imported videos carry no true "
                  "actions to compare the latent actions with; the probe page shows what each one does.\n")
        print("      no action metrics: the videos carry no true actions (see the probe page instead)")
    atomic.write_text(out / "report.md", table)
    write_atlas(model, heldout, out / "probe", prompts=2 if tiny else 4, repeat=2 if tiny else 4,
                steps=4 if tiny else 8, device=dev, split=eval_split)

    print("[6/6] generating sample clips")
    wm = WorldModel.from_pretrained(model).to(dev)
    prompt = ClipDataset(heldout, eval_split, clip_len=1, num_clips=1, seed=0)[0]["video"]
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
    return {"minutes": minutes_taken, "model": str(model), "report": res.to_dict(), "samples": samples}
