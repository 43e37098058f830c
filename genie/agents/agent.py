"""Agent folders and the policies that play CoinRun: the cloned agents, random play and the demonstrator.

An agent folder holds everything it plays with (no pickle anywhere):

- `config.json`: the kind (`oracle` or `latent`), the policy config, the real action classes and the raw CoinRun
  action each class is played as, how actions are chosen (`act`: sample from or argmax of the policy; `decode`:
  sample from or argmax of the dictionary), the LAM fingerprint (latent) and the training recipe;
- `model.safetensors`: the policy network;
- `action_map.json` (latent agents): the latent → real map of genie.grounding fitted on the agent's N labelled
  transitions, for the LAM that labelled its training videos.

A latent agent is Genie §3.3's: its policy outputs a latent action; the map's dictionary (App. E) turns that code
into a real action by sampling from the real actions seen with it in the N labels (or taking the most frequent).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_pipelines.coinrun import RandomPolicy
from data_pipelines.coinrun_search import SearchExpert
from genie.agents.model import PolicyConfig, PolicyNet
from genie.core.atomic import disk_full_error, is_disk_full, replace_dir, temp_dir_beside, write_text
from genie.core.device import module_device
from genie.core.errors import GenieInputError
from genie.grounding import ACTION_MAP_NAME, ActionMap

AGENT_FORMAT = 1
KINDS = ("oracle", "latent")
CHOICES = ("sample", "argmax")
# Agents that need no folder: the baselines of Genie Fig. 15 and the demonstrator itself.
BASELINES = {
    "random": "uniform random over CoinRun's 15 actions, a fresh one every step",
    "held": "uniform random with held actions (geometric hold, mean 8 steps; genie data coinrun --action-repeat 8)",
    "right-up": "always RIGHT+UP: run right, jumping whenever on the ground (the demonstrator's default move)",
    "right": "always RIGHT: run right, never jumping (search-right's default move)",
    "search": SearchExpert.DESCRIPTION,
    "search-right": SearchExpert.describe("search-right"),
}
RIGHT_UP, RIGHT = 8, 7  # CoinRun's raw action ids of RIGHT+UP and RIGHT (data_pipelines.coinrun.ACTION_NAMES)


@dataclass
class Agent:
    """A loaded agent folder."""

    path: Path
    kind: str
    net: PolicyNet
    class_names: list[str]
    raw_action: np.ndarray  # (k,) the CoinRun action each real class is played as
    act: str
    decode: str
    amap: ActionMap | None
    config: dict

    @property
    def labels(self) -> int | None:
        return None if self.amap is None else self.amap.labels


def save_agent(out: str | Path, net: PolicyNet, config: dict, amap: ActionMap | None = None,
               overwrite: bool = False) -> Path:
    """Write an agent folder atomically (a hidden temporary folder, then a rename)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GenieInputError(f"{out}: --out exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GenieInputError(f"{out}: --out exists and is not empty (pass --overwrite to replace it)")
    tmp = temp_dir_beside(out)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "genie-agent"})
        write_text(tmp / "config.json", json.dumps(config, indent=1) + "\n")
        if amap is not None:
            write_text(tmp / ACTION_MAP_NAME, json.dumps(amap.to_dict(), indent=1) + "\n")
        return replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise disk_full_error(out) from None
        raise


