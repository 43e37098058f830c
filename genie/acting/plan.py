"""Receding-horizon planning over latent actions inside the world model (`genie plan`), after MuZero/PlaNet's
decide-by-imagining, with the world model's token-only rollouts and the reward/continuation heads as the score.

Every `replan` real steps, for each environment: tokenise its last `context` real frames (the prompt), roll out
every one of the a^H latent-action sequences of length H from it in one batch (`genie.sampling.rollout_tokens`,
few MaskGIT steps, never decoded), score each rollout with the heads, and play the first `replan` actions of the
best through the latent → real map (its dictionary, Genie App. E). Real actions go to the real CoinRun through the
episode loop of the agents (`genie.agents.loop.play`); success and its 95% interval are scored as `genie agent eval`
scores them.

Score of a rollout of frames 1..H (frame 0: the prompt's last), with r_h = P(reward), e_h = P(end) of the heads on
(frame h-1, frame h) and alive_h = prod_{j<h} (1 - e_j):
    value = sum_h discount^(h-1) * alive_h * (r_h - death_penalty * max(e_h - r_h, 0))
(an end without the coin is a death in CoinRun).

Shape legend: b environments, S sequences (a^H), H horizon, t frames, h w token grid, a latent actions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genie.agents.agent import dictionary_probs
from genie.agents.evaluate import mean_interval, wilson_interval
from genie.core.errors import GenieInputError
from genie.core.frames import frames_to_video
from genie.grounding import ActionMap
from genie.sampling import SamplingSettings, rollout_tokens

DECODES = ("argmax", "sample")


@dataclass(frozen=True)
class PlanSettings:
    """horizon H (1..4: a^H sequences are rolled out per decision); replan: real steps played from each plan
    (1..H); maskgit_steps, temperature: how each imagined frame is sampled (few steps: a frame costs one forward
    per step); context: real frames in the prompt; discount, death_penalty: the score (module doc); decode: how a
    latent code becomes a real action through the map's dictionary."""

    horizon: int = 2
    replan: int = 1
    maskgit_steps: int = 2
    temperature: float = 0.0
    context: int = 2
    discount: float = 0.95
    death_penalty: float = 1.0
    decode: str = "argmax"

    def __post_init__(self) -> None:
        if not 1 <= self.horizon <= 4:
            raise GenieInputError(f"--horizon {self.horizon}: must be 1..4 (a^H rollouts per decision)")
        if not 1 <= self.replan <= self.horizon:
            raise GenieInputError(f"--replan {self.replan}: must be 1..{self.horizon} (the horizon)")
        if self.context < 1:
            raise GenieInputError(f"--context {self.context}: must be >= 1 frame")
        if not 0 < self.discount <= 1 or self.death_penalty < 0:
            raise GenieInputError("--discount must be in (0, 1] and --death-penalty >= 0")
        if self.decode not in DECODES:
            raise GenieInputError(f"--decode {self.decode!r}: must be one of {', '.join(DECODES)}")
        SamplingSettings(steps=self.maskgit_steps, temperature=self.temperature)  # checks both, one line each


