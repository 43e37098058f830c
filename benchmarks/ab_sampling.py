"""Interleaved A/B of cached sampling speed: two code trees in one process, alternating rollouts.

    python benchmarks/ab_sampling.py [--side before=/tmp/genie-before --side after=.] [--steps 8] [--context 4 15]
        [--frames 3] [--repeats 5] [--name NAME]

The dynamics `cpu` preset, randomly initialised with the same seed in each tree, generates `--frames` frames (batch
1, tokens only) after a random context with `genie.sampling.rollout_tokens` of its own tree, as
benchmarks/sampling_speed.py does; the sides take turns, so load on a shared machine hits both alike. Reports
the median frames/s per side and context, and whether the sides sampled the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.ab_steps import ROOT, active, load_tree, parse_side  # noqa: E402
from benchmarks.common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", action="append", default=None, help="LABEL=TREE; repeat (default: before and after)")
    ap.add_argument("--steps", type=int, default=8, help="MaskGIT steps per frame")
    ap.add_argument("--context", type=int, nargs="+", default=[4, 15])
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sides = []
    for spec in (parse_side(x) for x in (a.side or ["before=/tmp/genie-before", f"after={ROOT}"])):
        tree = load_tree(Path(spec["tree"]).resolve(), extra=("genie.sampling",))
        with active(tree):
            cfg = tree["dynamics.config"].DynamicsConfig.preset("cpu")
            torch.manual_seed(0)
            model = tree["dynamics.model"].DynamicsModel(cfg).eval()
        sides.append((spec["label"], tree, model, tree["genie.sampling"].rollout_tokens))
    rows = []
    for ctx in a.context:
        frames = min(a.frames, cfg.num_frames - ctx) or 1
        g = torch.Generator().manual_seed(ctx)
        prompt = torch.randint(0, cfg.vocab_size, (1, ctx, *cfg.grid), generator=g)
        prompt_actions = torch.randint(0, cfg.num_actions, (1, ctx - 1), generator=g) if ctx > 1 else None
        actions = torch.randint(0, cfg.num_actions, (1, frames), generator=g)
        times: dict[str, list[float]] = {label: [] for label, *_ in sides}
        tokens = {}
        for r in range(a.repeats + 1):
            for label, tree, model, rollout in (sides if r % 2 else sides[::-1]):
                with active(tree), torch.no_grad():
                    t = time.perf_counter()
                    out = rollout(model, prompt, actions, steps=a.steps, generator=torch.Generator().manual_seed(0),
                                  use_cache=True, prompt_actions=prompt_actions)
                    dt = time.perf_counter() - t
                if r:  # the first round warms up
                    times[label].append(dt)
                tokens[label] = out
        ref = sides[0][0]
        row = {"context": ctx, "frames": frames, "steps": a.steps, "load": os.getloadavg()[0],
               "frames_per_s": {k: frames / statistics.median(v) for k, v in times.items()},
               "same_tokens_as_first": {k: bool(torch.equal(v, tokens[ref])) for k, v in tokens.items()}}
        row["speedup_over_first"] = {k: v / row["frames_per_s"][ref] for k, v in row["frames_per_s"].items()}
        rows.append(row)
        print(f"context {ctx}: " + ", ".join(f"{k} {v:.2f} frames/s (x{row['speedup_over_first'][k]:.2f}, same tokens: "
                                             f"{row['same_tokens_as_first'][k]})" for k, v in row["frames_per_s"].items())
              + f"; load {row['load']:.2f}", flush=True)
    if a.name:
        save(a.name, {"settings": {**vars(a), "threads": torch.get_num_threads()}, "rows": rows})


if __name__ == "__main__":
    main()
