"""The `genie` command (also `python -m genie`).

Subcommands (architecture §5): `data coinrun|import|info`, `train`, `tokenize`, `export`, `generate`, `assemble`,
`evaluate`, `probe`, `ground`, `quickstart`, `play`, `agent train|eval|report`, `heads train`, `plan`, `dream`. Bad input raises GenieInputError
anywhere below; it is printed as one line on stderr with exit code 2. Each subcommand's module is imported when
that subcommand runs, so `genie --help` or `genie data info` does not load torch, Lightning and transformers
(seconds of start-up).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from data_pipelines.storage import SPLITS
from genie.acting.cli import add_commands as add_acting_commands  # heads, plan, dream (issue 28): its own parsers
from genie.agents.cli import add_commands as add_agent_commands  # agent train|eval|report (issue 25)
from genie.core import atomic
from genie.core.errors import GenieInputError
from genie.core.registry import STAGES
from genie.data_cli import add_commands as add_data_commands  # data coinrun|import|info: its own parsers


def _cmd_train(a: argparse.Namespace) -> None:
    from genie.train import run_train

    run_train(a.stage, a.args)


def _cmd_tokenize(a: argparse.Namespace) -> None:
    from genie.tokenize import tokenize_dataset

    s = tokenize_dataset(a.tokenizer, a.data, a.out, lam_dir=a.lam, batch_size=a.batch_size, max_episodes=a.max_episodes,
                         overwrite=a.overwrite, progress=not a.quiet, device=a.device)
    if s["main_process"]:
        procs = f", {s['processes']} processes" if s["processes"] > 1 else ""
        print(f"tokenized {s['frames']} frames in {s['seconds']:.1f} s ({s['frames_per_s']:.0f} frames/s on {s['device']}{procs}) "
              f"→ {s['path']}")


def _cmd_export(a: argparse.Namespace) -> None:
    from genie.train import export_checkpoint

    out = export_checkpoint(a.stage, a.ckpt, a.out)
    print(f"exported {a.stage} → {out}")


def _parse_actions(text: str) -> list[int]:
    items = [x.strip() for x in text.split(",")]
    if not "".join(items):
        raise GenieInputError("--actions is empty: give at least one latent action id")
    # ASCII digits only, no empty items: a stray comma or a pasted list is named rather than half-used
    if not all(re.fullmatch(r"-?[0-9]{1,9}", x) for x in items):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise GenieInputError(f"--actions {shown!r}: expected comma-separated integers, e.g. 0,3,3,1") from None
    return [int(x) for x in items]


def _parse_real_actions(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise GenieInputError(f"--real-actions {shown!r}: expected comma-separated real action names, e.g. RIGHT,RIGHT,UP")
    return items


def add_sampling_levers(p: argparse.ArgumentParser) -> None:
    """--top-k and --guidance (genie.sampling.SamplingSettings checks them)."""
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only (default: all)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight w: logits = cond + "
                   "w·(cond − uncond); needs a dynamics model trained with a null action (default 0: off)")


def sampling_from_args(a: argparse.Namespace, base):
    """`base` (a genie.sampling.SamplingSettings: the command's defaults, kept in one place) with the sampling options
    the user gave; an option left out (None) keeps base's value."""
    return base.override(steps=a.steps, temperature=a.temperature, context=a.context, window_hop=a.window_hop,
                         top_k=a.top_k, guidance=a.guidance)


def _cmd_generate(a: argparse.Namespace) -> None:
    import torch

    from genie.core.device import resolve_device, to_device
    from genie.core.frames import frames_to_video, video_to_frames
    from genie.grounding import load_action_map
    from genie.sampling import SamplingSettings
    from genie.video_io import check_output_path, read_prompt, write_clip
    from genie.world_model import WorldModel

    out = check_output_path(a.out)
    settings = sampling_from_args(a, SamplingSettings())
    names = _parse_real_actions(a.real_actions) if a.real_actions is not None else None
    actions = _parse_actions(a.actions) if names is None else None
    dev = resolve_device(a.device)
    wm = to_device(WorldModel.from_pretrained(a.model), dev, a.model)
    if names is not None:  # real action names → the latent the LAM's action map gives most often for each
        amap = load_action_map(a.model, lam=wm.lam, required=True)
        try:
            actions = [amap.latent_for(n) for n in names]
        except GenieInputError as e:
            raise GenieInputError(f"--real-actions: {e}") from None
    try:
        wm.check_actions(actions)
    except GenieInputError as e:  # name the option the ids came from
        raise GenieInputError(f"{'--real-actions' if names is not None else '--actions'}: {e}") from None
    frames = read_prompt(a.prompt, wm.image_size, wm.dynamics.config.context_frames)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    video = wm.generate(frames_to_video(frames)[None], actions, seed=a.seed, settings=settings)
    clip = video_to_frames(video[0, -(len(actions) + 1):])  # the last prompt frame, then one frame per action
    write_clip(out, clip, fps=a.fps, scale=a.scale)
    print(f"wrote {out}: {len(clip)} frames (prompt + {len(actions)} generated), {clip.shape[2]}×{clip.shape[1]}"
          + (f" shown at ×{a.scale}" if a.scale > 1 else "")
          + (f"; latent actions {','.join(map(str, actions))}" if names is not None else ""))


def _cmd_assemble(a: argparse.Namespace) -> None:
    from genie.world_model import WorldModel

    out = WorldModel.assemble(a.tokenizer, a.lam, a.dynamics, a.out, overwrite=a.overwrite)
    print(f"assembled world model → {out}")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from genie.eval_results import markdown_table
    from genie.evaluate import evaluate

    out = Path(a.out)
    if out.suffix.lower() != ".json":
        raise GenieInputError(f"{out}: --out must be a .json file")
    res = evaluate(a.model, a.data, split=a.split, num_clips=a.num_clips, seed=a.seed, steps=a.steps,
                   horizon=a.horizon, temperature=a.temperature, progress=not a.quiet, i3d=a.i3d, device=a.device,
                   probe_data=a.probe_data, probe_cache=a.probe_cache, top_k=a.top_k, guidance=a.guidance,
                   heads=a.heads, margin_clips=a.margin_clips)
    if not res.main_process:  # under torchrun every process evaluated its share; one writes
        return
    table = markdown_table(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in ((out, json.dumps(res.to_dict(), indent=2)), (out.with_suffix(".md"), table)):
        atomic.write_text(path, text)
    print(table + f"\nwrote {out} and {out.with_suffix('.md')}")


def _cmd_probe(a: argparse.Namespace) -> None:
    from genie.action_atlas import write_atlas

    res = write_atlas(a.model, a.data, a.out, prompts=a.prompts, repeat=a.repeat, split=a.split, steps=a.steps,
                      seed=a.seed, device=a.device, progress=not a.quiet)
    print(f"wrote {len(res['files'])} files to {a.out} (open {a.out}/index.html)")
    if "keymap" in res:
        print("suggested keymap: " + ", ".join(f"{k}→{v}" for k, v in res["keymap"].items()))
        c = res["confusion"]
        print(f"keymap accuracy {c['accuracy']:.3f} (always the most frequent action: {c['majority_accuracy']:.3f}), "
              f"NMI {c['nmi']:.3f} over {c['transitions']} transitions")


def _cmd_ground(a: argparse.Namespace) -> None:
    from genie.grounding import ground, grounding_markdown

    if a.out is not None and Path(a.out).suffix.lower() != ".json":
        raise GenieInputError(f"{a.out}: --out must be a .json file")
    res = ground(a.model, a.data, labels=a.labels, split=a.split, seed=a.seed, ceiling=not a.no_ceiling,
                 device=a.device, progress=not a.quiet, probe_cache=a.probe_cache)
    print(grounding_markdown(res))
    print("latent → real: " + ", ".join(f"{i}→{n}" for i, n in enumerate(res["code_to_action"])))
    print(f"wrote {res['action_map']} (fitted on {res['map_labels']} labelled transitions)")
    if a.out is not None:
        atomic.write_text(Path(a.out), json.dumps(res, indent=2))
        print(f"wrote {a.out}")


def _cmd_quickstart(a: argparse.Namespace) -> None:
    from genie.quickstart import quickstart

    quickstart(a.out, minutes=a.minutes, pretrained=a.pretrained, tiny=a.tiny, episodes=a.episodes, overwrite=a.overwrite,
               device=a.device, videos=a.videos, resolution=a.resolution)


def _cmd_play(a: argparse.Namespace) -> None:
    from genie.play import PLAY_SETTINGS, serve

    settings = sampling_from_args(a, PLAY_SETTINGS)
    serve(a.model, settings=settings, host=a.host, port=a.port, device=a.device, data=a.data, split=a.split,
          keymap=a.keymap, seed=a.seed, idle_timeout=a.idle_timeout, warmup=a.warmup)


# Options several commands share, declared once; a command may give its own default, choices or help.
SHARED_OPTIONS = {
    "--device": dict(default="auto", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N"),  # architecture §5
    "--seed": dict(type=int, default=0, help="same seed → same output"),
    "--steps": dict(type=int, default=25, help="MaskGIT steps per generated frame"),
    # None: the command's SamplingSettings default (genie.sampling; genie play's PLAY_SETTINGS), set in one place
    "--temperature": dict(type=float, default=None, help="MaskGIT sampling temperature, 0 (greedy)..10 (default: 1)"),
    "--split": dict(default=None, choices=list(SPLITS),
                    help="split of --data (default: test, else val, else train; said on stderr)"),
    "--overwrite": dict(action="store_true", help="replace --out if it exists and is not empty"),
    "--quiet": dict(action="store_true", help="no progress bar"),
}


def add_option(q: argparse.ArgumentParser, *names: str, **changes) -> None:
    """Add shared options (SHARED_OPTIONS) to a command's parser, with `changes` to their settings."""
    for name in names:
        q.add_argument(name, **{**SHARED_OPTIONS[name], **changes})


def add_device(q: argparse.ArgumentParser) -> None:
    """`--device auto|cpu|cuda[:N]` (architecture §5) for a command that runs a model."""
    add_option(q, "--device")


def _add_stage_commands(sub) -> None:
    """genie train, tokenize, export: the stages and their exports."""
    t = sub.add_parser("train", help="train a stage with LightningCLI: genie train STAGE --config YAML [overrides]",
                       description="Train one stage (LightningCLI fit). Any LightningCLI option follows, e.g. "
                                   "--trainer.max_steps 100, --data.data DIR, --ckpt_path last, "
                                   "--trainer.devices 2 --trainer.strategy ddp. `genie train tokenizer --help` lists them.",
                       add_help=False)
    t.add_argument("stage", choices=list(STAGES))
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(func=_cmd_train)

    k = sub.add_parser("tokenize", help="pre-tokenise a dataset into uint16 token shards for the dynamics stage")
    k.add_argument("--tokenizer", required=True, help="tokenizer export folder")
    k.add_argument("--lam", default=None, help="LAM export folder: store its latent actions (for the dynamics stage)")
    k.add_argument("--data", required=True, help="video dataset folder")
    k.add_argument("--out", required=True, help="token dataset folder to create")
    k.add_argument("--batch-size", type=int, default=16, help="windows encoded at once")
    k.add_argument("--max-episodes", type=int, default=None, help="tokenise only the first N episodes of each split")
    add_option(k, "--overwrite", "--quiet", "--device")
    k.set_defaults(func=_cmd_tokenize)

    x = sub.add_parser("export", help="export a training checkpoint (.ckpt) as config.json + model.safetensors")
    x.add_argument("stage", choices=list(STAGES))
    x.add_argument("--ckpt", required=True, help="Lightning checkpoint, e.g. runs/tokenizer-cpu/checkpoints/last.ckpt")
    x.add_argument("--out", required=True, help="export folder")
    x.set_defaults(func=_cmd_export)


def _add_world_model_commands(sub) -> None:
    """genie generate and assemble: a world-model folder and what it makes."""
    g = sub.add_parser("generate", help="generate a clip from a prompt frame and latent actions")
    g.add_argument("--model", required=True, help="world-model folder (genie assemble)")
    g.add_argument("--prompt", required=True, help="prompt image (png/jpg) or video (mp4/...)")
    which = g.add_mutually_exclusive_group(required=True)
    which.add_argument("--actions", help="latent action ids, one per generated frame, e.g. 0,3,3,1")
    which.add_argument("--real-actions", metavar="NAMES", help="real actions, one per generated frame, e.g. "
                       "RIGHT,RIGHT,UP: each becomes the latent the LAM's action map (genie ground) gives most often "
                       "for it")
    g.add_argument("--out", required=True, help="output .mp4 or .gif")
    add_option(g, "--steps", help="MaskGIT steps per frame")
    add_option(g, "--temperature", "--seed")
    add_sampling_levers(g)
    g.add_argument("--context", type=int, default=None, help="past frames the dynamics model sees per frame "
                                                             "(default: its whole window)")
    g.add_argument("--window-hop", type=int, default=None, help="frames the full context drops at once (1: Genie's "
                                                             "sliding window; genie play uses 4)")
    g.add_argument("--fps", type=int, default=10)
    g.add_argument("--scale", type=int, default=1, help="integer upscaling of the written frames")
    add_device(g)
    g.set_defaults(func=_cmd_generate)

    m = sub.add_parser("assemble", help="check three stage exports fit together and write one world-model folder")
    m.add_argument("--tokenizer", required=True)
    m.add_argument("--lam", required=True)
    m.add_argument("--dynamics", required=True)
    m.add_argument("--out", required=True)
    add_option(m, "--overwrite")
    m.set_defaults(func=_cmd_assemble)


def _add_measure_commands(sub) -> None:
    """genie evaluate, probe, ground: what the models do, measured."""
    e = sub.add_parser("evaluate", help="evaluate the stages a model folder holds (JSON + markdown table)")
    e.add_argument("--model", required=True, help="world-model folder or a single stage export")
    e.add_argument("--data", required=True, help="dataset folder (held-out levels)")
    e.add_argument("--out", required=True, help="output .json (a .md table is written beside it)")
    add_option(e, "--split")
    e.add_argument("--num-clips", type=int, default=128)
    add_option(e, "--seed", "--steps")
    e.add_argument("--horizon", type=int, default=10, help="rollout length from 1 prompt frame")
    add_option(e, "--temperature")
    add_sampling_levers(e)
    e.add_argument("--margin-clips", type=int, default=32, metavar="N",
                   help="clips that also get the counterfactual action margin (every latent rolled out at every step: "
                        "~10x a clip's other cost; 0 skips it)")
    e.add_argument("--i3d", default=None, metavar="FILE",
                   help="local Kinetics-400 I3D weights (.pt state dict in the pytorch-i3d layout, read weights-only, "
                        "or .safetensors) to compute FVD of the rollouts; never downloaded")
    e.add_argument("--probe-data", default=None, metavar="DIR",
                   help="dataset whose labelled train split trains the supervised inverse-dynamics ceiling scored "
                        "beside the LAM (default: --data; held-out folders often have only a test split)")
    e.add_argument("--probe-cache", default=None, metavar="DIR",
                   help="where trained ceiling models are cached (default: <probe-data>/.genie-cache)")
    e.add_argument("--heads", default=None, metavar="DIR",
                   help="reward and continuation heads (genie heads train) to score on the split's frame pairs, "
                        "tokenised with --model's tokenizer: accuracy and AUC against the base rates")
    add_option(e, "--quiet", "--device")
    e.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("probe", help="what each latent action does: grids, GIFs, confusion matrix, keymap")
    pr.add_argument("--model", required=True,
                    help="world-model folder, or a LAM export (then frames are the LAM decoder's predictions)")
    pr.add_argument("--data", required=True, help="dataset folder")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--prompts", type=int, default=4)
    pr.add_argument("--repeat", type=int, default=4, help="times each action is repeated")
    add_option(pr, "--split", "--steps", "--seed", "--quiet", "--device")
    pr.set_defaults(func=_cmd_probe)

    gr = sub.add_parser("ground", help="fit the latent → real action map (action_map.json) from N labelled transitions")
    gr.add_argument("--model", required=True, help="world-model folder or LAM export; action_map.json is written beside the LAM")
    gr.add_argument("--data", required=True, help="dataset with true actions: its train split fits the map, "
                                                  "its test (else val) split scores it")
    gr.add_argument("--labels", type=int, default=200, help="labelled transitions the written map is fitted on "
                                                            "(Genie §3.3: 200)")
    add_option(gr, "--split", help="held-out split that scores the map (default: test, else val)")
    add_option(gr, "--seed")
    gr.add_argument("--no-ceiling", action="store_true", help="skip the supervised inverse-dynamics ceiling "
                                                             "(minutes the first time for a dataset, then cached)")
    gr.add_argument("--probe-cache", default=None, metavar="DIR", help="where the ceiling model is cached "
                                                                       "(default: <data>/.genie-cache)")
    gr.add_argument("--out", default=None, help="also write the table as JSON")
    add_option(gr, "--quiet", "--device")
    gr.set_defaults(func=_cmd_ground)


def _add_quickstart_command(sub) -> None:
    """genie quickstart: the whole pipeline in one command."""
    q = sub.add_parser("quickstart", help="the whole pipeline on CoinRun or on your own videos (--videos DIR), "
                                          "sized for a 2-core machine")
    q.add_argument("--out", default="quickstart", help="folder for data, runs, model, report, samples")
    q.add_argument("--minutes", type=float, default=30.0, help="total time budget")
    q.add_argument("--pretrained", action="store_true", help="use the committed models in pretrained/ (no training)")
    q.add_argument("--tiny", action="store_true", help="debug presets and a few steps: a smoke run of the pipeline")
    q.add_argument("--episodes", type=int, default=None, help="training episodes to record")
    q.add_argument("--videos", default=None, metavar="DIR",
                   help="train on a folder of your own video files instead of CoinRun (imported with --fit pad; "
                        "held-out files are evaluated)")
    q.add_argument("--resolution", default=None, metavar="N|WxH",
                   help="with --videos: frame size, WIDTHxHEIGHT in multiples of 16 (default: 64 on the long side "
                        "at the videos' aspect, e.g. 48x64 for 160×210 Atari frames)")
    add_option(q, "--overwrite", "--device")
    q.set_defaults(func=_cmd_quickstart)


def _add_play_command(sub) -> None:
    """genie play: the world model in a local web page."""
    pl = sub.add_parser("play", help="play the world model in a local web page: keys → latent actions")
    pl.add_argument("--model", required=True, help="world-model folder (genie assemble); a keymap.json there names the keys")
    pl.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback is reachable "
                                                        "from other machines: a warning is printed)")
    pl.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    add_option(pl, "--steps", default=None, help="MaskGIT steps per frame (default: 8; the page can change it)")
    add_option(pl, "--temperature")
    add_sampling_levers(pl)
    pl.add_argument("--context", type=int, default=None, help="past frames the dynamics model sees per step "
                                                              "(default: its whole window; fewer is faster)")
    pl.add_argument("--window-hop", type=int, default=None, help="frames the full context drops at once, so the "
                                                                 "cache is rebuilt once per that many frames "
                                                                 "(default: 4, or the context if smaller)")
    pl.add_argument("--data", default=None, metavar="DIR", help="dataset folder: a grid of held-out prompt frames")
    add_option(pl, "--split", choices=None, help="split of --data (default: test, else val, else train)")
    pl.add_argument("--keymap", default=None, metavar="FILE", help="keymap.json from `genie probe` (default: the "
                                                                   "LAM's action map from `genie ground`, whose keys "
                                                                   "are real actions, else MODEL/keymap.json)")
    add_option(pl, "--seed", help="each session's sampling seed")
    pl.add_argument("--idle-timeout", type=float, default=600.0, help="seconds before a closed tab's session is freed")
    pl.add_argument("--no-warmup", dest="warmup", action="store_false",
                    help="serve at once, without generating a throw-away frame first (the first key press is slower)")
    add_device(pl)
    pl.set_defaults(func=_cmd_play)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genie", description="Learn an action-controllable world model from unlabeled video (after Genie, Bruce et al. 2024).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_data_commands(sub, add_option)
    _add_stage_commands(sub)
    _add_world_model_commands(sub)
    _add_measure_commands(sub)
    _add_quickstart_command(sub)
    _add_play_command(sub)
    add_agent_commands(sub, add_option)
    add_acting_commands(sub, add_option)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except GenieInputError as e:
        print(f"genie: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:  # torch.OutOfMemoryError (a RuntimeError): a model or batch too big for the device
        if type(e).__name__ != "OutOfMemoryError":
            raise
        print(f"genie: error: out of device memory ({str(e).splitlines()[0][:160]}); use a smaller --batch-size "
              "or --num-clips, or --device cpu", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk anywhere below: one line naming the path (writers leave only hidden temporaries)
        if not atomic.is_disk_full(e):
            raise
        print(f"genie: error: {e.filename or 'output'}: no space left on device; nothing complete was written",
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("genie: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
