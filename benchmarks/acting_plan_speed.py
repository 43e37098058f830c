"""Planner decision cost on a world model (issue 28): one `genie.acting.plan.plan` call per setting, one thread.

python benchmarks/acting_plan_speed.py HEADS_DIR OUT.json  (world model: pretrained/, prompts: data/coinrun-heldout)
"""
import json
import sys
import time

import torch

from data_pipelines.clips import ClipDataset
from genie.acting.heads import load_heads
from genie.acting.plan import PlanSettings, plan
from genie.world_model import WorldModel

torch.set_num_threads(1)
world = WorldModel.from_pretrained("pretrained")
heads = load_heads(sys.argv[1], tokenizer=world.tokenizer)
ds = ClipDataset("data/coinrun-heldout", "test", clip_len=4)
rows = []
for horizon, b, ctx, steps in [(1, 1, 2, 2), (2, 1, 2, 2), (1, 4, 2, 2), (2, 1, 1, 1)]:
    s = PlanSettings(horizon=horizon, context=ctx, maskgit_steps=steps)
    video = torch.stack([ds[i]["video"][-ctx:] for i in range(b)])
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter(); c0 = time.process_time()
    tokens, actions = world.encode_prompt(video)
    best, values = plan(world.dynamics, heads, tokens, actions if tokens.shape[1] > 1 else None, s, g)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rows.append(dict(horizon=horizon, envs=b, context=ctx, maskgit_steps=steps, sequences=8 ** horizon,
                     seconds=round(dt, 2), cpu_seconds=round(dc, 2), decisions_per_s=round(b / dt, 3),
                     best_first=best[:, 0].tolist(), value_spread=[round(float(values.min()), 4), round(float(values.max()), 4)]))
    print(rows[-1], flush=True)
json.dump(rows, open(sys.argv[2], "w"), indent=1)
