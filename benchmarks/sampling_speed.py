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
    a = ap.parse_args()
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
            if ctx + a.frames > cfg.num_frames:
                frames = max(1, cfg.num_frames - ctx)
            else:
                frames = a.frames
            prompt = torch.randint(0, cfg.vocab_size, (1, ctx, *cfg.grid))
            prompt_actions = torch.randint(0, cfg.num_actions, (1, ctx - 1))
            actions = torch.randint(0, cfg.num_actions, (1, frames))
            row = {"steps": steps, "context": ctx, "frames": frames}
            for cache in (True, False):
                t = time.perf_counter()
                rollout_tokens(model, prompt, actions, steps=steps, generator=torch.Generator().manual_seed(0),
                               use_cache=cache, prompt_actions=prompt_actions if ctx > 1 else None)
                row["cached" if cache else "uncached"] = frames / (time.perf_counter() - t)
            row["speedup"] = row["cached"] / row["uncached"]
            rows.append(row)
            print(f"steps {steps:2d}, context {ctx:2d}: cached {row['cached']:.2f} frames/s, "
                  f"uncached {row['uncached']:.2f} frames/s, ×{row['speedup']:.1f}")
    save(a.name or f"sampling_speed_{a.preset if not a.export else 'export'}",
         {"settings": {"preset": a.preset, "export": a.export, "config": cfg.to_dict(), "batch": 1,
                       "threads": torch.get_num_threads()}, "rows": rows})


if __name__ == "__main__":
    main()
