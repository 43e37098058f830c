"""A controller trained in the dream (Ha & Schmidhuber 2018, "World Models" §4): a linear policy on the heads' pooled
features of the last two frames, optimised with CMA-ES on world-model rollouts alone, then played in the real game.

The dream: from real start frames (tokenised first frames of recorded episodes), each candidate controller picks a
latent action per step from the features of (previous, current) frame tokens; the dynamics model imagines the next
frame (few MaskGIT steps, tokens only); the heads give P(reward) and P(end) of the new frame. A candidate's dream
return is the expected return sum_t alive_t * P(reward)_t * reward_value (alive_t: the product of 1 - P(end) before
t), averaged over the same start frames and noise for every candidate (common random numbers). In the real game the
same controller reads the real frames' tokens and its latent action goes through the latent → real map.

Shape legend: P candidates, N start frames, D parameters, f features, a latent actions, h w token grid.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from data_pipelines.clips import ClipDataset
from genie.acting.plan import LatentToReal, load_acting, play_levels, summarise
from genie.core.device import generator_for, module_device
from genie.core.errors import GenieInputError
from genie.core.frames import frames_to_video
from genie.sampling import Rollout, SamplingSettings

COIN = 10.0  # CoinRun's reward for the coin: dream returns are in the real game's units


def cma_minimise(loss: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, sigma: float, generations: int,
                 popsize: int, seed: int = 0, progress: Callable[[int, float], None] | None = None) -> tuple[np.ndarray, list]:
    """CMA-ES (the `cma` package) on a batched objective: `loss` maps (P, D) candidates to (P,) losses. Returns the
    best candidate seen and one row per generation (best, mean loss)."""
    try:
        with warnings.catch_warnings():  # cma warns that it cannot plot without matplotlib; it need not plot here
            warnings.simplefilter("ignore", UserWarning)
            import cma
    except ImportError:
        raise GenieInputError("genie dream needs the cma package: pip install cma") from None
    es = cma.CMAEvolutionStrategy(np.asarray(x0, np.float64), sigma,
                                  {"popsize": popsize, "seed": seed + 1, "verbose": -9})
    history, best, best_loss = [], np.asarray(x0, np.float64), float("inf")
    for g in range(generations):
        xs = es.ask()
        losses = np.asarray(loss(np.stack(xs)), np.float64)
        es.tell(xs, losses.tolist())
        i = int(losses.argmin())
        if losses[i] < best_loss:
            best, best_loss = np.asarray(xs[i]), float(losses[i])
        history.append([float(losses.min()), float(losses.mean())])
        if progress:
            progress(g, float(losses.min()))
    return best, history


@dataclass(frozen=True)
class DreamSettings:
    """steps: dream length in frames; starts: real start frames per evaluation; popsize, generations, sigma: CMA-ES;
    maskgit_steps, temperature: how the dream's frames are sampled."""

    steps: int = 8
    starts: int = 4
    popsize: int = 8
    generations: int = 6
    sigma: float = 0.5
    maskgit_steps: int = 2
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if min(self.steps, self.starts, self.generations) < 1 or self.popsize < 2 or self.sigma <= 0:
            raise GenieInputError("--dream-steps, --starts, --generations must be >= 1, --popsize >= 2, --sigma > 0")
        SamplingSettings(steps=self.maskgit_steps, temperature=self.temperature)


def controller_actions(weights: Tensor, features: Tensor) -> Tensor:
    """weights (P, (f + 1) * a), features (P, n, f) → (P, n) latent actions: argmax of a linear map."""
    p, _, f = features.shape
    w = weights.view(p, f + 1, -1)
    return (torch.einsum("pnf,pfa->pna", features, w[:, :f]) + w[:, f:]).argmax(-1)


@torch.no_grad()
def dream_returns(dynamics, heads, weights: Tensor, start: Tensor, settings: DreamSettings, seed: int = 0,
                  random_actions: bool = False) -> Tensor:
    """Expected dream return (P, N) of each candidate from each start frame (N, h, w) (random_actions: a uniform
    random latent action per step instead, the dream's baseline)."""
    p, n = weights.shape[0], start.shape[0]
    dev = start.device
    g = generator_for(dev, seed)
    frames = start.repeat(p, 1, 1)[:, None]  # (P*N, 1, h, w)
    roll = Rollout(dynamics, frames, settings=SamplingSettings(steps=settings.maskgit_steps,
                                                               temperature=settings.temperature))
    prev = cur = frames[:, 0]
    alive = torch.ones(p * n, device=dev)
    ret = torch.zeros(p * n, device=dev)
    for _ in range(settings.steps):
        if random_actions:
            a = torch.randint(0, dynamics.config.num_actions, (p * n,), generator=g, device=dev)
        else:
            feats = heads.features(prev, cur).float().view(p, n, -1)
            a = controller_actions(weights.to(dev).float(), feats).reshape(-1)
        new = roll.step(a, generator=g)
        r, e = heads.probs(cur, new)
        ret += alive * r * COIN
        alive = alive * (1 - e)
        prev, cur = cur, new
        if len(roll) >= dynamics.config.num_frames:  # keep the window and the cost bounded: restart from the last two
            roll = Rollout(dynamics, torch.stack([prev, cur], 1), a[:, None], settings=roll.settings)
    return ret.view(p, n)