def all_sequences(num_actions: int, horizon: int, device=None) -> Tensor:
    """(a^H, H) every latent-action sequence, in lexicographic order."""
    grids = torch.meshgrid(*[torch.arange(num_actions, device=device)] * horizon, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def trajectory_value(p_reward: Tensor, p_end: Tensor, discount: float = 0.95, death_penalty: float = 1.0) -> Tensor:
    """(n, H) head probabilities along rollouts → (n,) values (module doc)."""
    alive = torch.cumprod(torch.cat([torch.ones_like(p_end[:, :1]), 1 - p_end[:, :-1]], dim=1), dim=1)
    disc = discount ** torch.arange(p_end.shape[1], device=p_end.device, dtype=p_end.dtype)
    per_step = p_reward - death_penalty * (p_end - p_reward).clamp_min(0)
    return (alive * disc * per_step).sum(1)


@torch.no_grad()
def plan(dynamics, heads, tokens: Tensor, actions: Tensor | None, settings: PlanSettings,
         generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Best latent-action sequence for each prompt.

    tokens: (b, t0, h, w) prompt tokens; actions: (b, t0-1) the latent actions between them (None when t0 = 1).
    Returns (b, H) the best sequences and (b, S) every sequence's value (sequences in `all_sequences` order)."""
    b, t0 = tokens.shape[:2]
    seqs = all_sequences(dynamics.config.num_actions, settings.horizon, tokens.device)  # (S, H)
    s = len(seqs)
    sampling = SamplingSettings(steps=settings.maskgit_steps, temperature=settings.temperature)
    prompt_actions = actions.repeat_interleave(s, 0) if t0 > 1 else None
    out = rollout_tokens(dynamics, tokens.repeat_interleave(s, 0), seqs.repeat(b, 1), generator=generator,
                         prompt_actions=prompt_actions, settings=sampling)  # (b*S, t0 + H, h, w)
    frames = out[:, t0 - 1:]  # (b*S, H + 1, h, w): the prompt's last frame, then the imagined ones
    p_reward, p_end = heads.probs(frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1))
    h = settings.horizon
    values = trajectory_value(p_reward.view(-1, h), p_end.view(-1, h), settings.discount,
                              settings.death_penalty).view(b, s)
    return seqs[values.argmax(1)], values


def raw_actions_of(amap: ActionMap) -> torch.Tensor:
    """(k,) the raw CoinRun action each of the map's real classes is played as (a class is named by its first raw
    action, genie.grounding.class_names)."""
    from data_pipelines.coinrun import ACTION_NAMES

    missing = [n for n in amap.class_names if n not in ACTION_NAMES]
    if missing:
        raise GenieInputError(f"the action map's classes {missing} are not CoinRun actions ({', '.join(ACTION_NAMES)})")
    return torch.tensor([ACTION_NAMES.index(n) for n in amap.class_names])


class LatentToReal:
    """Latent codes → raw CoinRun actions through a map's dictionary (argmax, or a draw from the code's labels)."""

    def __init__(self, amap: ActionMap, decode: str = "argmax"):
        self.table, self.raw, self.decode = dictionary_probs(amap), raw_actions_of(amap), decode

    def __call__(self, codes: Tensor, generator: torch.Generator) -> np.ndarray:
        probs = self.table.to(generator.device)[codes.to(generator.device)]  # (b, k)
        cls = probs.argmax(-1) if self.decode == "argmax" else torch.multinomial(probs, 1, generator=generator)[:, 0]
        return self.raw[cls.cpu()].numpy()


class PromptBuffer:
    """Each environment's last `context` real frames, restarted at an episode's first frame; `prompts` pads a short
    history by repeating its oldest frame (a standing start), so every prompt has `context` frames."""

    def __init__(self, context: int):
        self.context, self.frames = context, None

    def update(self, frames: np.ndarray, first: np.ndarray) -> None:
        cur = frames[:, -1]
        if self.frames is None or len(self.frames) != len(first):
            self.frames = [[] for _ in range(len(first))]
        for i in range(len(first)):
            if first[i]:
                self.frames[i] = []
            self.frames[i] = (self.frames[i] + [cur[i]])[-self.context:]

    def prompts(self, which: list[int]) -> Tensor:
        """(n, context, c, H, W) in [-1, 1]."""
        out = []
        for i in which:
            f = self.frames[i]
            f = [f[0]] * (self.context - len(f)) + f
            out.append(frames_to_video(np.stack(f)))
        return torch.stack(out)


class PlannerPolicy:
    """A policy callable (genie.agents.loop): plans for the environments whose plan is used up, plays the next latent
    action of each plan through the map. `decisions` and `plan_seconds` count the planning."""

    def __init__(self, world, heads, to_real: LatentToReal, settings: PlanSettings):
        self.world, self.heads, self.to_real, self.settings = world, heads, to_real, settings
        self.buffer = PromptBuffer(settings.context)
        self.queue: list[list[int]] = []
        self.decisions, self.plan_seconds = 0, 0.0

    def __call__(self, frames: np.ndarray, first: np.ndarray, generator: torch.Generator) -> np.ndarray:
        b = len(first)
        if len(self.queue) != b:
            self.queue = [[] for _ in range(b)]
        self.buffer.update(frames, first)
        for i in np.flatnonzero(first):
            self.queue[i] = []
        need = [i for i in range(b) if not self.queue[i]]
        if need:
            t0 = time.perf_counter()
            tokens, actions = self.world.encode_prompt(self.buffer.prompts(need))
            best, _ = plan(self.world.dynamics, self.heads, tokens, actions if tokens.shape[1] > 1 else None,
                           self.settings, generator)
            for j, i in enumerate(need):
                self.queue[i] = best[j, :self.settings.replan].tolist()
            self.plan_seconds += time.perf_counter() - t0
            self.decisions += len(need)
        codes = torch.tensor([self.queue[i].pop(0) for i in range(b)])
        return self.to_real(codes, generator)


def summarise(results: list[dict], seconds: float, cpu: float, start_level: int, num_levels: int) -> dict:
    """Success (Wilson 95%) and mean return (normal 95%) of one episode per level, as `genie agent eval` writes
    them (the same interval code)."""
    results = sorted(results, key=lambda r: r["level"])
    wins = sum(r["success"] for r in results)
    returns = np.array([r["return"] for r in results])
    steps = sum(r["steps"] for r in results)
    lo, hi = wilson_interval(wins, len(results))
    rlo, rhi = mean_interval(returns)
    return {"levels": [start_level, start_level + num_levels], "episodes": len(results), "successes": wins,
            "success_rate": wins / len(results), "ci95": [lo, hi], "mean_return": float(returns.mean()),
            "return_ci95": [rlo, rhi], "mean_steps": steps / len(results), "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu, 1), "per_level": [[r["level"], int(r["success"]), r["return"], r["steps"]]
                                                        for r in results]}


