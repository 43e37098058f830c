"""Collect LAM lever runs into one table: held-out NMI (overall / horizontal / vertical), dictionary and
few-label linear accuracy, PSNR gap, codes used, CPU minutes — on uniform and held-action held-out levels.

    python benchmarks/lam_levers.py --runs NAME=RUN_DIR ... --evals runs/eval --out benchmarks/results/lam_levers_cpu.json

Each run's evaluations are `EVALS/NAME-uniform.json` and `EVALS/NAME-rep8.json` (genie evaluate of RUN_DIR/export on
data/coinrun-heldout with --probe-data data/coinrun, and on data/coinrun-rep8-heldout with --probe-data
data/coinrun-rep8); its training minutes and validation curve come from RUN_DIR's CSV log.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save  # noqa: E402


def curve(run: Path) -> tuple[list[dict], float | None, int | None]:
    parts = [list(csv.DictReader(f.open())) for f in sorted(run.glob("csv/version_*/metrics.csv"))]
    # Each resumed part (a csv version) counts its minutes from 0 and starts at its checkpoint's step, so it repeats
    # the steps that the part before it ran after that checkpoint: a part counts only up to where the next one starts.
    starts = [min((int(r["step"]) for r in part if r.get("step")), default=0) for part in parts]
    rows, minutes = [], 0.0
    for k, part in enumerate(parts):
        end = starts[k + 1] if k + 1 < len(parts) else float("inf")
        kept = [r for r in part if r.get("step") and int(r["step"]) < end]
        rows += kept
        minutes += max((float(r["train/minutes"]) for r in kept if r.get("train/minutes")), default=0.0)
    steps = [int(r["step"]) for r in rows if r.get("train/minutes")]
    val = [{"step": int(r["step"]), "nmi": round(float(r["val/nmi"]), 4), "psnr_gap": round(float(r["val/psnr_gap"]), 3),
            "perplexity": round(float(r["val/perplexity"]), 2)} for r in rows if r.get("val/nmi")]
    return val, (minutes if steps else None), (max(steps) + 1 if steps else None)


def summary(ev: dict) -> dict:
    lam = ev["lam"]
    c = lam.get("supervised_ceiling") if isinstance(lam.get("supervised_ceiling"), dict) else {}
    few = {r["labels"]: r for r in lam["few_labels"]["rows"]} if isinstance(lam.get("few_labels"), dict) else {}
    out = {"nmi": lam.get("nmi"), "nmi_horizontal": lam.get("nmi_components", {}).get("horizontal"),
           "nmi_vertical": lam.get("nmi_components", {}).get("vertical"), "psnr_gap_db": lam["psnr_gap_db"],
           "codes_used": lam["codes_used"], "code_perplexity": lam["code_perplexity"],
           "ceiling_nmi": c.get("nmi"), "ceiling_nmi_horizontal": c.get("nmi_components", {}).get("horizontal")}
    for n, r in few.items():
        out[f"dictionary_accuracy_{n}"] = r["dictionary_accuracy"]
        out[f"linear_accuracy_{n}"] = r["linear_accuracy"]
        out["majority_accuracy"] = r["majority_accuracy"]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True, help="NAME=RUN_DIR (RUN_DIR may be '-' for an export without a log)")
    ap.add_argument("--evals", default="runs/eval")
    ap.add_argument("--out", default="lam_levers_cpu")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    res = {"note": a.note, "runs": {}}
    lines = ["| run | CPU min | steps | held actions: NMI / horiz / vert | dict. acc 1000 | linear acc 200 / 1000 | "
             "PSNR gap | codes | uniform: NMI / horiz |", "|---|---|---|---|---|---|---|---|---|"]
    for item in a.runs:
        name, run = item.split("=", 1)
        entry = {}
        if run != "-":
            entry["val_curve"], entry["train_minutes"], entry["steps"] = curve(Path(run))
        for kind in ("rep8", "uniform"):
            f = Path(a.evals) / f"{name}-{kind}.json"
            if f.is_file():
                entry[kind] = summary(json.loads(f.read_text()))
        res["runs"][name] = entry
        h, u = entry.get("rep8", {}), entry.get("uniform", {})

        def f3(x):
            return "–" if x is None else f"{x:.3f}"
        lines.append(f"| {name} | {f3(entry.get('train_minutes'))} | {entry.get('steps', '–')} | {f3(h.get('nmi'))} / "
                     f"{f3(h.get('nmi_horizontal'))} / {f3(h.get('nmi_vertical'))} | {f3(h.get('dictionary_accuracy_1000'))} | "
                     f"{f3(h.get('linear_accuracy_200'))} / {f3(h.get('linear_accuracy_1000'))} | {f3(h.get('psnr_gap_db'))} | "
                     f"{h.get('codes_used', '–')} | {f3(u.get('nmi'))} / {f3(u.get('nmi_horizontal'))} |")
    print("\n".join(lines))
    res["table"] = lines
    save(a.out, res)


if __name__ == "__main__":
    main()
