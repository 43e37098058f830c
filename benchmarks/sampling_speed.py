"""Sampling speed of the dynamics model: frames/s with and without the KV cache.

    python benchmarks/sampling_speed.py [--preset cpu] [--steps 8 25] [--context 4 15] [--frames 3]

For each (MaskGIT steps, context length) it primes a context of random tokens, then generates
`--frames` new frames one by one (batch 1) and reports generated frames per second. Tokens only:
decoding to pixels is the tokenizer's cost (benchmarks/train_speed.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, nargs="+", default=[8, 25])
    ap.add_argument("--context", type=int, nargs="+", default=[4, 15])
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--export", default=None, help="a dynamics export instead of a randomly initialised preset")
    ap.add_argument("--override", nargs="*", default=[], help="config overrides key=value (tuples as 16x16)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--slide", type=int, default=0,
                    help="generate this many frames past the context instead (the window slides: steady state)")
    ap.add_argument("--window-hop", type=int, nargs="+", default=[1],
                    help="frames the window drops at once when it slides (genie.sampling.rollout_tokens)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cached-only", action="store_true", help="skip the (slow) uncached sampler")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from dynamics.config import DynamicsConfig
    from dynamics.model import DynamicsModel
    from genie.sampling import rollout_tokens

    if a.export:
        from genie.export import load_export

        model = load_export(a.export, "dynamics")
    else:
        torch.manual_seed(0)
        base = DynamicsConfig.preset(a.preset)
        over = {k: (tuple(int(x) for x in v.split("x")) if isinstance(getattr(base, k), tuple) else type(getattr(base, k))(v))
                for k, v in (o.split("=") for o in a.override)}
        model = DynamicsModel(DynamicsConfig.preset(a.preset, **over)).eval()
    cfg = model.config
    rows = []
    for steps in a.steps:
        for ctx in a.context:
            if a.slide:
                frames = a.slide
            elif ctx + a.frames > cfg.num_frames:
                frames = max(1, cfg.num_frames - ctx)
            else:
                frames = a.frames
            prompt = torch.randint(0, cfg.vocab_size, (1, ctx, *cfg.grid))
            prompt_actions = torch.randint(0, cfg.num_actions, (1, ctx - 1))
            actions = torch.randint(0, cfg.num_actions, (1, frames))
            for hop in a.window_hop:
                row = {"steps": steps, "context": ctx, "frames": frames, "window_hop": hop}
                for cache in (True,) if a.cached_only else (True, False):
                    t = time.perf_counter()
                    rollout_tokens(model, prompt, actions, steps=steps, generator=torch.Generator().manual_seed(0),
                                   use_cache=cache, prompt_actions=prompt_actions if ctx > 1 else None, window_hop=hop)
                    row["cached" if cache else "uncached"] = frames / (time.perf_counter() - t)
                row["speedup"] = row["cached"] / row["uncached"] if "uncached" in row else None
                rows.append(row)
                print(f"steps {steps:2d}, context {ctx:2d}, {frames} frames, window hop {hop}: cached {row['cached']:.2f} "
                      f"frames/s" + (f", uncached {row['uncached']:.2f} frames/s, ×{row['speedup']:.1f}" if "uncached" in row
                                     else ""), flush=True)
    save(a.name or f"sampling_speed_{a.preset if not a.export else 'export'}",
         {"settings": {"preset": a.preset, "export": a.export, "config": cfg.to_dict(), "batch": 1, "slide": a.slide,
                       "threads": torch.get_num_threads()}, "rows": rows})


if __name__ == "__main__":
    main()