def load_agent(path: str | Path, device: torch.device | str = "cpu") -> Agent:
    """An agent folder (see the module doc); every problem is one GenieInputError naming the folder."""
    p = Path(path)
    if not p.is_dir():
        raise GenieInputError(f"{p}: no such agent folder (or name a baseline: {', '.join(BASELINES)})")
    cfg_path = p / "config.json"
    if not cfg_path.is_file() or not (p / "model.safetensors").is_file():
        raise GenieInputError(f"{p}: not an agent folder (needs config.json and model.safetensors from genie agent train)")
    try:
        cfg = json.loads(cfg_path.read_text())
        if not isinstance(cfg, dict) or cfg.get("format") != AGENT_FORMAT or cfg.get("kind") not in KINDS:
            raise ValueError(f"not a genie agent config of format {AGENT_FORMAT}")
        pcfg = PolicyConfig.from_dict(cfg["policy"])
        names = [str(n) for n in cfg["class_names"]]
        raw = np.asarray(cfg["raw_action"], np.int64)
        if len(raw) != len(names):
            raise ValueError("raw_action and class_names differ in length")
        act, decode = cfg.get("act", "sample"), cfg.get("decode", "sample")
        if act not in CHOICES or decode not in CHOICES:
            raise ValueError(f"act and decode must be one of {', '.join(CHOICES)}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenieInputError(f"{cfg_path}: not a readable agent config ({type(e).__name__}: {e})") from None
    net = PolicyNet(pcfg)
    try:
        net.load_state_dict(load_file(str(p / "model.safetensors")))
    except (SafetensorError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise GenieInputError(f"{p}/model.safetensors: does not hold this agent's policy ({first})") from None
    amap = None
    if cfg["kind"] == "latent":
        amap = _load_map(p, cfg, pcfg, names)
    elif pcfg.num_outputs != len(names):
        raise GenieInputError(f"{cfg_path}: an oracle policy with {pcfg.num_outputs} outputs for {len(names)} classes")
    return Agent(p, cfg["kind"], net.to(device).eval(), names, raw, act, decode, amap, cfg)


def _load_map(p: Path, cfg: dict, pcfg: PolicyConfig, names: list[str]) -> ActionMap:
    path = p / ACTION_MAP_NAME
    if not path.is_file():
        raise GenieInputError(f"{p}: a latent agent needs its {ACTION_MAP_NAME} (the latent → real map)")
    try:
        amap = ActionMap.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenieInputError(f"{path}: not a readable action map ({type(e).__name__}: {e})") from None
    if amap.lam_sha256 != cfg.get("lam_sha256"):
        raise GenieInputError(f"{path}: fitted for another LAM than the one that labelled this agent's training "
                              "videos; refit it with genie agent train --policy-from")
    if amap.num_codes != pcfg.num_outputs or amap.class_names != names:
        raise GenieInputError(f"{path}: maps {amap.num_codes} codes to {len(amap.class_names)} classes; the policy has "
                              f"{pcfg.num_outputs} codes and {len(names)} classes")
    return amap


def _choose(probs: torch.Tensor, how: str, generator: torch.Generator) -> torch.Tensor:
    """(b, o) probabilities → (b,) indices: a draw (from `generator`) or the argmax."""
    if how == "argmax":
        return probs.argmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def dictionary_probs(amap: ActionMap) -> torch.Tensor:
    """(a, k) each latent code's distribution over real classes in the map's labels (Genie App. E); a code never seen
    labelled gets the distribution of all labels."""
    counts = torch.as_tensor(amap.counts, dtype=torch.float64)
    overall = counts.sum(0, keepdim=True)
    counts = torch.where(counts.sum(1, keepdim=True) > 0, counts, overall)
    return (counts / counts.sum(1, keepdim=True)).float()


class ClonedPolicy:
    """A policy callable (genie.agents.loop) of an agent folder: frames → its network → a latent code or a real class
    (`act`: sample or argmax) → for a latent, a real class from the dictionary (`decode`) → the raw CoinRun action."""

    def __init__(self, agent: Agent, act: str | None = None, decode: str | None = None):
        self.agent, self.act, self.decode = agent, act or agent.act, decode or agent.decode
        self.device = module_device(agent.net)
        self.table = None if agent.amap is None else dictionary_probs(agent.amap).to(self.device)
        self.raw = torch.as_tensor(agent.raw_action, device=self.device)

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, first: np.ndarray, generator: torch.Generator) -> np.ndarray:
        probs = self.agent.net(torch.from_numpy(frames).to(self.device)).float().softmax(-1)  # (b, o)
        out = _choose(probs, self.act, generator)
        if self.table is not None:
            out = _choose(self.table[out], self.decode, generator)  # latent code → real class
        return self.raw[out].cpu().numpy()


def baseline_policy(name: str, env, seed: int):
    """The policy callable of a baseline (BASELINES) for `env`: random play, or the search demonstrator, which looks
    ahead through env's simulator."""
    if name == "random" or name == "held":
        rp = RandomPolicy(env.num_envs, seed, 1.0 if name == "random" else 8.0)
        return lambda frames, first, generator: rp()
    if name in ("right-up", "right"):
        const = RIGHT_UP if name == "right-up" else RIGHT
        return lambda frames, first, generator: np.full(len(first), const, np.int64)
    if name in SearchExpert.DEFAULTS:
        expert = SearchExpert(env.num_envs, seed, default=SearchExpert.DEFAULTS[name])
        return lambda frames, first, generator: expert(env, first)
    raise GenieInputError(f"--agent {name!r}: no such folder or baseline ({', '.join(BASELINES)})")
