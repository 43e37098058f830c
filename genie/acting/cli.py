"""The acting commands (`genie heads train`, `genie plan`, `genie dream`): parsers and calls only, kept here so that
genie/cli.py gains one line (`add_commands`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genie.core import atomic
from genie.core.errors import GenieInputError


def _json_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".json":
        raise GenieInputError(f"{out}: --out must be a .json file")
    return out


def _cmd_heads_train(a: argparse.Namespace) -> None:
    from genie.acting.heads import train_heads

    res = train_heads(a.model, a.data, a.out, steps=a.steps, batch=a.batch_size, lr=a.lr, max_episodes=a.max_episodes,
                      windows=a.windows, seed=a.seed, device=a.device, overwrite=a.overwrite, progress=not a.quiet)
    for name, m in res["held_out"].items():
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        print(f"{name}: held-out accuracy {m['accuracy']:.3f} (majority {m['majority_accuracy']:.3f}), AUC {auc}, "
              f"{m['positives']} positives of {m['examples']}")
    print(f"heads → {res['path']} (CPU s {res['cpu_seconds']})")


def _cmd_plan(a: argparse.Namespace) -> None:
    from genie.acting.plan import PlanSettings, evaluate_planner

    out = _json_out(a.out)
    settings = PlanSettings(horizon=a.horizon, replan=a.replan, maskgit_steps=a.maskgit_steps,
                            temperature=a.temperature, context=a.context, discount=a.discount,
                            death_penalty=a.death_penalty, decode=a.decode)
    res = evaluate_planner(a.model, a.heads, a.start_level, a.num_levels, settings, action_map=a.action_map,
                           seed=a.seed, num_envs=a.num_envs, max_steps=a.max_steps, device=a.device,
                           progress=not a.quiet)
    atomic.write_text(out, json.dumps(res, indent=1) + "\n")
    print(f"planner: success {res['success_rate']:.3f} (95% CI {res['ci95'][0]:.3f}-{res['ci95'][1]:.3f}), mean return "
          f"{res['mean_return']:.2f} over {res['episodes']} levels, {res['decisions_per_s']:.2f} decisions/s; wrote {out}")


def _cmd_dream(a: argparse.Namespace) -> None:
    from genie.acting.dream import DreamSettings, train_in_dream

    out = _json_out(a.out)
    settings = DreamSettings(steps=a.dream_steps, starts=a.starts, popsize=a.popsize, generations=a.generations,
                             sigma=a.sigma, maskgit_steps=a.maskgit_steps, temperature=a.temperature)
    res = train_in_dream(a.model, a.heads, a.data, a.start_level, a.num_levels, settings, action_map=a.action_map,
                         decode=a.decode, seed=a.seed, num_envs=a.num_envs, max_steps=a.max_steps, device=a.device,
                         progress=not a.quiet)
    atomic.write_text(out, json.dumps(res, indent=1) + "\n")
    print(f"dream return {res['dream_return_held_out_starts']:.3f} (random latent actions "
          f"{res['dream_return_random_actions']:.3f}) over {settings.steps} dream steps; real: success "
          f"{res['success_rate']:.3f} (95% CI {res['ci95'][0]:.3f}-{res['ci95'][1]:.3f}), mean return "
          f"{res['mean_return']:.2f} ({res['real_return_within_dream_steps']:.2f} within {settings.steps} steps); wrote {out}")


def _acting_model(q: argparse.ArgumentParser) -> None:
    q.add_argument("--model", required=True, help="world-model folder (genie assemble)")
    q.add_argument("--heads", required=True, help="heads folder (genie heads train)")
    q.add_argument("--action-map", default=None, help="latent → real map .json (default: action_map.json beside the "
                                                      "model's LAM, written by genie ground)")
    q.add_argument("--start-level", type=int, required=True, help="first level seed (held out: never trained on)")
    q.add_argument("--num-levels", type=int, required=True, help="levels to play in the real game, one episode each")
    q.add_argument("--out", required=True, help="output .json")
    q.add_argument("--num-envs", type=int, default=4, help="levels played at once")
    q.add_argument("--max-steps", type=int, default=1000, help="cut an episode (a failure) after this many steps")
    q.add_argument("--maskgit-steps", type=int, default=2, help="MaskGIT steps per imagined frame")
    q.add_argument("--decode", default="argmax", choices=["argmax", "sample"],
                   help="latent code → real action: the map's most frequent action, or a draw from its labels")


def add_commands(sub, add_option) -> None:
    """Add `heads`, `plan` and `dream` to the `genie` parser's subcommands (`add_option`: genie.cli's)."""
    hd = sub.add_parser("heads", help="reward and continuation heads on frame tokens (for genie plan and genie dream)")
    hsub = hd.add_subparsers(dest="heads_command", required=True, metavar="SUBCOMMAND")
    ht = hsub.add_parser("train", help="train the heads on recordings' rewards and episode ends; held-out accuracy "
                                       "and AUC against the base rates")
    ht.add_argument("--model", required=True, help="world-model folder (its tokenizer) or a tokenizer export")
    ht.add_argument("--data", required=True, nargs="+", help="CoinRun recording(s) with train and val/test splits")
    ht.add_argument("--out", required=True, help="heads folder to write")
    ht.add_argument("--steps", type=int, default=1500, help="training steps")
    ht.add_argument("--batch-size", type=int, default=64)
    ht.add_argument("--lr", type=float, default=3e-3)
    ht.add_argument("--max-episodes", type=int, default=300, help="episodes tokenised per split and recording")
    ht.add_argument("--windows", type=int, default=2, help="windows per episode: its last, and random earlier ones")
    add_option(ht, "--seed", "--overwrite", "--quiet", "--device")
    ht.set_defaults(func=_cmd_heads_train)

    pl = sub.add_parser("plan", help="receding-horizon planning over latent actions in the world model, played in "
                                     "the real CoinRun: success rate with its 95%% CI, decisions/s")
    _acting_model(pl)
    pl.add_argument("--horizon", type=int, default=2, help="H: all a^H latent-action sequences are imagined (1..4)")
    pl.add_argument("--replan", type=int, default=1, help="real steps played from each plan (1..H)")
    pl.add_argument("--context", type=int, default=2, help="real frames in each prompt")
    pl.add_argument("--temperature", type=float, default=0.0, help="imagined frames' sampling temperature (0: greedy)")
    pl.add_argument("--discount", type=float, default=0.95)
    pl.add_argument("--death-penalty", type=float, default=1.0, help="weight of an end without the coin")
    add_option(pl, "--seed", "--quiet", "--device")
    pl.set_defaults(func=_cmd_plan)

    dr = sub.add_parser("dream", help="train a linear controller by CMA-ES in the world model alone, then play it in "
                                      "the real CoinRun: dream return against real return")
    _acting_model(dr)
    dr.add_argument("--data", required=True, help="recording whose episodes' first frames start the dreams")
    dr.add_argument("--dream-steps", type=int, default=8, help="frames per dream")
    dr.add_argument("--starts", type=int, default=4, help="start frames per candidate evaluation")
    dr.add_argument("--popsize", type=int, default=8, help="CMA-ES population")
    dr.add_argument("--generations", type=int, default=6, help="CMA-ES generations")
    dr.add_argument("--sigma", type=float, default=0.5, help="CMA-ES initial step size")
    dr.add_argument("--temperature", type=float, default=1.0, help="dream frames' sampling temperature")
    add_option(dr, "--seed", "--quiet", "--device")
    dr.set_defaults(func=_cmd_dream)
