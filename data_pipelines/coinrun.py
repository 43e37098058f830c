"""Record Procgen CoinRun (Genie App. F) into the genie dataset format, with a random policy or a demonstrator.

Hard mode, 64×64 RGB, several environments stepped in parallel through one gym3 vector env. Policies (`--policy`):

- `random` (the default, Genie App. F) draws each of the 15 actions uniformly; by default independently every
  step (no action repeats), or, with `action_repeat` MEAN > 1, each environment keeps its previous action with
  probability 1 − 1/MEAN per step (a geometric hold of mean MEAN steps, as a person holds a key);
- `search`, a demonstrator worth imitating (Genie §3.3 clones an expert): it looks ahead in the real simulator
  through Procgen's state save/restore (`data_pipelines.coinrun_search.SearchExpert`); its default move is RIGHT+UP, which alone solves about
  60% of levels and makes up about 0.79 of its steps;
- `search-right`, the same search with RIGHT as the default move: it jumps only where the look-ahead says so, so
  when to jump is what a clone must read from the frames (always-RIGHT alone rarely gets past the first wall).

Episode boundaries follow gym3's auto-reset exactly: after `act(a)`, `observe()` returns the reward
for `a` and a `first` flag; when `first` is set, the observation already belongs to the *next* episode
and the frame we acted on was the last frame of the finished one.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from data_pipelines.coinrun_search import SearchExpert, procgen_env_class
from data_pipelines.storage import DEFAULT_CHUNK_LEN, DatasetWriter, Episode
from genie.core.errors import GenieInputError

NUM_ACTIONS = 15
# Procgen's combo list for CoinRun: index → buttons. Indices 9..14 press buttons CoinRun ignores
# ("D", "A", "W", "S", "Q", "E" act as no-ops), so they have the same effect as 4 (no-op).
ACTION_NAMES = ["LEFT+DOWN", "LEFT", "LEFT+UP", "DOWN", "NOOP", "UP", "RIGHT+DOWN", "RIGHT", "RIGHT+UP",
                "D", "A", "W", "S", "Q", "E"]
# Actions with the same effect in CoinRun merged into 9 classes: 0-8 as above, 9-14 → 4 (no-op).
MERGED_ACTION = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4], dtype=np.int64)
# Procgen centres the camera on the agent (basic-abstract-game.cpp, choose_center), so at 64×64 the agent's
# sprite always sits in this box (rows 28-35, columns 29-35; the mean of 2,800 held-out frames is sharp only
# there). Pixels, end-exclusive. Written into the card as the region of interest that training options
# (the LAM's roi_weight) and `genie evaluate`'s agent-box PSNR read.
AGENT_BOX = {"top": 28, "left": 29, "bottom": 36, "right": 36}


def split_of_seed(level_seed: int, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a level seed: a level never appears in two splits."""
    h = int.from_bytes(hashlib.sha256(f"level-{level_seed}".encode()).digest()[:8], "little") / 2**64
    if h < test_fraction:
        return "test"
    if h < test_fraction + val_fraction:
        return "val"
    return "train"


def _import_procgen():
    return procgen_env_class()  # through this module, so a test can hand the recorder a fake environment


def _check_action_repeat(action_repeat: float) -> float:
    try:
        m = float(action_repeat)
    except (TypeError, ValueError):
        raise GenieInputError(f"--action-repeat must be a number >= 1, got {action_repeat!r}") from None
    if not math.isfinite(m) or m < 1:
        raise GenieInputError(f"--action-repeat must be a finite number >= 1 (mean steps an action is held), got {action_repeat!r}")
    return m


def policy_name(action_repeat: float, policy: str = "random") -> str:
    """The dataset card's description of the recording policy."""
    if policy in SearchExpert.DEFAULTS:
        return SearchExpert.describe(policy)
    if action_repeat == 1:
        return "uniform random, no action repeats"
    return (f"uniform random with held actions: keep the previous action with probability 1 - 1/{action_repeat:g} "
            f"per step (geometric hold, mean {action_repeat:g} steps), per environment")


