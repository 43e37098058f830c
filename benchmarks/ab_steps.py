"""Interleaved A/B of training steps: two code trees (or two settings) in one process, alternating step by step.

    python benchmarks/ab_steps.py --stage tokenizer [--side before=/tmp/genie-before --side after=.,compile ...]
        [--steps 8] [--distinct 4] [--tokens data/tokens] [--name NAME]

On a shared, loaded machine absolute timings drift by ±30% within minutes; alternating A and B steps in one
process exposes both to the same load, so their ratio stays usable. Each side (two or more; the first is the
reference) is the stage's LightningModule
of its own source tree (imported under its own copy of the packages), built from the stage's `cpu` YAML with
the same seed, trained on the same real batches with what Lightning's loop does per step: zero_grad,
training_step (self.log is a no-op here), backward, gradient clipping at the YAML's value, optimizer and
scheduler step (each tree's own configure_optimizers). Every step reseeds the global RNG, so the sides draw
the same masks. Reports the median step time of each side, its ratio to the first, every step's loss (with
`--distinct` = steps + warm-up, the loss curves of distinct batches: seeds for the spread) and the load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("genie", "tokenizer", "latent_actions", "dynamics", "data_pipelines")
CONFIGS = {"tokenizer": "configs/tokenizer/cpu.yaml", "lam": "configs/latent_actions/cpu.yaml",
           "dynamics": "configs/dynamics/cpu.yaml"}


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def load_tree(root: Path, extra: tuple[str, ...] = ()) -> dict:
    """Import the packages of the source tree at `root` (the stages, their training base, and the modules named in
    `extra`); returns its modules and leaves sys.modules as it was."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _ours(k)}
    sys.path.insert(0, str(root))
    try:
        import importlib

        import genie.stages  # noqa: F401
        from genie.core.registry import STAGES

        for stage in STAGES:  # every stage's config, model and module, so lazy imports find them loaded
            for kind in ("config", "model", "module"):
                genie.stages.stage_class(stage, kind)
        import genie.core.training  # noqa: F401
        import genie.nn  # noqa: F401

        for name in extra:
            importlib.import_module(name)
        tree = {k: v for k, v in sys.modules.items() if _ours(k)}
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    return tree


