"""The agent commands (`genie agent train|eval|report`, Genie §3.3): parsers and calls only, kept beside the agents
so that genie/cli.py gains one line (`add_commands`), as genie/acting/cli.py does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genie.core import atomic
from genie.core.errors import GenieInputError


def _cmd_agent_train(a: argparse.Namespace) -> None:
    from genie.agents.train import train_agent

    res = train_agent(a.kind, a.data, a.out, model=a.model, labels=a.labels, steps=a.steps, batch=a.batch_size, lr=a.lr,
                      preset=a.preset, seed=a.seed, act=a.act, decode=a.decode, policy_from=a.policy_from,
                      max_episodes=a.max_episodes, device=a.device, overwrite=a.overwrite, progress=not a.quiet,
                      balance=a.balance)
    t = res["training"]
    val = f", held-out accuracy {t['val_accuracy']:.3f} (majority {t['val_majority_accuracy']:.3f})" \
        if "val_accuracy" in t else ""
    print(f"{res['kind']} agent → {res['path']} ({t.get('train_transitions', '?')} transitions{val}; "
          f"CPU s {res['cpu_seconds']})")
    if res["code_to_action"]:
        print(f"map fitted on {res['labels']} labels: " + ", ".join(f"{i}→{n}" for i, n in enumerate(res["code_to_action"])))


def _cmd_agent_eval(a: argparse.Namespace) -> None:
    from genie.agents.evaluate import evaluate_agent

    out = Path(a.out)
    if out.suffix.lower() != ".json":
        raise GenieInputError(f"{out}: --out must be a .json file")
    res = evaluate_agent(a.agent, a.start_level, a.num_levels, seed=a.seed, num_envs=a.num_envs, act=a.act,
                         decode=a.decode, max_steps=a.max_steps, device=a.device, progress=not a.quiet)
    atomic.write_text(out, json.dumps(res, indent=1) + "\n")
    print(f"{a.agent}: success {res['success_rate']:.3f} (95% CI {res['ci95'][0]:.3f}-{res['ci95'][1]:.3f}), "
          f"mean return {res['mean_return']:.2f} over {res['episodes']} levels; wrote {out}")


def _cmd_agent_report(a: argparse.Namespace) -> None:
    from genie.agents.evaluate import plot_success, report_markdown

    evals = []
    for f in a.evals:
        try:
            evals.append(json.loads(Path(f).read_text()))
        except (OSError, ValueError) as e:
            raise GenieInputError(f"{f}: not a readable genie agent eval result ({type(e).__name__})") from None
        if not isinstance(evals[-1], dict) or "success_rate" not in evals[-1]:
            raise GenieInputError(f"{f}: not a genie agent eval result (no success_rate)")
    out = Path(a.out)
    table = report_markdown(evals)
    atomic.write_text(out / "agents.md", table)
    png = plot_success(evals, out / "success_vs_labels.png", decode=a.decode)
    print(table + f"\nwrote {out / 'agents.md'} and {png}")


def add_commands(sub, add_option) -> None:
    """Add `agent train|eval|report` to the `genie` parser's subcommands (`add_option`: genie.cli's)."""
    ag = sub.add_parser("agent", help="agents that learn to play CoinRun from LAM-labelled video (Genie §3.3)")
    asub = ag.add_subparsers(dest="agent_command", required=True, metavar="SUBCOMMAND")
    at = asub.add_parser("train", help="clone a demonstrator's videos: on the LAM's latent actions (+ a map from N "
                                       "labels) or on the true actions")
    at.add_argument("--kind", required=True, choices=["latent", "oracle"],
                    help="latent: cloned on the LAM's labels, played through a map fitted on --labels N true "
                         "actions; oracle: cloned on the true actions")
    at.add_argument("--data", required=True, help="recording of the demonstrator (genie data coinrun --policy search); "
                                                  "its train split is cloned")
    at.add_argument("--model", default=None, help="world-model folder or LAM export whose LAM labels the videos "
                                                  "(needed for --kind latent)")
    at.add_argument("--labels", type=int, default=200, help="labelled transitions the latent agent's map is fitted on")
    at.add_argument("--out", required=True, help="agent folder to write")
    at.add_argument("--steps", type=int, default=4000, help="training steps (0 with --policy-from: only fit the map)")
    at.add_argument("--batch-size", type=int, default=64)
    at.add_argument("--lr", type=float, default=1e-3)
    at.add_argument("--preset", default="cpu", choices=["cpu", "debug"], help="policy CNN size")
    at.add_argument("--balance", type=float, default=0.0,
                    help="class weighting of the cloning loss: weights count^-BALANCE (0 plain, 1 every class equal)")
    at.add_argument("--act", default="sample", choices=["sample", "argmax"],
                    help="how the agent picks from its policy's output when playing")
    at.add_argument("--decode", default="sample", choices=["sample", "argmax"],
                    help="latent → real: sample from the code's real actions in the labels (Genie App. E) or take "
                         "the most frequent")
    at.add_argument("--policy-from", default=None, metavar="DIR",
                    help="reuse this latent agent's policy (same LAM) and only fit the map on --labels N")
    at.add_argument("--max-episodes", type=int, default=None, help="clone only the first N episodes of each split")
    add_option(at, "--seed", "--overwrite", "--quiet", "--device")
    at.set_defaults(func=_cmd_agent_train)

    ae = asub.add_parser("eval", help="play one episode per level in the real game: success rate and mean return "
                                      "with 95%% CIs")
    ae.add_argument("--agent", required=True, help="agent folder (genie agent train), or a baseline: random, held "
                                                   "(held random actions), right-up (always RIGHT+UP), search (the "
                                                   "demonstrator)")
    ae.add_argument("--start-level", type=int, required=True, help="first level seed (held out: never trained on)")
    ae.add_argument("--num-levels", type=int, required=True, help="levels to play, one episode each")
    ae.add_argument("--out", required=True, help="output .json")
    ae.add_argument("--num-envs", type=int, default=16, help="levels played at once")
    ae.add_argument("--max-steps", type=int, default=1000, help="cut an episode (a failure) after this many steps")
    ae.add_argument("--act", default=None, choices=["sample", "argmax"], help="override the agent's choice rule")
    ae.add_argument("--decode", default=None, choices=["sample", "argmax"], help="override a latent agent's decode")
    add_option(ae, "--seed", help="seeds the environments and the agent's sampling")
    add_option(ae, "--quiet", "--device")
    ae.set_defaults(func=_cmd_agent_eval)

    ar = asub.add_parser("report", help="the table and the success-against-labels PNG (Genie Fig. 15) of eval results")
    ar.add_argument("--evals", required=True, nargs="+", help="genie agent eval .json files")
    ar.add_argument("--out", required=True, help="folder for agents.md and success_vs_labels.png")
    ar.add_argument("--decode", default=None, choices=["sample", "argmax"],
                    help="which latent decode to plot when both were evaluated")
    ar.set_defaults(func=_cmd_agent_report)