class RandomPolicy:
    """Uniform random actions for `num_envs` environments, each optionally held for a geometric time.

    With `action_repeat` 1 it draws exactly what the original uniform policy drew from the same seed (one
    `rng.integers` call per step), so MEAN 1 recordings are bit-identical to earlier ones; the hold coin uses
    a second stream derived from the seed so it never shifts the action stream."""

    def __init__(self, num_envs: int, seed: int, action_repeat: float = 1.0):
        self.num_envs, self.action_repeat = num_envs, _check_action_repeat(action_repeat)
        self.rng = np.random.default_rng(seed)
        self.hold_rng = np.random.default_rng([seed, 1])
        self.prev: np.ndarray | None = None

    def __call__(self, env=None, first: np.ndarray | None = None) -> np.ndarray:
        """(num_envs,) actions for the current step; the environment and its episode starts are not looked at."""
        actions = self.rng.integers(0, NUM_ACTIONS, size=self.num_envs)
        if self.action_repeat > 1:
            keep = self.hold_rng.random(self.num_envs) < 1.0 - 1.0 / self.action_repeat
            if self.prev is not None:
                actions = np.where(keep, self.prev, actions)
            self.prev = actions
        return actions


# ---- a demonstrator: look-ahead search in the real simulator ----------------------------------------------------

POLICIES = ("random", "search", "search-right")


def make_policy(name: str, num_envs: int, seed: int, action_repeat: float = 1.0, distribution_mode: str = "hard"):
    """The recording policy `name` (POLICIES) for `num_envs` environments: a callable (env, first) -> actions."""
    if name == "random":
        return RandomPolicy(num_envs, seed, action_repeat)
    if name in SearchExpert.DEFAULTS:
        if action_repeat != 1:
            raise GenieInputError("--action-repeat applies to --policy random only")
        return SearchExpert(num_envs, seed, distribution_mode, default=SearchExpert.DEFAULTS[name])
    raise GenieInputError(f"--policy must be one of {', '.join(POLICIES)}, got {name!r}")


class LevelEnv:
    """CoinRun that plays exactly one episode of each level seed in `levels`, `num_envs` at a time (gym3 style).

    Each slot of one gym3 vector env is loaded with a level's start state (Procgen set_state) and, when its
    episode ends, with the next level still to play; a slot with none left keeps stepping, ignored. `observe()`
    returns (reward, rgb frames (num_envs, 64, 64, 3) uint8, first): `first` marks slots whose frame starts a
    level. `results` lists each finished episode: level, return, steps, success (the coin reached: the episode
    ended with a positive reward). An episode is cut (a failure) after `max_steps` steps; CoinRun's own limit
    is 1000. `get_state()`/`get_info()` reach the simulator (the search demonstrator looks ahead through them).
    """

    def __init__(self, levels: list[int], num_envs: int = 16, distribution_mode: str = "hard", seed: int = 0,
                 max_steps: int = 1000):
        if not levels:
            raise GenieInputError("no levels to play (--num-levels must be >= 1)")
        if min(levels) < 0:
            raise GenieInputError("level seeds must be >= 0")
        self._make = _import_procgen()
        self.distribution_mode, self.seed, self.max_steps = distribution_mode, seed, max_steps
        self.num_envs = max(1, min(num_envs, len(levels)))
        self.env = self._make(num=self.num_envs, env_name="coinrun", distribution_mode=distribution_mode,
                              start_level=int(levels[0]), num_levels=1, rand_seed=seed, num_threads=1)
        self.queue = [int(x) for x in levels]
        self.slot_level: list[int | None] = [None] * self.num_envs
        self.returns = np.zeros(self.num_envs)
        self.steps = np.zeros(self.num_envs, np.int64)
        self.results: list[dict] = []
        self._first = np.ones(self.num_envs, bool)
        self._rew = np.zeros(self.num_envs, np.float32)
        self._load(list(range(self.num_envs)))

    def _start_state(self, level: int) -> bytes:
        one = self._make(num=1, env_name="coinrun", distribution_mode=self.distribution_mode, start_level=level,
                         num_levels=1, rand_seed=self.seed, num_threads=1)
        state = one.get_state()[0]
        one.close() if hasattr(one, "close") else None
        return state

    def _load(self, slots: list[int]) -> None:
        states = self.env.get_state()
        for i in slots:
            if self.queue:
                level = self.queue.pop(0)
                states[i] = self._start_state(level)
                self.slot_level[i] = level
            else:
                self.slot_level[i] = None
            self.returns[i], self.steps[i] = 0.0, 0
        self.env.set_state(states)
        _, self._ob, _ = self.env.observe()
        self._first[slots] = True

    @property
    def done(self) -> bool:
        return all(level is None for level in self.slot_level)

    def observe(self):
        return self._rew.copy(), self._ob["rgb"], self._first.copy()

    def get_state(self):
        return self.env.get_state()

    def get_info(self):
        return self.env.get_info()

    def act(self, actions: np.ndarray) -> None:
        self.env.act(np.asarray(actions, np.int32))
        rew, self._ob, first = self.env.observe()
        self._rew, self._first = rew, np.zeros(self.num_envs, bool)
        self.returns += rew
        self.steps += 1
        ended = []
        for i in range(self.num_envs):
            level = self.slot_level[i]
            if level is None:
                continue
            if first[i] or self.steps[i] >= self.max_steps:
                self.results.append({"level": level, "return": float(self.returns[i]), "steps": int(self.steps[i]),
                                     "success": bool(first[i] and rew[i] > 0)})
                ended.append(i)
        if ended:
            self._load(ended)


