"""Do the training-speed levers leave the loss curve alone? Reads benchmarks/results/loss_curves_<stage>.json.

    python benchmarks/loss_curves.py [--stages tokenizer lam dynamics] [--name loss_curves]

Those files come from `benchmarks/ab_steps.py --stage S --side before=OLD --side before_seed1=OLD,seed=1
--side after=. [--side after_compiled=.,compile] --steps 198 --warmup 2 --distinct 200 --name loss_curves_S`:
every side trains from the same batches (batch i at step i), so the losses differ only by the code and the seed.
Checks, per side against `before` (the code before, seed 0):
- first step: relative difference of the first loss <= 1e-4;
- curve: the mean over the 200 steps of |loss - before's loss| is no larger than the same for `before_seed1`
  (the spread two eager runs with different seeds make), and the 20-step means of the curve stay between those
  of the two seeds, widened by the seeds' own difference.
Writes benchmarks/results/<name>.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def windows(x: list[float], size: int = 20) -> list[float]:
    return [statistics.mean(x[i:i + size]) for i in range(0, len(x) - size + 1, size)]


def check(losses: dict[str, list[float]]) -> dict:
    ref, seed = losses["before"], losses["before_seed1"]
    spread = statistics.mean(abs(a - b) for a, b in zip(seed, ref))
    wr, ws = windows(ref), windows(seed)
    out = {"steps": len(ref), "seed_spread_mean_abs": spread, "sides": {}}
    for label, curve in losses.items():
        if label in ("before", "before_seed1"):
            continue
        diff = statistics.mean(abs(a - b) for a, b in zip(curve, ref))
        wc = windows(curve)
        inside = all(min(r, s) - abs(r - s) <= c <= max(r, s) + abs(r - s) for c, r, s in zip(wc, wr, ws))
        first = abs(curve[0] - ref[0]) / abs(ref[0])
        out["sides"][label] = {"first_step_rel_diff": first, "first_step_ok": first <= 1e-4, "mean_abs_diff": diff,
                               "max_abs_diff": max(abs(a - b) for a, b in zip(curve, ref)),
                               "within_seed_spread": diff <= spread and inside, "window_means": wc}
    out["window_means"] = {"before": wr, "before_seed1": ws}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", nargs="+", default=["tokenizer", "lam", "dynamics"])
    ap.add_argument("--name", default="loss_curves")
    a = ap.parse_args()
    lines = ["# Loss curves: the code before vs after the speed levers (same batches, 200 steps)", "",
             "`python benchmarks/loss_curves.py`; data from `benchmarks/ab_steps.py ... --name loss_curves_<stage>` "
             "(1 thread, the sides interleaved step by step).", "",
             "| stage | side | first-step loss rel. diff | mean abs diff vs before | seed spread (seed 1 vs 0) | "
             "max abs diff | within the seed spread |", "|---|---|---|---|---|---|---|"]
    for stage in a.stages:
        path = RESULTS / f"loss_curves_{stage}.json"
        if not path.is_file():
            continue
        r = check(json.loads(path.read_text())["losses"])
        for label, s in r["sides"].items():
            lines.append(f"| {stage} | {label} | {s['first_step_rel_diff']:.1e} ({'ok' if s['first_step_ok'] else 'FAIL'}) "
                         f"| {s['mean_abs_diff']:.2e} | {r['seed_spread_mean_abs']:.2e} | {s['max_abs_diff']:.2e} "
                         f"| {'yes' if s['within_seed_spread'] else 'NO'} |")
        lines.append(f"| {stage} | 20-step means | before {', '.join(f'{x:.4f}' for x in r['window_means']['before'])}; "
                     f"seed 1 {', '.join(f'{x:.4f}' for x in r['window_means']['before_seed1'])} | | | | | |")
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{a.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