@torch.no_grad()
def start_tokens(tokenizer, data: str | Path, split: str, num: int, seed: int) -> Tensor:
    """(num, h, w) tokens of the first frames of `num` episodes of `data`'s `split` drawn with `seed`."""
    ds = ClipDataset(data, split, clip_len=1)
    rng = np.random.default_rng(seed)
    eps = rng.choice(ds.num_episodes, min(num, ds.num_episodes), replace=False)
    frames = np.stack([ds.clip_frames(int(e), 0)[0] for e in eps])  # (n, H, W, c)
    video = frames_to_video(frames)[:, None].to(module_device(tokenizer))  # (n, 1, c, H, W)
    return tokenizer.encode(video)[:, 0]


class ControllerPolicy:
    """A policy callable (genie.agents.loop) of a dream-trained controller in the real game: the tokens of the last two
    real frames → the heads' features → the controller's latent action → the map → a raw action."""

    def __init__(self, world, heads, weights: Tensor, to_real: LatentToReal):
        self.world, self.heads, self.weights, self.to_real = world, heads, weights, to_real

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, first: np.ndarray, generator: torch.Generator) -> np.ndarray:
        video = torch.stack([frames_to_video(f) for f in frames]).to(self.world.device)  # (b, 2, c, H, W)
        tok = self.world.tokenizer.encode(video)  # (b, 2, h, w)
        feats = self.heads.features(tok[:, 0], tok[:, 1]).float()[None]  # (1, b, f)
        codes = controller_actions(self.weights[None].to(feats.device), feats)[0]
        return self.to_real(codes, generator)


def train_in_dream(model: str | Path, heads: str | Path, data: str | Path, start_level: int, num_levels: int,
                   settings: DreamSettings | None = None, action_map: str | Path | None = None, decode: str = "argmax",
                   seed: int = 0, num_envs: int = 4, max_steps: int = 1000, device: str = "auto",
                   progress: bool = True) -> dict:
    """`genie dream`: CMA-ES on dream returns from `data`'s train-split start frames, then the controller's dream
    return from held-out start frames (val, else test) against its real return on levels start_level.. (one episode
    each), beside random latent actions' dream return."""
    from tqdm.auto import tqdm

    from data_pipelines.storage import read_card
    from genie.core.device import resolve_device

    settings = settings or DreamSettings()
    dev = resolve_device(device)
    world, head_model, amap = load_acting(model, heads, action_map, dev)
    splits = read_card(data).get("splits") or {}
    held = next((s for s in ("val", "test") if (splits.get(s) or {}).get("episodes")), None)
    if not (splits.get("train") or {}).get("episodes") or held is None:
        raise GenieInputError(f"{data}: the dream needs start frames from a train split and a val or test split")
    c0, t0 = time.process_time(), time.perf_counter()
    train_starts = start_tokens(world.tokenizer, data, "train", settings.starts, seed)
    held_starts = start_tokens(world.tokenizer, data, held, settings.starts, seed + 1)
    f = 2 * head_model.config.channels
    dim = (f + 1) * world.num_actions
    bar = tqdm(total=settings.generations, desc="CMA-ES in the dream", unit="gen", disable=not progress,
               dynamic_ncols=True)

    def loss(xs: np.ndarray) -> np.ndarray:
        r = dream_returns(world.dynamics, head_model, torch.as_tensor(xs, dtype=torch.float32), train_starts,
                          settings, seed)
        return -r.mean(1).cpu().numpy()

    best, history = cma_minimise(loss, np.zeros(dim), settings.sigma, settings.generations, settings.popsize, seed,
                                 progress=lambda g, v: (bar.update(1), bar.set_postfix(dream_return=f"{-v:.3f}")))
    bar.close()
    cpu_dream = time.process_time() - c0
    w = torch.as_tensor(best, dtype=torch.float32)
    dream_held = float(dream_returns(world.dynamics, head_model, w[None], held_starts, settings, seed + 7).mean())
    dream_random = float(dream_returns(world.dynamics, head_model, w[None], held_starts, settings, seed + 7,
                                       random_actions=True).mean())
    policy = ControllerPolicy(world, head_model, w, LatentToReal(amap, decode))
    results, seconds, cpu = play_levels(policy, start_level, num_levels, seed, num_envs, max_steps, dev,
                                        "controller in the real game", progress)
    real = summarise(results, seconds, cpu, start_level, num_levels)
    dream_steps = settings.steps
    real_within = float(np.mean([r["return"] if r["steps"] <= dream_steps else 0.0 for r in results]))
    return {"agent": "dream-controller", "kind": "dream", "model": str(model), "heads": str(heads), "data": str(data),
            "settings": asdict(settings), "decode": decode, "seed": seed, "max_steps": max_steps, "parameters": dim,
            "dream_history": history, "dream_return_train_starts": -min(h[0] for h in history),
            "dream_return_held_out_starts": dream_held, "dream_return_random_actions": dream_random,
            "real_return_within_dream_steps": real_within, "controller": best.tolist(),
            "cpu_seconds_dream": round(cpu_dream, 1), "seconds_total": round(time.perf_counter() - t0, 1), **real}