def record_episodes(num_episodes: int, *, start_level: int = 0, num_levels: int = 0, seed: int = 0,
                    max_steps: int = 1000, num_envs: int = 16, distribution_mode: str = "hard",
                    action_repeat: float = 1.0, policy: str = "random", progress: bool = True):
    """Yield `num_episodes` whole CoinRun episodes (an `Episode` each), deterministic in `seed`.

    Env i keeps its own first episodes, up to a fixed quota, so the sample is not biased toward short
    episodes (taking the first N to finish across envs would be). Episodes longer than `max_steps` frames
    are cut to `max_steps` frames (dones stays False: the environment did not end them).
    `action_repeat`: mean hold of each random action in steps (1 = a fresh uniform action every step); the
    hold carries across an environment's episode resets, as the policy does not see them.
    `policy`: one of POLICIES (`random`, or the `search` demonstrator).
    """
    if num_episodes < 1:
        raise GenieInputError(f"--episodes must be >= 1, got {num_episodes}")
    if max_steps < 2:
        raise GenieInputError(f"--max-steps must be >= 2, got {max_steps}")
    if start_level < 0 or num_levels < 0:
        raise GenieInputError("--start-level and --num-levels must be >= 0")
    action_repeat = _check_action_repeat(action_repeat)
    ProcgenGym3Env = _import_procgen()
    num_envs = max(1, min(num_envs, num_episodes))
    quota = [num_episodes // num_envs + (1 if i < num_episodes % num_envs else 0) for i in range(num_envs)]
    env = ProcgenGym3Env(num=num_envs, env_name="coinrun", distribution_mode=distribution_mode,
                         start_level=start_level, num_levels=num_levels, rand_seed=seed)
    act = make_policy(policy, num_envs, seed, action_repeat, distribution_mode)
    done_count = [0] * num_envs
    cur: list[dict] = [dict(frames=[], actions=[], rewards=[], seed=None, cut=False) for _ in range(num_envs)]

    bar = None
    if progress:
        bar = tqdm(total=num_episodes, unit="ep", desc="recording CoinRun", dynamic_ncols=True, mininterval=0.5)
    t0, frames_kept = time.perf_counter(), 0

    _, ob, first = env.observe()
    infos = env.get_info()
    for i in range(num_envs):
        cur[i]["seed"] = int(infos[i]["level_seed"])
    while min(d - q for d, q in zip(done_count, quota)) < 0:
        obs = ob["rgb"]
        actions = act(env, first)
        for i in range(num_envs):
            c = cur[i]
            if done_count[i] < quota[i] and not c["cut"]:
                c["frames"].append(obs[i].copy())
                c["actions"].append(int(actions[i]))
        env.act(actions.astype(np.int32))
        rew, ob, first = env.observe()
        infos = env.get_info()
        for i in range(num_envs):
            c = cur[i]
            if done_count[i] < quota[i] and not c["cut"]:
                c["rewards"].append(float(rew[i]))
                if len(c["frames"]) >= max_steps and not first[i]:
                    c["cut"] = True  # keep max_steps frames; drop the rest of this episode
                    yield _episode(c, ended=False)
                    frames_kept += len(c["frames"])
                    done_count[i] += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(fps=f"{frames_kept / (time.perf_counter() - t0):.0f}")
            if first[i]:
                if done_count[i] < quota[i] and not c["cut"]:
                    yield _episode(c, ended=True)
                    frames_kept += len(c["frames"])
                    done_count[i] += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(fps=f"{frames_kept / (time.perf_counter() - t0):.0f}")
                cur[i] = dict(frames=[], actions=[], rewards=[], seed=int(infos[i]["level_seed"]), cut=False)
    if bar is not None:
        bar.close()
    env.close() if hasattr(env, "close") else None


def _episode(c: dict, ended: bool) -> Episode:
    n = len(c["frames"])
    dones = np.zeros(n, bool)
    dones[-1] = ended
    return Episode(frames=np.stack(c["frames"]), actions=np.asarray(c["actions"], np.int16),
                   rewards=np.asarray(c["rewards"], np.float32), dones=dones, level_seed=c["seed"])


def record_coinrun(out: str | Path, num_episodes: int, *, start_level: int = 0, num_levels: int = 0,
                   seed: int = 0, max_steps: int = 1000, num_envs: int = 16, split: str = "auto",
                   val_fraction: float = 0.05, test_fraction: float = 0.05, overwrite: bool = False,
                   chunk_len: int = DEFAULT_CHUNK_LEN, parquet: bool = False, action_repeat: float = 1.0,
                   policy: str = "random", successes_only: bool = False, progress: bool = True) -> dict:
    """Record CoinRun episodes into a dataset folder at `out`; returns a summary dict.

    `successes_only`: keep only episodes that reached the coin, until `num_episodes` are kept (filtered cloning's
    data: the random policy's lucky episodes); the summary's `played` counts every episode played."""
    action_repeat = _check_action_repeat(action_repeat)
    if policy not in POLICIES:
        raise GenieInputError(f"--policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy != "random" and action_repeat != 1:
        raise GenieInputError("--action-repeat applies to --policy random only")
    if split not in ("auto", "train", "val", "test"):
        raise GenieInputError(f"--split must be auto, train, val or test, got {split!r}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GenieInputError("--val-fraction and --test-fraction must be in [0,1) and sum below 1")
    card = {
        "source": "coinrun",
        "num_actions": NUM_ACTIONS,
        "action_names": ACTION_NAMES,
        "merged_action": MERGED_ACTION.tolist(),
        "agent_box": dict(AGENT_BOX),
        "recipe": {
            "env": "procgen coinrun", "distribution_mode": "hard", "policy": policy_name(action_repeat, policy),
            "policy_name": policy, "action_repeat": action_repeat, "successes_only": successes_only,
            "episodes": num_episodes, "start_level": start_level, "num_levels": num_levels, "seed": seed,
            "max_steps": max_steps, "num_envs": num_envs, "split": split,
            "val_fraction": val_fraction, "test_fraction": test_fraction,
        },
        "split_key": "level_seed",
    }
    t0 = time.perf_counter()
    frames = successes = played = 0
    with DatasetWriter(out, overwrite=overwrite, chunk_len=chunk_len, card=card, parquet=parquet) as w:
        # filtered: play on (an unbounded quota per environment) until enough episodes reached the coin
        episodes = record_episodes(num_episodes if not successes_only else 2**40, start_level=start_level,
                                   num_levels=num_levels, seed=seed, max_steps=max_steps, num_envs=num_envs,
                                   action_repeat=action_repeat, policy=policy, progress=progress and not successes_only)
        for ep in episodes:
            played += 1
            won = bool(ep.dones[-1] and ep.rewards[-1] > 0)
            if successes_only and not won:
                continue
            s = split if split != "auto" else split_of_seed(ep.level_seed, val_fraction, test_fraction)
            w.add_episode(ep, s)
            frames += len(ep)
            successes += won
            if successes_only and successes == num_episodes:
                episodes.close()
                break
        w.card["recipe"]["played"] = played
        path = w.close()
    dt = time.perf_counter() - t0
    return {"path": str(path), "episodes": num_episodes, "frames": frames, "seconds": dt, "frames_per_s": frames / dt,
            "successes": successes, "played": played, "splits": {s: w.stats[s]["episodes"] for s in w.stats if w.stats[s]["episodes"]}}
