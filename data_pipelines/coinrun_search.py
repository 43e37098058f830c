"""CoinRun's search demonstrator (`genie data coinrun --policy search|search-right`): a policy worth imitating for
Genie §3.3's behaviour cloning, that looks ahead in the real simulator through Procgen's state save/restore.

Its default move is RIGHT+UP (`search`), which alone solves about 60% of hard levels and makes up about 0.79 of its
steps, or RIGHT (`search-right`), so that when to jump is what a clone must read from the frames. The recorder that
plays it is `data_pipelines.coinrun`.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np

from genie.core.errors import GenieInputError


def procgen_env_class():
    """Procgen's gym3 vector environment class, or one line naming the extra to install."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from procgen import ProcgenGym3Env
    except ImportError:
        raise GenieInputError(
            "CoinRun recording needs the optional procgen package: pip install 'genie-world-model[coinrun]'"
        ) from None
    return ProcgenGym3Env


# Procgen CoinRun game constants (coinrun.cpp / basic-abstract-game.cpp): entity type of the agent, grid tile of
# the goal coin.
_PLAYER, _GOAL = 0, 1
# Raw CoinRun actions the demonstrator presses (ACTION_NAMES): the agent only needs these six.
_LEFT, _LEFT_UP, _NOOP, _UP, _RIGHT, _RIGHT_UP = 1, 2, 4, 5, 7, 8


