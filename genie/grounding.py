"""From latent to real actions: the maps of Genie §3.3 / App. E, fitted on a few labelled transitions.

A LAM learns its actions without labels. To drive a real game with them, or to score how well they agree with
the real controls, each latent must be tied to real actions from a small labelled set:

- the **dictionary** (Genie App. E): for each latent code, the distribution of the real actions seen with it;
  a code maps to its most frequent one;
- the **linear map**: a multinomial logistic regression from the LAM's continuous pre-quantisation latent
  (what the VQ rounds to a code) to the real action: what the encoder knows, before the 8-code bottleneck.

Both are fitted on labelled transitions of *training* levels and scored on held-out ones, beside always-the-
majority. `genie ground` writes the fitted map as `action_map.json` next to the LAM; `genie play`, `genie
generate --real-actions` and the agents read it back. `genie evaluate` reports the same accuracies for a LAM.

Shapes: `n` transitions, `d` latent width, `a` latent codes, `k` real action classes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_pipelines.clips import ClipDataset
from genie.core.atomic import write_text
from genie.core.device import module_device
from genie.core.errors import GenieInputError
from genie.core.metrics import merge_actions, merged_action_table

ACTION_MAP_NAME = "action_map.json"
ACTION_MAP_FORMAT = 1
# The label budgets `genie ground` reports (Genie §3.3 shows 200 labels suffice for CoinRun).
LABEL_BUDGETS = (25, 100, 200, 1000, 5000)


@dataclass
class Transitions:
    """Labelled transitions as the LAM sees them: latents (n, d) fp32, codes (n,) and real classes (n,) int64."""

    latents: np.ndarray
    codes: np.ndarray
    labels: np.ndarray
    ceiling: np.ndarray | None = None  # (n,) the supervised inverse-dynamics model's predictions, when asked for

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Transitions:
        return Transitions(self.latents[idx], self.codes[idx], self.labels[idx],
                           None if self.ceiling is None else self.ceiling[idx])


def class_names(card: dict) -> list[str]:
    """Names of the real action classes scored: each merged class is named by its first raw action."""
    names = [str(n) for n in card.get("action_names") or range(int(card.get("num_actions", 0)))]
    table = merged_action_table(card)
    if table is None:
        return names
    return [names[int(np.flatnonzero(table == m)[0])] for m in range(int(table.max()) + 1)]


@torch.no_grad()
def collect_transitions(lam, data: str | Path, split: str, num: int, seed: int = 0, batch: int = 8,
                        progress=None, inverse_dynamics=None) -> Transitions:
    """At least `num` labelled transitions of `data`'s `split` (all its clips' transitions if fewer), from a
    fixed seeded set of whole clips of the LAM's length run through the LAM in eval mode. With `inverse_dynamics` (the
    supervised ceiling, genie.ceiling.InverseDynamicsModel) also its predicted class of each transition."""
    ds = ClipDataset(data, split, clip_len=lam.config.num_frames, seed=seed)
    if not ds.has_actions:
        raise GenieInputError(f"{data}: the dataset has no true actions to ground latent actions in")
    per_clip = lam.config.num_frames - 1
    clips = min(len(ds), math.ceil(num / per_clip))
    ds = ClipDataset(data, split, clip_len=lam.config.num_frames, num_clips=clips, seed=seed)
    device = module_device(lam)
    lat, codes, raw, ceiling, keys = [], [], [], [], []
    if inverse_dynamics is not None:
        inverse_dynamics = inverse_dynamics.to(device)
    for i in range(0, len(ds), batch):
        items = [ds[j] for j in range(i, min(len(ds), i + batch))]
        video = torch.stack([it["video"] for it in items]).to(device)
        z = lam.encode_latents(video)  # (b, t-1, d)
        lat.append(z.flatten(0, 1).float().cpu())
        codes.append(lam.quantizer(z).indices.flatten().cpu())
        raw.append(torch.stack([it["actions"] for it in items]).flatten())
        keys += [(it["episode_id"], it["start"] + k) for it in items for k in range(per_clip)]
        if inverse_dynamics is not None:
            ceiling.append(inverse_dynamics.predict_clip(video).flatten().cpu())
        if progress:
            progress(len(items))
    # Clips may overlap: each transition counts once (its first clip's reading).
    _, first = np.unique(np.array(keys, dtype=np.int64).reshape(-1, 2), axis=0, return_index=True)
    keep = np.sort(first)
    labels = merge_actions(torch.cat(raw).numpy(), ds.card).astype(np.int64)
    out = Transitions(torch.cat(lat).numpy(), torch.cat(codes).numpy().astype(np.int64), labels,
                      torch.cat(ceiling).numpy().astype(np.int64) if ceiling else None)
    return out.take(keep)


def fit_dictionary(codes: np.ndarray, labels: np.ndarray, num_codes: int, num_classes: int) -> np.ndarray:
    """Genie App. E: counts (a, k) of each real class seen with each code."""
    table = np.zeros((num_codes, num_classes), np.float64)
    np.add.at(table, (codes, labels), 1)
    return table


def dictionary_predict(counts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each code → its most frequent real class; a code never seen labelled → the most frequent class overall."""
    fallback = int(counts.sum(0).argmax())
    best = np.where(counts.sum(1) > 0, counts.argmax(1), fallback)
    return best[codes]


