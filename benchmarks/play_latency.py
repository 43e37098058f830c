"""`genie play` key-to-frame latency, measured in the browser, and where the time goes.

    python benchmarks/play_latency.py [--model models/coinrun-cpu] [--data data/play-heldout] [--presses 30]
                                      [--steps 8] [--contexts 15 4] [--window-hops 4 1] [--screenshot docs/play.png]

For each --context and --window-hop it starts `genie play` as a user would (its own process, a free port), opens the
page in Debian's chromium (Playwright), picks the first --data prompt (or uploads a plain frame), then
presses the keys 1–8 (or `--keys`) in turn, `--presses` times, waiting for each frame and 100 ms more (one key at a
time, none queued). The page itself measures each press: performance.now() at keydown to the animation
frame that paints the new canvas; the frame's header carries the server's model time. Then, with the
server stopped, it profiles WorldModel.step in this process at the same context: the dynamics model's
cache over the context, the MaskGIT steps, and the tokenizer decode of the window.

Without --model's folder it is assembled from pretrained/ (genie assemble). Writes
benchmarks/results/play_latency.json; --screenshot saves the page after the presses (quantised PNG).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import save  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summary(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 1), "p10": round(pct(xs, 0.1), 1), "p90": round(pct(xs, 0.9), 1),
            "n": len(xs)}


def start_server(model: Path, data: Path | None, steps: int, context: int, hop: int) -> tuple[subprocess.Popen, str]:
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    cmd = [sys.executable, "-m", "genie", "play", "--model", str(shown), "--port", "0", "--steps", str(steps),
           "--context", str(context), "--window-hop", str(hop), "--device", "cpu"] + (["--data", str(data)] if data else [])
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://\S+", line)
    if not m:
        proc.kill()
        raise SystemExit(f"genie play did not start: {line!r} (exit {proc.wait()})")
    return proc, m.group(0)


def save_screenshot(page, path: Path) -> None:
    from PIL import Image

    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=True)
    with Image.open(raw) as im:  # flat colours and pixel art: 256 colours lose nothing visible
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    raw.unlink()
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def browser_run(browser, url: str, presses: int, image_size: int, screenshot: Path | None, shot_after: int,
                keys: list[str] | None = None) -> dict:
    keys = keys or [str(k) for k in range(1, 9)]
    page = browser.new_context(bypass_csp=True, viewport={"width": 800, "height": 700}).new_page()
    page.goto(url)
    page.wait_for_function("window.geniePlay && window.geniePlay.ready")
    if page.evaluate("window.geniePlay.info.prompts"):
        page.click("#data-prompts img >> nth=0")
    else:  # no --data: upload a plain frame
        import numpy as np

        from genie.play import png_bytes

        tmp = ROOT / "benchmarks" / "tmp" / "prompt.png"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(png_bytes(np.full((image_size, image_size, 3), 96, np.uint8)))
        page.set_input_files("#upload", str(tmp))
    page.wait_for_function("window.geniePlay.length === 1")
    for i in range(presses):
        n = page.evaluate("window.geniePlay.steps")
        page.keyboard.press(keys[i % len(keys)])
        page.wait_for_function(f"window.geniePlay.steps > {n}", timeout=60_000)
        page.wait_for_timeout(100)
        if screenshot and i + 1 == min(shot_after, presses):
            save_screenshot(page, screenshot)
    lat = page.evaluate("window.geniePlay.latencies")
    model_ms = page.evaluate("window.geniePlay.modelMs")
    errors = page.evaluate("window.geniePlay.errors")
    page.context.close()
    return {"latency_ms": lat, "model_ms": model_ms, "errors": errors}


def profile(model: Path, data: Path | None, steps: int, context: int, hop: int, reps: int) -> dict:
    """WorldModel.step at a full context of `context` frames, split into its parts (this process): step_total
    is the median of `reps` presses in a row (the cache rebuilt on one in `hop`), the parts are one press each."""
    import numpy as np
    import torch

    from genie.play import Player, Session, dataset_prompts, frame_message
    from genie.sampling import rollout_tokens
    from genie.world_model import WorldModel

    wm = WorldModel.from_pretrained(model)
    prompt = dataset_prompts(data, wm.image_size, count=1)[0] if data else np.full((wm.image_size,) * 2 + (3,), 96, np.uint8)
    player = Player(wm, torch.device("cpu"), steps=steps, context=context, window_hop=hop)
    s = Session(id="profile", steps=steps, temperature=1.0)
    player.set_prompt(s, prompt, "profile")
    for i in range(context):  # fill the context
        player.step(s, i % wm.num_actions)
    tokens, actions = s.state.tokens, s.state.actions
    ctx, acts = tokens[:, -context:], actions[:, -(context - 1):] if context > 1 else actions[:, :0]
    a = torch.tensor([[1]])
    parts = {"step_total": [], "dynamics_cache": [], "dynamics_maskgit": [], "decode": [], "message": []}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for r in range(reps):
            t = time.perf_counter()
            player.step(s, r % wm.num_actions)
            parts["step_total"].append(time.perf_counter() - t)
        for r in range(reps):
            t = time.perf_counter()
            wm.dynamics(ctx, acts, return_cache=True)
            parts["dynamics_cache"].append(time.perf_counter() - t)
            t = time.perf_counter()
            out = rollout_tokens(wm.dynamics, ctx, a, steps=steps, generator=g, prompt_actions=acts if context > 1 else None)
            parts["dynamics_maskgit"].append(time.perf_counter() - t - parts["dynamics_cache"][-1])
            window = torch.cat([ctx, out[:, -1:]], dim=1)[:, -wm.tokenizer.config.num_frames:]
            t = time.perf_counter()
            wm.tokenizer.decode(window)
            parts["decode"].append(time.perf_counter() - t)
            t = time.perf_counter()
            frame_message({"type": "frame", "seq": r}, s.frames[-1])
            parts["message"].append(time.perf_counter() - t)
    return {k: round(statistics.median(v) * 1000, 2) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/coinrun-cpu")
    ap.add_argument("--data", default="data/play-heldout", help="prompt dataset (skipped when missing)")
    ap.add_argument("--presses", type=int, default=30)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--contexts", type=int, nargs="+", default=[15, 4])
    ap.add_argument("--window-hops", type=int, nargs="+", default=[4, 1],
                    help="genie play --window-hop values (capped by each context)")
    ap.add_argument("--profile-reps", type=int, default=10)
    ap.add_argument("--screenshot", default=None, help="save the page during the first context's presses")
    ap.add_argument("--screenshot-after", type=int, default=6, help="presses before the screenshot")
    ap.add_argument("--keys", nargs="+", default=[str(k) for k in range(1, 9)],
                    help="keys pressed in turn (1-8: latent actions 0-7; ArrowRight etc. with an action map), "
                         "e.g. one key to hold it for a screenshot")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--name", default="play_latency")
    a = ap.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    model = ROOT / a.model
    if not model.is_dir():
        from genie.world_model import WorldModel

        pre = ROOT / "pretrained"
        WorldModel.assemble(pre / "tokenizer", pre / "lam", pre / "dynamics", model)
        print(f"assembled {model} from pretrained/")
    data = ROOT / a.data if a.data and (ROOT / a.data).is_dir() else None
    image_size = 64
    runs = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=a.chromium, args=CHROMIUM_ARGS)
        settings = list(dict.fromkeys((c, min(h, c)) for c in a.contexts for h in a.window_hops))
        for i, (context, hop) in enumerate(settings):
            load_before = os.getloadavg()[0]
            proc, url = start_server(model, data, a.steps, context, hop)
            try:
                r = browser_run(browser, url, a.presses, image_size, Path(a.screenshot) if a.screenshot and i == 0 else None,
                                a.screenshot_after, a.keys)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            lat, mod = r["latency_ms"], r["model_ms"]
            outside = [x - m for x, m in zip(lat, mod)]
            full = lat[context:] if len(lat) > context + 2 else lat  # presses made once the context is full
            run = {"context": context, "window_hop": hop, "steps": a.steps, "presses": len(lat), "latency_ms": summary(lat),
                   "latency_full_context_ms": summary(full), "server_model_ms": summary(mod),
                   "outside_model_ms": summary(outside), "errors": r["errors"],
                   "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                   "per_press_ms": [round(x, 1) for x in lat], "per_press_model_ms": mod,
                   # press k (from 1) sees min(k, context) frames: how the model's time grows with the context
                   "context_at_press": [min(k + 1, context) for k in range(len(lat))]}
            load = os.getloadavg()[0]
            run["profile_ms"] = profile(model, data, a.steps, context, hop, a.profile_reps)
            run["profile_load_average_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            runs.append(run)
            print(f"context {context:2d}, window hop {hop}: key→frame median {run['latency_ms']['median']:.0f} ms "
                  f"(p10 {run['latency_ms']['p10']:.0f}, p90 {run['latency_ms']['p90']:.0f}; "
                  f"full context {run['latency_full_context_ms']['median']:.0f}) over {len(lat)} presses; "
                  f"model {run['server_model_ms']['median']:.0f} ms, outside it {run['outside_model_ms']['median']:.0f} ms; "
                  f"profile {run['profile_ms']}", flush=True)
        browser.close()
    save(a.name, {"benchmark": "play_latency", "model": a.model, "data": a.data if data else None,
                  "target_ms": 250, "torch_threads": torch.get_num_threads(),
                  "how": "median over the presses of performance.now() at keydown → the requestAnimationFrame "
                         "that paints the new frame, measured in the page (headless Debian chromium); "
                         "one key at a time, 100 ms apart; the server in its own process",
                  "runs": runs})


if __name__ == "__main__":
    main()