def load_acting(model: str | Path, heads_dir: str | Path, action_map: str | Path | None, device):
    """The world model, its heads and its latent → real map (beside its LAM, or the file `action_map`)."""
    import json

    from genie.acting.heads import load_heads
    from genie.grounding import lam_fingerprint, load_action_map
    from genie.world_model import WorldModel

    world = WorldModel.from_pretrained(model).to(device)
    heads = load_heads(heads_dir, device, tokenizer=world.tokenizer)
    if action_map is None:
        amap = load_action_map(model, world.lam, required=True)
    else:
        try:
            amap = ActionMap.from_dict(json.loads(Path(action_map).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GenieInputError(f"{action_map}: not a readable action map ({type(e).__name__}: {e})") from None
        if amap.num_codes != world.num_actions or amap.lam_sha256 != lam_fingerprint(world.lam):
            raise GenieInputError(f"{action_map}: fitted for another LAM than {model}/lam (refit it with genie ground)")
    return world, heads, amap


def play_levels(policy: Callable, start_level: int, num_levels: int, seed: int, num_envs: int, max_steps: int,
                device, desc: str, progress: bool) -> tuple[list[dict], float, float]:
    """One episode per level in the real CoinRun with `policy`: (results, wall seconds, CPU seconds)."""
    from tqdm.auto import tqdm

    from data_pipelines.coinrun import LevelEnv
    from genie.agents.loop import play
    from genie.core.device import generator_for

    if num_levels < 1 or start_level < 0 or num_envs < 1 or max_steps < 1:
        raise GenieInputError("--num-levels, --num-envs and --max-steps must be >= 1 and --start-level >= 0")
    env = LevelEnv(list(range(start_level, start_level + num_levels)), num_envs=num_envs, seed=seed,
                   max_steps=max_steps)
    bar = tqdm(total=num_levels, desc=desc, unit="level", disable=not progress, dynamic_ncols=True)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        results = play(policy, env, generator_for(device, seed), progress=bar.update)
    finally:
        bar.close()
    return results, time.perf_counter() - t0, time.process_time() - c0


def evaluate_planner(model: str | Path, heads: str | Path, start_level: int, num_levels: int,
                     settings: PlanSettings | None = None, action_map: str | Path | None = None, seed: int = 0,
                     num_envs: int = 4, max_steps: int = 1000, device: str = "auto", progress: bool = True) -> dict:
    """`genie plan`: play one episode of each level start_level .. start_level + num_levels - 1 with the planner."""
    from genie.core.device import resolve_device

    settings = settings or PlanSettings()
    dev = resolve_device(device)
    world, head_model, amap = load_acting(model, heads, action_map, dev)
    torch.manual_seed(seed)
    policy = PlannerPolicy(world, head_model, LatentToReal(amap, settings.decode), settings)
    results, seconds, cpu = play_levels(policy, start_level, num_levels, seed, num_envs, max_steps, dev,
                                        "planning", progress)
    out = {"agent": "planner", "kind": "planner", "model": str(model), "heads": str(heads),
           "settings": asdict(settings), "seed": seed, "max_steps": max_steps, "num_envs": num_envs,
           "code_to_action": [amap.class_names[k] for k in amap.code_to_class()],
           **summarise(results, seconds, cpu, start_level, num_levels)}
    out.update(decisions=policy.decisions, plan_seconds=round(policy.plan_seconds, 1),
               decisions_per_s=round(policy.decisions / max(policy.plan_seconds, 1e-9), 3),
               sequences_per_decision=world.num_actions ** settings.horizon, torch_threads=torch.get_num_threads())
    return out
