"""Where a training step's time goes in the real `genie train` loop of each stage's `cpu` recipe (torch.profiler).

    python benchmarks/profile_train.py [--stage tokenizer lam dynamics] [--skip 3] [--steps 6]
        [--tokens data/tokens] [--threads N] [--name profile_train] [--extra "--compile true"] [--tree DIR]

Each stage runs `genie train STAGE --config configs/<stage>/cpu.yaml` (plus a throw-away root dir) for
skip + steps + 1 training steps; the steps skip..skip+steps-1 are recorded with torch.profiler, and the
validation and checkpoint the recipe runs every `val_check_interval` steps are moved to the last recorded
step, so the window holds one of each (validation on 2 batches, its time scaled to the recipe's whole
validation set). The dynamics stage trains on a token dataset (`--tokens`, made by
`genie tokenize`).

Time is split two ways:
- by loop phase: Lightning's own profiler actions (data fetch, training_step, backward, optimizer step with
  gradient clipping, callbacks, validation, checkpoint), each by exclusive time;
- by model part, for the forward and the backward of the training step: forward hooks open one
  `record_function` scope per part (attention, MLP, norms, embed/conv, quantizer, head, glue) and each
  backward node is charged to the part whose forward op created it (the autograd sequence number).
Validation and checkpointing are charged per training step at the recipe's interval (one run every
`val_check_interval` steps). Writes benchmarks/results/<name>_<stage>.json and <name>.md (top entries).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.profilers import Profiler  # noqa: E402
from torch.autograd.profiler import record_function  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.common import RESULTS, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"tokenizer": "configs/tokenizer/cpu.yaml", "lam": "configs/latent_actions/cpu.yaml",
           "dynamics": "configs/dynamics/cpu.yaml"}
EMBED = {"stem", "patch_embed", "encoder_patch_embed", "decoder_patch_embed", "token_embed", "prev_embed", "action_embed"}
HEAD = {"to_pixels", "refine", "head", "copy_gate", "pool_score"}
SCOPE = "genie::"
VAL_BATCHES = 2  # validation batches in the window; its cost is scaled to the recipe's whole validation set
PL = "[pl]"


def part_of(name: str, module: torch.nn.Module) -> str | None:
    """The model part a submodule's own ops are charged to (None: its parent's part)."""
    from genie.nn.attention import MLP, Attention, LayerNorm
    from genie.nn.quantizer import FiniteScalarQuantizer, VectorQuantizer
    from genie.nn.st_block import STBlock, STTransformer

    leaf = name.rsplit(".", 1)[-1]
    if isinstance(module, Attention):
        return "attention: sdpa and head split/merge"
    if name.endswith(("attn_spatial.qkv", "attn_temporal.qkv", "attn_spatial.proj", "attn_temporal.proj")):
        return "attention: qkv and out projections"
    if isinstance(module, MLP):
        return "mlp"
    if isinstance(module, LayerNorm):
        return "layer norm"
    if isinstance(module, STBlock):
        return "st block: layout rearranges, residual adds"
    if isinstance(module, STTransformer):
        return "transformer: position embeddings"
    if isinstance(module, (VectorQuantizer, FiniteScalarQuantizer)):
        return "quantizer (vq/fsq)"
    if name == "":
        return "model glue: patchify, concat, scatter"
    if "." not in name and leaf in EMBED:
        return "embed: patches, conv stem, tokens"
    if "." not in name and leaf in HEAD:
        return "head: pixels/conv refine/logits"
    return None


class ModelScopes(Callback):
    """Opens a `genie::<part>` record_function around each model part's forward (see `part_of`)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        stack: list = []

        def enter(scope):
            def hook(module, args):
                rf = record_function(scope)
                rf.__enter__()
                stack.append(rf)
            return hook

        def leave(module, args, output):
            stack.pop().__exit__(None, None, None)

        for name, module in pl_module.model.named_modules():
            part = part_of(name, module)
            if part is not None:
                module.register_forward_pre_hook(enter(SCOPE + part))
                module.register_forward_hook(leave)


class WindowProfiler(Profiler):
    """Lightning profiler: every Lightning action becomes a `[pl]<action>` scope, and torch.profiler records
    from the data fetch of training batch `skip` to that of batch `skip + steps` (validation included)."""

    def __init__(self, out: str, skip: int = 3, steps: int = 6):
        super().__init__()
        self.out, self.skip, self.steps = out, skip, steps
        self._open: dict[str, list] = collections.defaultdict(list)
        self._fetches = 0
        self._prof = None
        self._t0 = None

    def start(self, action_name: str) -> None:
        if action_name.endswith("train_dataloader_next"):
            if self._fetches == self.skip:
                self._prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
                self._prof.__enter__()
                self._t0 = time.perf_counter()
            elif self._fetches == self.skip + self.steps and self._prof is not None:
                self._finish()
            self._fetches += 1
        rf = record_function(PL + action_name)
        rf.__enter__()
        self._open[action_name].append(rf)

    def stop(self, action_name: str) -> None:
        if self._open.get(action_name):
            self._open[action_name].pop().__exit__(None, None, None)

    def _finish(self) -> None:
        wall = time.perf_counter() - self._t0
        self._prof.__exit__(None, None, None)
        report = analyse(self._prof.events(), wall, self.steps)
        Path(self.out).write_text(json.dumps(report))
        self._prof = None


