"""Dynamics levers for stable rollouts (issue 24 item 2): score each lever run's world model on held-out levels and
collect the runs into one table. `benchmarks/dynamics_levers.sh` trains and scores every lever in turn.

    # score: the committed tokenizer + LAM with a run's dynamics export, at one guidance weight
    python benchmarks/dynamics_levers.py score --name NAME --run RUN_DIR [--guidance W] --out-dir EVALS
    # collect: one row per scored NAME (training minutes and validation accuracy from the run's CSV log)
    python benchmarks/dynamics_levers.py table --evals EVALS --out dynamics_levers_cpu

`score` runs the world-model part of `genie evaluate` (`genie.evaluate.evaluate_world_model`, the same figures:
rollout mean, copy-last, agent-box PSNR per step, ΔtPSNR, the action margin) without re-scoring the tokenizer and
the LAM, which are the same for every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def curve(run: Path) -> dict:
    rows = [r for f in sorted(run.glob("csv/version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    minutes = [float(r["train/minutes"]) for r in rows if r.get("train/minutes")]
    steps = [int(r["step"]) for r in rows if r.get("train/minutes")]
    val = [{"step": int(r["step"]), "val_loss": round(float(r["val/loss"]), 4),
            "next_frame_accuracy": round(float(r["val/next_frame_accuracy"]), 4),
            "copy_last_accuracy": round(float(r["val/copy_last_accuracy"]), 4)}
           for r in rows if r.get("val/next_frame_accuracy")]
    # the export's own step count: the CSV holds only every log_every_n_steps-th step
    info = run / "export" / "genie_export.json"
    trained = json.loads(info.read_text()).get("global_step") if info.is_file() else None
    return {"train_minutes": max(minutes) if minutes else None,
            "steps": trained if trained is not None else (max(steps) + 1 if steps else None), "val": val}


def score(a: argparse.Namespace) -> None:
    import torch

    from genie.evaluate import evaluate_world_model
    from genie.export import load_export
    from genie.sampling import SamplingSettings
    from genie.world_model import WorldModel

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    run = Path(a.run)
    wm = WorldModel(load_export(ROOT / "pretrained/tokenizer", "tokenizer"), load_export(ROOT / "pretrained/lam", "lam"),
                    load_export(run / "export", "dynamics"))
    settings = SamplingSettings(steps=a.steps, temperature=a.temperature, top_k=a.top_k, guidance=a.guidance)
    t0, c0, load0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_utime, os.getloadavg()
    res, _ = evaluate_world_model(wm, a.data, "test", a.num_clips, a.seed, settings=settings,
                                  margin_clips=a.margin_clips)
    out = {"name": a.name, "run": str(run), "dynamics_config": wm.dynamics.config.to_dict(),
           "settings": {"steps": a.steps, "temperature": a.temperature, "top_k": a.top_k, "guidance": a.guidance},
           "data": a.data, "seed": a.seed, "eval_wall_s": round(time.perf_counter() - t0, 1),
           "eval_cpu_s": round(resource.getrusage(resource.RUSAGE_SELF).ru_utime - c0, 1),
           "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
           "training": curve(run), "world_model": res.to_dict()}
    Path(a.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(a.out_dir) / f"{a.name}.json").write_text(json.dumps(out, indent=2))
    print(f"{a.name}: rollout {res.rollout_mean_psnr_db:.2f} dB, copy-last {res.copy_last_frame_mean_psnr_db:.2f} dB "
          f"({out['eval_wall_s']} s)")


def row(ev: dict) -> dict:
    wm = ev["world_model"]
    box = {kind: wm.get(f"agent_box_{kind}_psnr_db") for kind in ("rollout", "copy_last")}
    val = ev["training"]["val"][-1] if ev["training"]["val"] else {}
    r = {"lever": ev["name"], "guidance": ev["settings"]["guidance"], "top_k": ev["settings"]["top_k"],
         "temperature": ev["settings"]["temperature"], "steps_trained": ev["training"]["steps"],
         "train_minutes": ev["training"]["train_minutes"],
         "val_next_frame_accuracy": val.get("next_frame_accuracy"), "val_copy_last_accuracy": val.get("copy_last_accuracy"),
         "rollout_mean_db": wm["rollout_mean_psnr_db"], "copy_last_mean_db": wm["copy_last_frame_mean_psnr_db"],
         "rollout_minus_copy_last_db": wm["mean_psnr_minus_copy_last_db"],
         "delta_t_psnr_db": wm.get(f"delta_t_psnr_t{min(4, wm['horizon'])}_db"),
         "action_margin_mean_db": wm.get("action_margin_mean_db")}
    for k in (5, 10):
        for kind in ("rollout", "copy_last"):
            steps = box.get(kind)
            r[f"agent_box_{kind}_step{k}_db"] = steps[k - 1] if steps and len(steps) >= k else None
    return r


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, dict):  # an interval
        return f"{x['mean']:+.{digits}f} [{x['ci95'][0]:+.{digits}f}, {x['ci95'][1]:+.{digits}f}]"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def table(a: argparse.Namespace) -> None:
    evals = [json.loads(p.read_text()) for p in sorted(Path(a.evals).glob("*.json"))]
    order = {n: i for i, n in enumerate(a.order)} if a.order else {}
    evals.sort(key=lambda e: order.get(e["name"], len(order)))
    rows = [row(e) for e in evals]
    first = evals[0]
    result = {"benchmark": "dynamics levers for stable rollouts (issue 24 item 2), CPU",
              "notes": a.notes, "data": first["data"], "clips": first["world_model"]["clips"],
              "sampling": {k: v for k, v in first["settings"].items() if k not in ("guidance", "top_k", "temperature")},
              "rows": rows, "runs": evals}
    save(a.out, result)
    cols = [("lever", "lever"), ("guidance", "w"), ("top_k", "top-k"), ("temperature", "T"), ("steps_trained", "steps"), ("train_minutes", "wall min (last log)"),
            ("val_next_frame_accuracy", "val next-frame acc (copy-last)"), ("rollout_mean_db", "rollout mean dB"),
            ("copy_last_mean_db", "copy-last dB"), ("rollout_minus_copy_last_db", "rollout − copy-last dB [95% CI]"),
            ("agent_box_rollout_step5_db", "box@5 dB (copy-last)"), ("agent_box_rollout_step10_db", "box@10 dB (copy-last)"),
            ("delta_t_psnr_db", "ΔtPSNR dB"), ("action_margin_mean_db", "margin dB")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for k, _ in cols:
            if k == "val_next_frame_accuracy":
                cells.append(f"{fmt(r[k], 3)} ({fmt(r['val_copy_last_accuracy'], 3)})")
            elif k.startswith("agent_box_rollout"):
                cells.append(f"{fmt(r[k])} ({fmt(r[k.replace('rollout', 'copy_last')])})")
            elif k in ("train_minutes",):
                cells.append(fmt(r[k], 1))
            else:
                cells.append(fmt(r[k]))
        lines.append("| " + " | ".join(cells) + " |")
    md = (f"# Dynamics levers on CPU (issue 24 item 2)\n\n{a.notes}\n\n" + "\n".join(lines) + "\n")
    (Path(__file__).resolve().parent / "results" / f"{a.out}.md").write_text(md)
    print(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score")
    s.add_argument("--name", required=True)
    s.add_argument("--run", required=True, help="a `genie train dynamics` root dir (with export/ and csv/)")
    s.add_argument("--data", default="data/coinrun-heldout")
    s.add_argument("--num-clips", type=int, default=48)
    s.add_argument("--margin-clips", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps", type=int, default=8)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--guidance", type=float, default=0.0)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=score)
    t = sub.add_parser("table")
    t.add_argument("--evals", required=True)
    t.add_argument("--out", default="dynamics_levers_cpu")
    t.add_argument("--order", nargs="*", default=None)
    t.add_argument("--notes", default="")
    t.set_defaults(func=table)
    a = ap.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
