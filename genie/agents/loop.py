"""The environment loop: a plain function of a policy callable, an environment and a generator (STYLE 17).

A policy is any callable `policy(frames, first, generator) -> actions`:

- `frames` (b, 2, H, W, c) uint8: each environment's previous and current frame (at an episode's first frame,
  that frame twice);
- `first` (b,) bool: environments whose current frame starts an episode (a policy with memory resets there);
- `generator`: the torch.Generator it draws from, if it samples;
- returns (b,) raw environment actions.

The environment is gym3-style (`observe() -> (reward, frames, first)`, `act(actions)`) with a `done` flag and
`results` (one dict per finished episode), as `data_pipelines.coinrun.LevelEnv`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Policy = Callable[[np.ndarray, np.ndarray, torch.Generator], np.ndarray]


def play(policy: Policy, env, generator: torch.Generator, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Step `env` with `policy` until it has no episode left to play; returns `env.results`. `progress(n)` is
    called with the number of episodes finished at each step that finished some."""
    _, obs, first = env.observe()
    prev = obs.copy()
    while not env.done:
        prev[first] = obs[first]
        actions = policy(np.stack([prev, obs], axis=1), first, generator)
        prev = obs.copy()
        finished = len(env.results)
        env.act(actions)
        _, obs, first = env.observe()
        if progress is not None and len(env.results) > finished:
            progress(len(env.results) - finished)
    return env.results
