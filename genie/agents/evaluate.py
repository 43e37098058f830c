"""Agents in the real game: one episode per held-out level, success rate and return with 95% intervals, and the
success-against-labels figure (Genie Fig. 15).

Success is Genie's "% of levels solved": the episode ends with the coin reached (a positive reward). Its interval
is Wilson's (exact enough at 0 or 1, where the normal one collapses); the mean return's is the normal one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from data_pipelines.coinrun import LevelEnv
from genie.agents.agent import BASELINES, CHOICES, ClonedPolicy, baseline_policy, load_agent
from genie.agents.loop import play
from genie.core.atomic import atomic_file
from genie.core.device import generator_for, resolve_device
from genie.core.errors import GenieInputError

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no rounding past the estimate
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float]:
    """Normal interval of a mean: mean ± z·sd/√n."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else 0.0,) * 2
    half = z * v.std(ddof=1) / math.sqrt(len(v))
    return (float(v.mean() - half), float(v.mean() + half))


def evaluate_agent(agent: str | Path, start_level: int, num_levels: int, seed: int = 0, num_envs: int = 16,
                   act: str | None = None, decode: str | None = None, max_steps: int = 1000, device: str = "auto",
                   progress: bool = True) -> dict:
    """Play one episode of each level start_level .. start_level + num_levels - 1 with `agent` (an agent folder, or
    a baseline: BASELINES) and score it."""
    from tqdm.auto import tqdm

    if num_levels < 1 or start_level < 0:
        raise GenieInputError("--num-levels must be >= 1 and --start-level >= 0")
    if num_envs < 1 or max_steps < 1:
        raise GenieInputError("--num-envs and --max-steps must be >= 1")
    for flag, v in (("--act", act), ("--decode", decode)):
        if v is not None and v not in CHOICES:
            raise GenieInputError(f"{flag} must be one of {', '.join(CHOICES)}, got {v!r}")
    dev = resolve_device(device)
    name = str(agent)
    levels = list(range(start_level, start_level + num_levels))
    info: dict = {"agent": name}
    loaded = None
    if name in BASELINES and not Path(name).is_dir():
        info.update(kind=name, description=BASELINES[name])
    else:
        loaded = load_agent(agent, dev)
        trained = loaded.config.get("recipe", {}).get("train_levels")
        if trained and start_level < trained[1] and trained[0] < start_level + num_levels:
            raise GenieInputError(f"levels {start_level}..{start_level + num_levels - 1} overlap the levels {agent} was "
                                  f"trained on ({trained[0]}..{trained[1] - 1}); evaluate on held-out levels")
        info.update(kind=loaded.kind, labels=loaded.labels, act=act or loaded.act,
                    decode=(decode or loaded.decode) if loaded.kind == "latent" else None)
    env = LevelEnv(levels, num_envs=num_envs, seed=seed, max_steps=max_steps)
    policy: Callable = ClonedPolicy(loaded, act, decode) if loaded is not None else baseline_policy(name, env, seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bar = tqdm(total=num_levels, desc=f"playing {Path(name).name}", unit="level", disable=not progress,
               dynamic_ncols=True)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        results = play(policy, env, generator_for(dev, seed), progress=bar.update)
    finally:
        bar.close()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    results.sort(key=lambda r: r["level"])
    wins = sum(r["success"] for r in results)
    returns = np.array([r["return"] for r in results])
    steps = sum(r["steps"] for r in results)
    lo, hi = wilson_interval(wins, len(results))
    rlo, rhi = mean_interval(returns)
    return {**info, "levels": [start_level, start_level + num_levels], "episodes": len(results), "successes": wins,
            "success_rate": wins / len(results), "ci95": [lo, hi], "mean_return": float(returns.mean()),
            "return_ci95": [rlo, rhi], "mean_steps": steps / len(results), "seed": seed, "max_steps": max_steps,
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "frames_per_s": round(steps / seconds, 1),
            "per_level": [[r["level"], int(r["success"]), r["return"], r["steps"]] for r in results]}


# ---- the table and Genie Fig. 15 ----------------------------------------------------------------------------

def _label(r: dict) -> str:
    if r["kind"] == "latent":
        return f"latent BC, N = {r['labels']}" + (f" ({r['decode']} decode)" if r.get("decode") else "")
    if r["kind"] == "oracle":
        return "oracle BC (true actions" + (f", {r['act']} act" if r.get("act") else "") + ")"
    return {"random": "random (uniform)", "held": "random (held actions)", "right-up": "always RIGHT+UP",
            "right": "always RIGHT", "search": "demonstrator (search)",
            "search-right": "demonstrator (search-right)"}.get(r["kind"], r["kind"])


def paired_difference(a: dict, b: dict, z: float = Z95) -> tuple[float, float, float] | None:
    """Success of `a` minus success of `b` on the levels both played (each level once), with the normal 95% interval
    of the mean paired difference: the agents share their levels, so the paired interval is narrower than the two
    Wilson intervals side by side. None when they share no level."""
    sa = {lv: s for lv, s, *_ in a.get("per_level", [])}
    sb = {lv: s for lv, s, *_ in b.get("per_level", [])}
    common = sorted(set(sa) & set(sb))
    if not common:
        return None
    d = np.array([sa[lv] - sb[lv] for lv in common], np.float64)
    lo, hi = mean_interval(d, z)
    return float(d.mean()), lo, hi


def _ordered(evals: list[dict]) -> list[dict]:
    order = {"random": 0, "held": 1, "right": 2, "right-up": 3, "search": 4, "search-right": 5, "oracle": 6,
             "latent": 7}
    return sorted(evals, key=lambda r: (order.get(r["kind"], 9), r.get("labels") or 0, r.get("act") or "",
                                        r.get("decode") or ""))


def report_markdown(evals: list[dict]) -> str:
    """One row per evaluation: success with its interval, mean return with its interval, episodes, time; with an
    always-RIGHT+UP evaluation among them, each agent's paired success difference from it (the constant policy that
    tells whether a cloned agent does anything that depends on what it sees); then the issue's bar (bar_markdown)."""
    base = next((r for r in evals if r["kind"] == "right-up"), None)
    head = "| agent | success (95% CI) | mean return (95% CI) |"
    head += " Δ success vs always RIGHT+UP (paired 95% CI) |" if base is not None else ""
    rows = [head + " episodes | levels | CPU s |", "|---" * (head.count("|") + 2) + "|"]
    for r in _ordered(evals):
        row = (f"| {_label(r)} | {r['success_rate']:.3f} ({r['ci95'][0]:.3f}–{r['ci95'][1]:.3f}) | "
               f"{r['mean_return']:.2f} ({r['return_ci95'][0]:.2f}–{r['return_ci95'][1]:.2f}) |")
        if base is not None:
            diff = None if r is base else paired_difference(r, base)
            row += " – |" if diff is None else f" {diff[0]:+.3f} ({diff[1]:+.3f} to {diff[2]:+.3f}) |"
        rows.append(row + f" {r['episodes']} | {r['levels'][0]}–{r['levels'][1] - 1} | {r['cpu_seconds']:.0f} |")
    return "\n".join(rows) + "\n" + bar_markdown(evals)


def bar_markdown(evals: list[dict], labels: int = 200) -> str:
    """Issue 25's bar, from the evaluations present: oracle BC's interval above random's success, and the share of
    oracle BC's success gain over random that latent BC at N = `labels` recovers (bar: >= 0.8), for every oracle
    and latent evaluation (act/decode rules); the same share over always-RIGHT+UP where it was evaluated."""
    rand = next((r for r in evals if r["kind"] == "random"), None)
    base = next((r for r in evals if r["kind"] == "right-up"), None)
    oracles = _ordered([r for r in evals if r["kind"] == "oracle"])
    latents = _ordered([r for r in evals if r["kind"] == "latent" and r.get("labels") == labels])
    if rand is None or not oracles:
        return ""
    lines = ["", f"Bar (issue 25): oracle BC's 95% CI above random's success ({rand['success_rate']:.3f}); latent BC "
                 f"at N = {labels} recovers >= 0.8 of oracle BC's success gain over random.", ""]
    for o in oracles:
        above = o["ci95"][0] > rand["success_rate"]
        lines.append(f"- {_label(o)}: CI {o['ci95'][0]:.3f}–{o['ci95'][1]:.3f} {'above' if above else 'NOT above'} "
                     f"random's {rand['success_rate']:.3f} (random's CI {rand['ci95'][0]:.3f}–{rand['ci95'][1]:.3f})")
    for o in oracles:
        for lat in latents:
            share = recovered_share(lat, o, rand)
            text = f"- {_label(lat)} vs {_label(o)}: recovers {_fmt_share(share)} of the gain over random " + \
                ("(bar met)" if share is not None and share >= 0.8 else "(bar NOT met)")
            if base is not None:
                text += f"; {_fmt_share(recovered_share(lat, o, base))} of the gain over always RIGHT+UP"
            lines.append(text)
    return "\n".join(lines) + "\n"


def recovered_share(agent: dict, oracle: dict, baseline: dict) -> float | None:
    """(agent - baseline) / (oracle - baseline) in success rate; None when oracle does not beat the baseline."""
    gain = oracle["success_rate"] - baseline["success_rate"]
    return None if gain <= 0 else (agent["success_rate"] - baseline["success_rate"]) / gain


def _fmt_share(share: float | None) -> str:
    return "n/a (oracle BC does not beat it)" if share is None else f"{share:.3f}"


def plot_success(evals: list[dict], path: str | Path, decode: str | None = None) -> Path:
    """A PNG like Genie Fig. 15: latent BC's success against the number of labelled transitions N (log axis), with
    95% intervals, beside horizontal bands for random play, the demonstrator and oracle BC. Drawn with Pillow (no
    plotting library needed). `decode`: which latent decode to draw when both were evaluated."""
    from PIL import Image, ImageDraw, ImageFont

    latent = sorted((r for r in evals if r["kind"] == "latent" and (decode is None or r.get("decode") == decode)),
                    key=lambda r: r["labels"])
    if not latent:
        raise GenieInputError("no latent-BC evaluation to plot")
    W, H, left, right, top, bottom = 800, 470, 80, 260, 50, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    ns = [r["labels"] for r in latent]
    lo_n, hi_n = math.log10(min(ns)) - 0.15, math.log10(max(ns)) + 0.15

    def X(n: float) -> float:
        return left + (math.log10(n) - lo_n) / (hi_n - lo_n) * (W - left - right)

    def Y(p: float) -> float:
        return top + (1 - p) * (H - top - bottom)

    for p in np.linspace(0, 1, 6):  # grid and y ticks
        d.line([(left, Y(p)), (W - right, Y(p))], fill=(230, 230, 230))
        d.text((left - 8, Y(p)), f"{p:.1f}", fill="black", font=small, anchor="rm")
    for n in ns:
        d.line([(X(n), H - bottom), (X(n), H - bottom + 5)], fill="black")
        d.text((X(n), H - bottom + 8), str(n), fill="black", font=small, anchor="mt")
    d.rectangle([left, top, W - right, H - bottom], outline="black")
    d.text(((left + W - right) / 2, H - 22), "labelled transitions N (log scale)", fill="black", font=font, anchor="mm")
    d.text((8, (top + H - bottom) / 2), "success", fill="black", font=font, anchor="lm")
    d.text(((left + W - right) / 2, 22), "CoinRun, held-out levels: success against N (after Genie Fig. 15)",
           fill="black", font=font, anchor="mm")

    legend = []
    bands = {"search": (46, 160, 67), "search-right": (46, 160, 67), "oracle": (31, 119, 180),
             "right-up": (148, 103, 189), "right": (214, 39, 40), "held": (150, 150, 150), "random": (90, 90, 90)}
    act = latent[0].get("act")
    for kind, colour in bands.items():
        same = [e for e in evals if e["kind"] == kind]  # oracle BC: the one that acts as the latent agents do
        r = next((e for e in same if e.get("act") == act), same[0] if same else None)
        if r is None:
            continue
        lo, hi = r["ci95"]
        band = Image.new("RGBA", img.size, (0, 0, 0, 0))
        ImageDraw.Draw(band).rectangle([left + 1, Y(hi), W - right - 1, Y(lo)], fill=(*colour, 40))
        img.paste(Image.alpha_composite(img.convert("RGBA"), band).convert("RGB"))
        d = ImageDraw.Draw(img)
        y = Y(r["success_rate"])
        for x in range(left, W - right, 12):  # dashed
            d.line([(x, y), (min(x + 7, W - right), y)], fill=colour, width=2)
        name = f"oracle BC ({r['act']} act)" if kind == "oracle" and r.get("act") else _label(r)
        legend.append((colour, f"{name}: {r['success_rate']:.3f}", True))
    orange = (230, 120, 20)
    pts = [(X(r["labels"]), Y(r["success_rate"])) for r in latent]
    d.line(pts, fill=orange, width=3) if len(pts) > 1 else None
    for r, (x, y) in zip(latent, pts):
        d.line([(x, Y(r["ci95"][1])), (x, Y(r["ci95"][0]))], fill=orange, width=2)
        for p in r["ci95"]:
            d.line([(x - 5, Y(p)), (x + 5, Y(p))], fill=orange, width=2)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=orange)
    decodes = sorted({r.get("decode") or "?" for r in latent})
    legend.append((orange, f"latent BC ({'/'.join(decodes)} decode)", False))
    ly = top + 5
    for colour, text, dashed in legend:
        x0 = W - right + 12
        d.line([(x0, ly + 7), (x0 + 24, ly + 7)], fill=colour, width=3 if not dashed else 2)
        d.text((x0 + 30, ly), text, fill="black", font=small)
        ly += 22
    d.text((W - right + 12, ly + 6), f"{latent[0]['episodes']} levels each,", fill=(80, 80, 80), font=small)
    d.text((W - right + 12, ly + 22), "bars/bands: 95% Wilson CI", fill=(80, 80, 80), font=small)
    path = Path(path)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
    return path