@dataclass
class LinearMap:
    """Logistic regression on standardised latents: class = argmax(((z - mean) / std) @ weight.T + bias)."""

    mean: np.ndarray  # (d,)
    std: np.ndarray  # (d,)
    weight: np.ndarray  # (k, d)
    bias: np.ndarray  # (k,)

    def logits(self, latents: np.ndarray) -> np.ndarray:
        return ((latents - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, latents: np.ndarray) -> np.ndarray:
        return self.logits(latents).argmax(-1)

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("mean", "std", "weight", "bias")}

    @classmethod
    def from_dict(cls, d: dict) -> LinearMap:
        return cls(*(np.asarray(d[k], np.float64) for k in ("mean", "std", "weight", "bias")))


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def fit_linear(latents: np.ndarray, labels: np.ndarray, num_classes: int, l2: float | None = None,
               iters: int = 100, folds: int = 3) -> LinearMap:
    """Multinomial logistic regression (L-BFGS, L2 penalty `l2` on the weights) on standardised latents.
    `l2` None picks it from L2_GRID by `folds`-fold cross-validation on the labelled set itself (with 200 labels
    and 128 latent dims an unregularised fit scores below always-the-majority on held-out levels).
    Deterministic: full batch from a zero start, folds from a fixed permutation."""
    if l2 is None:
        l2 = _cross_validated_l2(latents, labels, num_classes, iters, folds)
    x = torch.as_tensor(latents, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.as_tensor(labels, dtype=torch.long)
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearMap(mean.numpy(), std.numpy(), w.detach().numpy(), b.detach().numpy())


def _cross_validated_l2(latents: np.ndarray, labels: np.ndarray, num_classes: int, iters: int, folds: int) -> float:
    n = len(labels)
    folds = min(folds, n)
    if folds < 2:
        return L2_GRID[-1]
    part = np.random.default_rng(0).permutation(n) % folds
    scores = []
    for l2 in L2_GRID:
        hits = 0
        for f in range(folds):
            tr, te = part != f, part == f
            m = fit_linear(latents[tr], labels[tr], num_classes, l2=l2, iters=iters)
            hits += int((m.predict(latents[te]) == labels[te]).sum())
        scores.append(hits)
    return L2_GRID[int(np.argmax(scores))]  # ties go to the weaker penalty listed first


def grounding_table(fit: Transitions, held_out: Transitions, num_codes: int, num_classes: int,
                    budgets=LABEL_BUDGETS, seed: int = 0) -> list[dict]:
    """Held-out accuracy of the dictionary and the linear map fitted on the first N of a seeded shuffle of `fit`,
    for each N in `budgets` that `fit` holds (nested label sets, so the curve is monotone in the data)."""
    order = np.random.default_rng(seed).permutation(len(fit))
    rows = []
    for n in budgets:
        if n > len(fit):
            continue
        part = fit.take(order[:n])
        majority = int(np.bincount(part.labels, minlength=num_classes).argmax())
        counts = fit_dictionary(part.codes, part.labels, num_codes, num_classes)
        linear = fit_linear(part.latents, part.labels, num_classes)
        rows.append({"labels": n,
                     "dictionary_accuracy": float((dictionary_predict(counts, held_out.codes) == held_out.labels).mean()),
                     "linear_accuracy": float((linear.predict(held_out.latents) == held_out.labels).mean()),
                     "majority_accuracy": float((held_out.labels == majority).mean())})
    return rows


def lam_fingerprint(lam) -> str:
    """sha256 of the LAM's weights (state dict in name order): a map fitted for one LAM is refused by another."""
    h = hashlib.sha256()
    for name, t in sorted(lam.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# pseudo-transitions behind each code's action shares when a real action picks its latent (ActionMap.class_to_code)
KEY_PRIOR = 5.0


@dataclass
class ActionMap:
    """A fitted latent ↔ real action map for one LAM (written as `action_map.json`)."""

    class_names: list[str]
    counts: np.ndarray  # (a, k) dictionary counts
    linear: LinearMap
    lam_sha256: str
    labels: int
    source: dict

    @property
    def num_codes(self) -> int:
        return self.counts.shape[0]

    def code_to_class(self) -> np.ndarray:
        """(a,) the real class each latent code stands for (dictionary argmax)."""
        return dictionary_predict(self.counts, np.arange(self.num_codes))

    def class_to_code(self) -> dict[str, int | None]:
        """Real class name → the latent to press for it: among the codes labelled with that action, the one whose
        labelled transitions are most often that action (largest P(action | code), smoothed by KEY_PRIOR
        pseudo-transitions spread as the actions are, so a code labelled once does not win on one count); None for
        a class never seen labelled. Not the code seen most often beside the action: the LAM's frequent "nothing
        happens" code would take every rare action (on CoinRun LEFT and DOWN both went to the NOOP code)."""
        counts = np.asarray(self.counts, dtype=np.float64)  # (codes, classes)
        prior = counts.sum(0) / max(counts.sum(), 1.0)
        share = (counts + KEY_PRIOR * prior) / (counts.sum(1, keepdims=True) + KEY_PRIOR)
        out = {}
        for k, name in enumerate(self.class_names):
            seen = counts[:, k] > 0
            out[name] = int(np.where(seen, share[:, k], -1.0).argmax()) if seen.any() else None
        return out

    def latent_for(self, name: str) -> int:
        """The latent code to press for real action `name` (case-insensitive); one clear error otherwise."""
        lookup = {n.upper(): n for n in self.class_names}
        key = lookup.get(name.strip().upper())
        if key is None:
            raise GenieInputError(f"unknown real action {name!r}; the map knows {', '.join(self.class_names)}")
        code = self.class_to_code()[key]
        if code is None:
            raise GenieInputError(f"real action {key} was never seen in the map's {self.labels} labelled transitions")
        return code

    def to_dict(self) -> dict:
        return {"format": ACTION_MAP_FORMAT, "lam_sha256": self.lam_sha256, "labels": self.labels,
                "class_names": self.class_names, "dictionary_counts": self.counts.tolist(),
                "code_to_action": [self.class_names[k] for k in self.code_to_class()],
                "action_to_code": self.class_to_code(), "linear": self.linear.to_dict(), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> ActionMap:
        return cls(list(d["class_names"]), np.asarray(d["dictionary_counts"], np.float64), LinearMap.from_dict(d["linear"]),
                   str(d["lam_sha256"]), int(d["labels"]), dict(d.get("source", {})))


def fit_action_map(fit: Transitions, names: list[str], num_codes: int, labels: int, lam_sha256: str,
                   source: dict, seed: int = 0) -> ActionMap:
    """The map from the first `labels` transitions of a seeded shuffle of `fit` (the same draw as grounding_table)."""
    if labels > len(fit):
        raise GenieInputError(f"--labels {labels} is more than the {len(fit)} labelled transitions available")
    part = fit.take(np.random.default_rng(seed).permutation(len(fit))[:labels])
    k = len(names)
    return ActionMap(names, fit_dictionary(part.codes, part.labels, num_codes, k), fit_linear(part.latents, part.labels, k),
                     lam_sha256, labels, source)


def map_path(model_dir: str | Path) -> Path:
    """Where a model folder keeps its map: beside the LAM (a world-model folder's lam/, or a LAM export itself)."""
    p = Path(model_dir)
    return (p / "lam" / ACTION_MAP_NAME) if (p / "lam").is_dir() else p / ACTION_MAP_NAME


def save_action_map(amap: ActionMap, model_dir: str | Path) -> Path:
    path = map_path(model_dir)
    write_text(path, json.dumps(amap.to_dict(), indent=1) + "\n")
    return path


def load_action_map(model_dir: str | Path, lam=None, required: bool = False) -> ActionMap | None:
    """The model folder's map, or None when it has none (an error when `required`). With `lam`, a map fitted for
    another LAM is refused with one line."""
    path = map_path(model_dir)
    if not path.is_file():
        if required:
            raise GenieInputError(f"{model_dir}: no {ACTION_MAP_NAME}; fit one with genie ground --model {model_dir} --data DIR")
        return None
    try:
        amap = ActionMap.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GenieInputError(f"{path}: not a readable action map ({type(e).__name__}: {e})") from None
    if lam is not None:
        if amap.num_codes != lam.num_actions:
            raise GenieInputError(f"{path}: fitted for a LAM with {amap.num_codes} codes, this one has {lam.num_actions}")
        if amap.lam_sha256 != lam_fingerprint(lam):
            raise GenieInputError(f"{path}: fitted for another LAM (weights differ); refit it with genie ground")
    return amap


def load_lam(model_dir: str | Path):
    """The LAM of a world-model folder (its lam/) or of a LAM export folder."""
    from genie.export import load_export

    p = Path(model_dir)
    if not p.is_dir():
        raise GenieInputError(f"{p}: no such model folder")
    return load_export(p / "lam" if (p / "lam").is_dir() else p, "lam")


def ground(model_dir: str | Path, data: str | Path, labels: int = 200, split: str | None = None, seed: int = 0,
           held_out_clips: int = 128, ceiling: bool = True, device: str = "auto", progress: bool = True,
           probe_cache: str | Path | None = None) -> dict:
    """Fit the latent → real map of the LAM in `model_dir` from `labels` labelled transitions of `data`'s train
    split, write it as action_map.json beside the LAM, and score every label budget (LABEL_BUDGETS) on held-out
    transitions (`split`: default test, else val) beside always-the-majority and, with `ceiling`, the supervised
    inverse-dynamics ceiling trained on the whole labelled train split (genie.ceiling, cached)."""
    from tqdm.auto import tqdm

    from data_pipelines.storage import pick_split, read_card
    from genie.ceiling import ceiling_for
    from genie.core.device import resolve_device

    if labels < 1:
        raise GenieInputError(f"--labels must be >= 1, got {labels}")
    lam = load_lam(model_dir)
    card = read_card(data)
    if not card.get("has_actions"):
        raise GenieInputError(f"{data}: the dataset has no true actions to ground latent actions in")
    if not (card.get("splits", {}).get("train") or {}).get("episodes"):
        raise GenieInputError(f"{data}: no labelled train split to fit the map on")
    split, note = pick_split(data, split)
    if split == "train":
        raise GenieInputError(f"{data}: the map is scored on held-out levels; the data needs a val or test split "
                              "(or pass --split val|test)")
    if note and progress:
        print(note)
    dev = resolve_device(device)
    lam = lam.to(dev).eval()
    bar = tqdm(unit="clip", desc="grounding", dynamic_ncols=True, disable=not progress)
    try:
        # overlapping clips are counted once, so ask for a tenth more than the largest budget
        fit = collect_transitions(lam, data, "train", math.ceil(1.1 * max(labels, max(LABEL_BUDGETS))), seed,
                                  progress=bar.update)
        if labels > len(fit):
            raise GenieInputError(f"--labels {labels} is more than the {len(fit)} labelled transitions in {data}'s "
                                  "train split")
        idm, idm_info = (None, None)
        if ceiling:
            idm, idm_info = ceiling_for(data, seed=seed, device=dev, cache_dir=probe_cache, progress=progress)
        ds_clips = min(held_out_clips, len(ClipDataset(data, split, clip_len=lam.config.num_frames)))
        held = collect_transitions(lam, data, split, ds_clips * (lam.config.num_frames - 1), seed,
                                   progress=bar.update, inverse_dynamics=idm)
    finally:
        bar.close()  # before any error line, so it starts a line of its own
    names = class_names(card)
    k = len(names)
    rows = grounding_table(fit, held, lam.num_actions, k, LABEL_BUDGETS, seed)
    source = {"data": str(data), "split": "train", "held_out_split": split, "seed": seed}
    amap = fit_action_map(fit, names, lam.num_actions, labels, lam_fingerprint(lam), source, seed)
    path = save_action_map(amap, model_dir)
    res = {"model": str(model_dir), "data": str(data), "held_out_split": split, "held_out_transitions": len(held),
           "labelled_available": len(fit), "rows": rows, "action_map": str(path), "map_labels": labels,
           "code_to_action": [names[c] for c in amap.code_to_class()], "action_to_code": amap.class_to_code()}
    if held.ceiling is not None:
        res["supervised_ceiling_accuracy"] = float((held.ceiling == held.labels).mean())
        res["supervised_ceiling"] = idm_info
    return res


def grounding_markdown(res: dict) -> str:
    """The grounding table (N labels → held-out accuracy of both maps, majority, ceiling) as markdown."""
    ceil = res.get("supervised_ceiling_accuracy")
    rows = ["| labels | dictionary (Genie App. E) | linear map on the continuous latent | always the majority | "
            "supervised ceiling |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        rows.append(f"| {r['labels']} | {r['dictionary_accuracy']:.3f} | {r['linear_accuracy']:.3f} | "
                    f"{r['majority_accuracy']:.3f} | {'n/a' if ceil is None else f'{ceil:.3f}'} |")
    return "\n".join(rows) + "\n"