def procgen_positions(state: bytes) -> tuple[float, float, float, float]:
    """(agent x, agent y, goal x, goal y) in grid units, read from a CoinRun state of `env.get_state()`.

    The state is Procgen's serialisation (game.cpp `Game::serialize`, then basic-abstract-game.cpp): a header of
    options, seeds and step data, the entity list (the agent first), then per-game fields, then the tile grid.
    Checked as it is read, so another procgen build with another layout fails with one clear line."""
    try:
        o = 4  # version
        (n,) = struct.unpack_from("<i", state, o)
        name = state[o + 4:o + 4 + n]
        o += 4 + n + 4 * 12 + 4 * 5  # name, 12 options, grid_step, level seed low/high, game type, game n
        for _ in range(2):  # level_seed_rand_gen, rand_gen: is_seeded + a length-prefixed string
            (n,) = struct.unpack_from("<i", state, o + 4)
            o += 8 + n
        o += 4 * 3 + 4 * 12  # step data (reward, done, level complete) and 12 game fields
        o += 4  # grid_size
        (count,) = struct.unpack_from("<i", state, o)
        o += 4
        ax, ay = struct.unpack_from("<2f", state, o)
        (kind,) = struct.unpack_from("<i", state, o + 24)
        o += count * 31 * 4  # entities: 31 four-byte fields each
        o += 4 * (2 + 3 + 3 + 8 + 3)  # background, char_dim, actions, physics, centre, flags
        (n,) = struct.unpack_from("<i", state, o + 4)
        o += 8 + n  # asset_rand_gen
        o += 4 * (3 + 6)  # main size, out-of-bounds object, unit, view, offsets, visibility
        w, h, size = struct.unpack_from("<3i", state, o)
        grid = np.frombuffer(state, dtype="<i4", count=size, offset=o + 12)
    except (struct.error, ValueError) as e:
        raise GenieInputError(f"procgen state: not the CoinRun layout this demonstrator reads ({e})") from None
    goal = np.flatnonzero(grid == _GOAL)
    if name != b"coinrun" or kind != _PLAYER or w * h != size or len(goal) == 0:
        raise GenieInputError("procgen state: not the CoinRun layout this demonstrator reads (another procgen build?)")
    return float(ax), float(ay), float(goal[0] % w) + 0.5, float(goal[0] // w) + 0.5


def _candidate_library(horizon: int, default: int = _RIGHT_UP) -> np.ndarray:
    """(c, horizon) fixed action sequences, the first the default: hold RIGHT+UP (run right, jumping whenever on the
    ground; alone it solves about 60% of hard levels) or RIGHT. The others deviate from it for a while and then
    return to it: the other of the two (run without jumping or jump, for a while), wait, back off, jump back, jump
    in place, steer back or stop in the air."""
    h, ru = horizon, default
    other = _RIGHT if default == _RIGHT_UP else _RIGHT_UP
    seqs = [[ru] * h, [other] * h]
    for d in (3, 6, 12):
        seqs.append([other] * d + [ru] * (h - d))
    for d in (4, 10):
        seqs.append([_NOOP] * d + [ru] * (h - d))
        seqs.append([_LEFT] * d + [ru] * (h - d))
        seqs.append([_LEFT_UP] * d + [ru] * (h - d))
    seqs.append([_UP] * 6 + [ru] * (h - 6))
    seqs.append([ru] * 6 + [_LEFT] * (h - 6))
    seqs.append([ru] * 6 + [_NOOP] * (h - 6))
    return np.array([q[:h] for q in seqs], np.int32)


class SearchExpert:
    """A CoinRun demonstrator that looks ahead in the real simulator (Procgen's get_state/set_state).

    Every `replan` steps it copies each environment's state into a simulator of `c` environments and plays
    `c` candidate action sequences of `horizon` steps there: a fixed library (`_candidate_library`: the default,
    hold RIGHT+UP, and deviations from it) and `random_candidates` held-action sequences. A candidate that reaches
    the coin wins (the default first, then the earliest, the library before random ones), one that dies loses, and
    the others are ranked by the agent's distance to the coin at the end, a deviation from the default counting
    `deviation_margin` tiles farther (a random one 1 more): the demonstrator leaves the default only where that
    clearly pays, so what it does is a plain function of what it sees and a policy can clone it. It plays the
    winner's first `replan` actions, or all of it up to the coin. Deterministic: the random candidates of an
    episode come from a generator seeded by (seed, level seed), so a level is played the same way in any batch.
    """

    DESCRIPTION = ("search demonstrator: every 8 steps plays hold-RIGHT+UP, 13 deviations from it and 8 random "
                   "held-action sequences of 32 steps in a copy of the simulator (Procgen state save/restore) and "
                   "follows the one that reaches the coin, else survives closest to it (deviations 2 tiles behind)")
    DEFAULTS = {"search": _RIGHT_UP, "search-right": _RIGHT}

    @classmethod
    def describe(cls, name: str = "search") -> str:
        """The card's description of demonstrator `name` (DEFAULTS)."""
        if name == "search":
            return cls.DESCRIPTION
        return cls.DESCRIPTION.replace("hold-RIGHT+UP", "hold-RIGHT (jumps only where the look-ahead says so)")

    def __init__(self, num_envs: int, seed: int, distribution_mode: str = "hard", horizon: int = 32, replan: int = 8,
                 random_candidates: int = 8, deviation_margin: float = 2.0, default: int = _RIGHT_UP):
        if not 1 <= replan <= horizon:
            raise GenieInputError(f"search demonstrator: replan must be in 1..horizon ({horizon}), got {replan}")
        if default not in (_RIGHT_UP, _RIGHT):
            raise GenieInputError(f"search demonstrator: the default move must be RIGHT+UP or RIGHT, got {default}")
        self.num_envs, self.seed, self.horizon, self.replan = num_envs, seed, horizon, replan
        self.random_candidates, self.deviation_margin = random_candidates, deviation_margin
        self.library = _candidate_library(horizon, default)
        self.num_candidates = len(self.library) + random_candidates
        self.sim = procgen_env_class()(num=self.num_candidates, env_name="coinrun", distribution_mode=distribution_mode,
                                     num_threads=1)
        self.plans: list[list[int]] = [[] for _ in range(num_envs)]
        self.rngs: list[np.random.Generator | None] = [None] * num_envs
        self.sim_steps = 0

    def _random_sequences(self, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((self.random_candidates, self.horizon), np.int32)
        moves = np.array([_LEFT, _LEFT_UP, _NOOP, _UP, _RIGHT, _RIGHT_UP], np.int32)
        for r in range(self.random_candidates):
            t = 0
            while t < self.horizon:
                k = int(rng.geometric(1 / 6))  # held for 6 steps on average
                out[r, t:t + k] = moves[rng.integers(len(moves))]
                t += k
        return out

    def _search(self, state: bytes, i: int) -> list[int]:
        """The actions to play next in environment i, from its current state."""
        _, _, gx, gy = procgen_positions(state)
        cands = np.concatenate([self.library, self._random_sequences(self.rngs[i])])
        c, lib = len(cands), len(self.library)
        # preference of each candidate: 0 the default, 1 the library's deviations, 2 random sequences
        rank = np.where(np.arange(c) == 0, 0, np.where(np.arange(c) < lib, 1, 2))
        self.sim.set_state([state] * c)
        score, won_at = np.zeros(c), np.full(c, -1)
        alive = np.ones(c, bool)
        for t in range(self.horizon):
            self.sim.act(cands[:, t])
            rew, _, first = self.sim.observe()
            for k in np.flatnonzero(alive & first):  # this candidate's episode ended at step t
                if rew[k] > 0:  # reached the coin: the most preferred kind, then the earliest
                    score[k], won_at[k] = 1e7 * (3 - rank[k]) - t, t
                else:
                    score[k] = -1e6 + t  # died (or timed out)
                alive[k] = False
            if not alive.any():
                break
        self.sim_steps += c * (t + 1)
        if alive.any():
            states = self.sim.get_state()
            for k in np.flatnonzero(alive):
                x, y, _, _ = procgen_positions(states[k])
                score[k] = -abs(gx - x) - 0.5 * abs(gy - y) - self.deviation_margin * min(rank[k], 1) - (rank[k] == 2)
        best = int(np.argmax(score))  # ties: the earlier candidate (the library's order)
        if won_at[best] >= 0:  # commit to the whole way to the coin (the simulator is deterministic)
            return cands[best, :won_at[best] + 1].tolist()
        return cands[best, :self.replan].tolist()

    def __call__(self, env, first: np.ndarray) -> np.ndarray:
        """(num_envs,) raw actions for the current observation of the gym3 `env`; `first` (num_envs,) marks
        environments whose observation starts a new episode."""
        if first.any():
            infos = env.get_info()
            for i in np.flatnonzero(first):
                self.plans[i] = []
                self.rngs[i] = np.random.default_rng([self.seed, int(infos[i]["level_seed"])])
        need = [i for i in range(self.num_envs) if not self.plans[i]]
        if need:
            states = env.get_state()
            for i in need:
                if self.rngs[i] is None:  # an environment whose episode start we did not see
                    self.rngs[i] = np.random.default_rng([self.seed, int(env.get_info()[i]["level_seed"])])
                self.plans[i] = self._search(states[i], i)
        return np.array([p.pop(0) for p in self.plans], np.int64)