def _ancestor(event, prefix: str):
    e = event.cpu_parent
    while e is not None and not e.name.startswith(prefix):
        e = e.cpu_parent
    return e


def phase_of(action: str) -> str:
    """Group Lightning's action names into the loop phases the report names."""
    a = action[len(PL):]
    if "val" in a.lower() and "dataloader" not in a.lower() or a.endswith("val_next"):
        return "validation"
    if "ModelCheckpoint" in a or "save_checkpoint" in a:
        return "checkpoint"
    if a.endswith("train_dataloader_next"):
        return "data loading"
    if a.endswith(".training_step"):
        return "forward + loss + self.log (training_step)"
    if a.endswith(".backward"):
        return "backward"
    if "optimizer_step" in a or "clip_gradients" in a or "optimizer_zero_grad" in a:
        return "optimizer step, grad clipping, zero_grad"
    if a.startswith("[Callback]"):
        return "callbacks (throughput, lr monitor, resume state)"
    return "Lightning loop overhead"


def analyse(events, wall: float, steps: int) -> dict:
    """Per training step (ms): loop phases, model parts (forward and backward of the training step), the top ops
    of the training step (forward, backward, optimizer) with their commonest input shapes, and of validation."""
    phases: dict[str, float] = collections.Counter()
    for e in events:
        if e.name.startswith(PL):  # exclusive time of each action: its total less its child actions'
            child = sum(c.cpu_time_total for c in _descendant_actions(e))
            phases[phase_of(e.name)] += (e.cpu_time_total - child) / 1e3
    phases["outside any Lightning action"] = wall * 1e3 - sum(phases.values())

    def phase(e) -> str:
        action = e if e.name.startswith(PL) else _ancestor(e, PL)
        return phase_of(action.name) if action is not None else ""

    train_phases = {"forward + loss + self.log (training_step)", "backward", "optimizer step, grad clipping, zero_grad"}
    # forward: self time under the nearest genie:: scope (or the training step, outside the model)
    seq_part: dict[int, str] = {}
    fwd: dict[str, float] = collections.Counter()
    bwd: dict[str, float] = collections.Counter()
    ops: dict[str, float] = collections.Counter()
    val_ops: dict[str, float] = collections.Counter()
    shapes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for e in events:
        if e.name.startswith((PL, SCOPE, "autograd::engine::evaluate_function")):
            continue
        p = phase(e)
        if p in train_phases:
            ops[e.name] += e.self_cpu_time_total / 1e3
            shapes[e.name][str(e.input_shapes)] += e.self_cpu_time_total / 1e3
        elif p == "validation":
            val_ops[e.name] += e.self_cpu_time_total / 1e3
        if p != "forward + loss + self.log (training_step)" or _ancestor(e, "autograd::engine") is not None:
            continue
        scope = _ancestor(e, SCOPE)
        part = scope.name[len(SCOPE):] if scope is not None else "loss, metrics, self.log (outside the model)"
        fwd[part] += e.self_cpu_time_total / 1e3
        if e.sequence_nr >= 0 and e.sequence_nr not in seq_part:
            seq_part[e.sequence_nr] = part
    for e in events:
        if not e.name.startswith("autograd::engine::evaluate_function") or phase(e) != "backward":
            continue
        if "AccumulateGrad" in e.name:
            part = "gradient accumulation into .grad"
        else:
            part = seq_part.get(e.sequence_nr, "unattributed")
        bwd[part] += e.cpu_time_total / 1e3

    def per_step(d: dict) -> dict:
        return {k: round(v / steps, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    top = dict(list(per_step(ops).items())[:25])
    return {"window_s": wall, "steps": steps, "phases_ms_per_step": per_step(phases),
            "forward_ms_per_step": per_step(fwd), "backward_ms_per_step": per_step(bwd),
            "top_ops_ms_per_step": top,
            "top_op_shapes_ms_per_step": {k: dict(list(per_step(shapes[k]).items())[:4]) for k in list(top)[:10]},
            "validation_top_ops_ms_per_run": {k: round(v, 1) for k, v in collections.Counter(val_ops).most_common(10)}}


def _descendant_actions(event):
    """The nearest [pl] actions below `event` (not their own descendants)."""
    out, todo = [], list(event.cpu_children)
    while todo:
        c = todo.pop()
        if c.name.startswith(PL):
            out.append(c)
        else:
            todo.extend(c.cpu_children)
    return out


def run_stage(stage: str, skip: int, steps: int, tokens: str | None, extra: list[str], workdir: Path) -> dict:
    from genie.train import run_train

    recipe = yaml.safe_load((ROOT / CONFIGS[stage]).read_text())
    out = workdir / f"{stage}.json"
    overlay = workdir / f"{stage}-profile.yaml"
    # compiled blocks run as inductor kernels: no per-part scopes inside them (hooks would break the graphs)
    compiled = "--compile" in extra and extra[extra.index("--compile") + 1].lower() == "true"
    overlay.write_text(yaml.safe_dump({"trainer": {
        "profiler": {"class_path": "benchmarks.profile_train.WindowProfiler",
                     "init_args": {"out": str(out), "skip": skip, "steps": steps}},
        "callbacks": [] if compiled else [{"class_path": "benchmarks.profile_train.ModelScopes"}]}}))
    args = ["--config", str(ROOT / CONFIGS[stage]), "--config", str(overlay),
            "--trainer.default_root_dir", str(workdir / stage), "--trainer.enable_progress_bar", "false",
            "--trainer.max_steps", str(skip + steps + 1), "--trainer.val_check_interval", str(skip + steps),
            "--trainer.max_time", "null", "--trainer.limit_val_batches", str(VAL_BATCHES)]
    if stage == "dynamics" and tokens:
        args += ["--data.data", tokens]
    run_train(stage, args + extra)
    report = json.loads(out.read_text())
    t = recipe["trainer"]
    val_every, frames = t["val_check_interval"], recipe["data"]["batch_size"] * recipe["data"]["clip_len"]
    ph = report["phases_ms_per_step"]
    # the window holds one validation and one checkpoint in `steps` steps; the recipe has one every val_every
    once = {k: ph.pop(k, 0.0) * steps for k in ("validation", "checkpoint")}
    # the window validates on VAL_BATCHES batches; the recipe's validation runs over all of its val_clips
    full = math.ceil(recipe["data"]["val_clips"] / recipe["data"]["batch_size"])
    once["validation"] *= full / min(VAL_BATCHES, full)
    for k, v in once.items():
        ph[f"{k} (one run every {val_every} steps, per step)"] = round(v / val_every, 2)
    step_ms = sum(ph.values())
    report.update(stage=stage, config=CONFIGS[stage], extra_args=extra, frames_per_step=frames,
                  validation_run_ms=round(once["validation"], 1), checkpoint_ms=round(once["checkpoint"], 1),
                  step_ms_at_recipe_intervals=round(step_ms, 1), frames_per_s=round(frames / step_ms * 1e3, 2),
                  threads=torch.get_num_threads())
    report["phases_ms_per_step"] = dict(sorted(ph.items(), key=lambda kv: -kv[1]))
    return report


def markdown(reports: list[dict], top: int = 8) -> str:
    lines = [f"# Training-step profile of the `cpu` recipes ({reports[0]['threads']} thread(s))", "",
             "Per training step of the real `genie train` loop, validation and checkpoint charged at the recipe's "
             "interval; `python benchmarks/profile_train.py` (torch.profiler, CPU).", ""]
    for r in reports:
        total = r["step_ms_at_recipe_intervals"]
        lines += [f"## {r['stage']} ({r['config']}{' ' + ' '.join(r['extra_args']) if r['extra_args'] else ''}): "
                  f"{total:.0f} ms/step, {r['frames_per_s']:.1f} frames/s", "",
                  "| loop phase | ms/step | share |", "|---|---|---|"]
        lines += [f"| {k} | {v:.1f} | {v / total:.0%} |" for k, v in list(r["phases_ms_per_step"].items())[:top + 2]]
        fb = collections.Counter(r["forward_ms_per_step"])
        fb.update(r["backward_ms_per_step"])
        lines += ["", "| model part (forward + backward) | forward ms | backward ms | share of step |", "|---|---|---|---|"]
        for k, v in fb.most_common(top + 2):
            lines.append(f"| {k} | {r['forward_ms_per_step'].get(k, 0):.1f} | {r['backward_ms_per_step'].get(k, 0):.1f} "
                         f"| {v / total:.0%} |")
        lines += ["", "| op (self time) | ms/step |", "|---|---|"]
        lines += [f"| `{k}` | {v:.1f} |" for k, v in list(r["top_ops_ms_per_step"].items())[:top]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--skip", type=int, default=3, help="training steps before the recorded window")
    ap.add_argument("--steps", type=int, default=6, help="recorded training steps")
    ap.add_argument("--tokens", default="data/tokens", help="token dataset for the dynamics stage (genie tokenize)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--extra", default="", help="more `genie train` arguments, e.g. '--compile true'")
    ap.add_argument("--tree", default=None, help="profile the code of another source tree (e.g. a worktree of an "
                    "earlier commit) with this script")
    ap.add_argument("--name", default="profile_train")
    a = ap.parse_args()
    sys.modules.setdefault("benchmarks.profile_train", sys.modules[__name__])  # the YAML's class paths: this module
    if a.tree:  # its packages first
        sys.path.insert(0, str(Path(a.tree).resolve()))
    if a.threads:
        torch.set_num_threads(a.threads)
    reports = []
    with tempfile.TemporaryDirectory(prefix="genie-profile-") as tmp:
        for stage in a.stage:
            r = run_stage(stage, a.skip, a.steps, a.tokens, a.extra.split(), Path(tmp))
            save(f"{a.name}_{stage}", r)
            reports.append(r)
    text = markdown(reports)
    (RESULTS / f"{a.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
