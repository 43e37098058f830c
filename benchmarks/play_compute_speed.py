"""Frames/s of genie play's compute per key press (WorldModel.step + frame conversion) with a key held (the same
latent action every frame), the committed models, 8 MaskGIT steps, batch 1; the browser is not in this figure
(benchmarks/play_latency.py measures key-to-screen in Chromium).

    python benchmarks/play_compute_speed.py cuda benchmarks/results/play_fps_gpu.json   # or: cpu
Needs the held-out recording data/coinrun-heldout for the prompt frame.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data_pipelines.clips import ClipDataset  # noqa: E402
from genie.core.frames import video_to_frames  # noqa: E402
from genie.world_model import WorldModel  # noqa: E402

dev = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cuda")
out = sys.argv[2] if len(sys.argv) > 2 else None
d = tempfile.mkdtemp()
WorldModel.assemble("pretrained/tokenizer", "pretrained/lam", "pretrained/dynamics", d + "/wm")
wm = WorldModel.from_pretrained(d + "/wm").to(dev).eval()
clip = ClipDataset("data/coinrun-heldout", split="test", clip_len=1)[0]["video"].to(dev)
res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__}
window = wm.dynamics.config.num_frames - 1 if hasattr(wm.dynamics, "config") else 15
for context, hop in ((window, 4), (window, 1), (4, 4)):
    state = wm.reset(clip[None], seed=0, context=context, window_hop=hop)
    times = []
    for _ in range(80):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        video_to_frames(wm.step(state, 3, steps=8)[:, None])
        times.append(time.perf_counter() - t)
    steady = times[20:]
    res[f"context{context}_hop{hop}"] = {"frames_per_s": round(len(steady) / sum(steady), 2),
                                         "median_ms": round(1000 * sorted(steady)[len(steady) // 2], 2)}
    print(context, hop, res[f"context{context}_hop{hop}"], flush=True)
if out:
    json.dump(res, open(out, "w"), indent=1)