@contextlib.contextmanager
def active(tree: dict):
    """Make `tree`'s modules the ones `import` finds while its code runs (function-level imports included)."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _ours(k)}
    sys.modules.update(tree)
    try:
        yield
    finally:
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


class Side:
    """One side of the comparison: a stage module of one tree, its optimizer and scheduler."""

    def __init__(self, label: str, tree: dict, stage: str, recipe: dict, seed: int, max_steps: int,
                 compile_model: bool = False, optimizer: str = "own"):
        self.label, self.tree, self.times, self.losses = label, tree, [], []
        with active(tree):
            cls = tree["genie.stages"].stage_class(stage, "module")
            torch.manual_seed(seed)
            self.module = cls(**recipe["model"])
            self.module.log = self.module.log_dict = lambda *a, **k: None
            self.module._trainer = SimpleNamespace(max_steps=max_steps, estimated_stepping_batches=max_steps,
                                                   datamodule=None)
            self.module.train()
            conf = self.module.configure_optimizers()
            self.opt, self.sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
            if optimizer != "own":  # the same groups and hyper-parameters with another AdamW implementation
                flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}[optimizer]
                groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in self.opt.param_groups]
                self.opt = torch.optim.AdamW(groups, **flags)
                self.sched.optimizer = self.opt
            if compile_model:
                tree["genie.core.training"].compile_model(self.module.model)
        self.clip = recipe["trainer"].get("gradient_clip_val")

    def step(self, batch: dict, i: int, seed: int) -> float:
        with active(self.tree):
            torch.manual_seed(seed)
            t = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            loss = self.module.training_step(batch, i)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
            self.opt.step()
            self.sched.step()
            dt = time.perf_counter() - t
        self.losses.append(float(loss.detach()))
        return dt


class Batches:
    """Real training batches of the recipe's shape, batch i drawn from a generator seeded by i: the same for every
    side and every run (the data pipeline of the tree this script lives in; both trees have the same one)."""

    def __init__(self, stage: str, recipe: dict, tokens: str, distinct: int):
        from torch.utils.data import default_collate

        from data_pipelines.clips import ClipDataset

        self.collate = default_collate
        self.ds = ClipDataset(tokens if stage == "dynamics" else recipe["data"]["data"], "train", recipe["data"]["clip_len"])
        self.size, self.distinct, self.cache = recipe["data"]["batch_size"], distinct, {}

    def __getitem__(self, i: int) -> dict:
        i %= self.distinct
        if i not in self.cache:
            g = torch.Generator().manual_seed(i)
            self.cache = {i: self.collate([self.ds[int(j)] for j in torch.randint(len(self.ds), (self.size,), generator=g)])}
        return self.cache[i]


def parse_side(spec: str) -> dict:
    """'LABEL=TREE[,seed=S][,compile][,opt=fused|foreach|forloop]' -> Side arguments."""
    label, _, rest = spec.partition("=")
    tree, *opts = rest.split(",")
    out = {"label": label, "tree": tree, "seed": None, "compile_model": False, "optimizer": "own"}
    for o in opts:
        key, _, value = o.partition("=")
        if key == "seed":
            out["seed"] = int(value)
        elif key == "compile":
            out["compile_model"] = True
        elif key == "opt":
            out["optimizer"] = value
        else:
            raise SystemExit(f"unknown side option {o!r} in {spec!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=list(CONFIGS), required=True)
    ap.add_argument("--side", action="append", default=None,
                    help="LABEL=TREE[,seed=S][,compile][,opt=fused|foreach|forloop]; repeat (default: "
                         "before=/tmp/genie-before and after=this tree)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per side (after the warm-up steps)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--distinct", type=int, default=4, help="distinct batches, cycled (200 for a loss curve)")
    ap.add_argument("--seed", type=int, default=0, help="model seed of the sides that name none")
    ap.add_argument("--tokens", default="data/tokens")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    recipe = yaml.safe_load((ROOT / CONFIGS[a.stage]).read_text())
    data = Batches(a.stage, recipe, a.tokens, a.distinct)
    total = a.steps + a.warmup
    specs = [parse_side(x) for x in (a.side or ["before=/tmp/genie-before", f"after={ROOT}"])]
    trees: dict[str, dict] = {}
    sides = []
    for sp in specs:
        root = str(Path(sp["tree"]).resolve())
        trees.setdefault(root, load_tree(Path(root)))
        sides.append(Side(sp["label"], trees[root], a.stage, recipe, a.seed if sp["seed"] is None else sp["seed"], total,
                          sp["compile_model"], sp["optimizer"]))
    load = [os.getloadavg()[0]]
    warm: dict[str, list] = {}
    for i in range(total):
        batch = data[i]
        order = sides[i % len(sides):] + sides[:i % len(sides)]  # rotate who goes first
        for s in order:
            dt = s.step(batch, i, 1000 + i)
            (warm.setdefault(s.label, []) if i < a.warmup else s.times).append(dt)
        load.append(os.getloadavg()[0])
        print(f"step {i}: " + "  ".join(f"{s.label} {s.losses[-1]:.6f} ({(s.times or warm[s.label])[-1]:.2f} s)"
                                        for s in sides), flush=True)
    med = {s.label: statistics.median(s.times) for s in sides}
    frames = recipe["data"]["batch_size"] * recipe["data"]["clip_len"]
    ref = sides[0]
    res = {"settings": {**vars(a), "sides": specs, "threads": torch.get_num_threads(), "frames_per_step": frames},
           "load_1min": {"min": min(load), "max": max(load), "mean": statistics.mean(load)},
           "warmup_s": warm, "median_step_s": med, "frames_per_s": {k: frames / v for k, v in med.items()},
           "speedup_over_first": {s.label: med[ref.label] / med[s.label] for s in sides},
           "losses": {s.label: s.losses for s in sides},
           "first_step_rel_diff": {s.label: abs(s.losses[0] - ref.losses[0]) / abs(ref.losses[0]) for s in sides}}
    print(f"{a.stage}: " + ", ".join(f"{s.label} {med[s.label]:.3f} s/step (x{res['speedup_over_first'][s.label]:.3f}, "
                                     f"first loss rel. diff {res['first_step_rel_diff'][s.label]:.1e})" for s in sides)
          + f"; load {res['load_1min']}")
    if a.name:
        save(a.name, res)


if __name__ == "__main__":
    main()
