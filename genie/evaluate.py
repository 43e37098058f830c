"""Evaluation of whatever stages a model folder holds (architecture §8).

- tokenizer: reconstruction PSNR, SSIM, codebook usage and perplexity;
- LAM: code usage; with true actions, NMI and linear-probe accuracy against them, each next to the
  same figure with shuffled labels;
- world model: rollout PSNR/SSIM per horizon step from 1 prompt frame with LAM-inferred actions, the
  copy-last-frame baseline, and ΔtPSNR (Genie §3: inferred minus random actions) with a 95% interval;
  copy-last in token space and the tokenizer's reconstruction (what a copy-only / a perfect dynamics model shows);
  the same inside the card's agent box; the counterfactual action margin.

Each stage's figures are computed here once, into its result type (genie.eval_results: JSON and markdown rows).
Clips are a fixed, seeded subset of the split, so the same seed gives the same numbers.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from data_pipelines.clips import ClipDataset
from data_pipelines.storage import pick_split, read_card
from genie.acting.heads import head_examples, load_heads, score_heads
from genie.ceiling import ceiling_for, check_same_classes
from genie.core.device import generator_for, module_device, resolve_device, to_device
from genie.core.errors import GenieInputError
from genie.core.metrics import (  # noqa: F401 (LEVEL_TYPES, token_stability_counts: genie.evaluate's names too)
    LEVEL_TYPES,
    UNCHANGED_PATCH_THRESHOLD,
    action_components,
    agent_box,
    level_types,
    merge_actions,
    merged_action_table,
    normalized_mutual_info,
    psnr,
    ssim,
    token_stability_counts,
)
from genie.core.registry import STAGES
from genie.distributed import process_state
from genie.eval_results import (
    AgentBoxResult,
    CeilingResult,
    Evaluation,
    FewLabelResult,
    FVDResult,
    HeadsResult,
    Interval,
    LamResult,
    TokenizerResult,
    TokenStability,
    WorldModelResult,
)
from genie.export import load_export
from genie.fvd import fvd_report, i3d_features, load_i3d
from genie.grounding import Transitions, collect_transitions, grounding_table
from genie.nn import codebook_usage
from genie.sampling import SamplingSettings, decode_tokens
from genie.world_model import WorldModel


def linear_probe_accuracy(codes: np.ndarray, labels: np.ndarray, num_codes: int, seed: int = 0,
                          steps: int = 300) -> float:
    """Held-out accuracy of a linear probe: a multinomial logistic regression from one-hot codes to labels.

    Half of the samples (seeded split) train it, the other half score it."""
    g = np.random.default_rng(seed)
    idx = g.permutation(len(codes))
    half = len(idx) // 2
    tr, te = idx[:half], idx[half:]
    classes, y = np.unique(labels, return_inverse=True)
    x = torch.nn.functional.one_hot(torch.as_tensor(codes, dtype=torch.long), num_codes).float()
    y = torch.as_tensor(y, dtype=torch.long)
    torch.manual_seed(seed)
    probe = torch.nn.Linear(num_codes, len(classes))
    opt = torch.optim.Adam(probe.parameters(), lr=0.1)
    with torch.enable_grad():  # callers evaluate under no_grad
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(probe(x[tr]), y[tr])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((probe(x[te]).argmax(-1) == y[te]).float().mean())


def mean_ci95(values: np.ndarray) -> Interval:
    v = np.asarray(values, dtype=np.float64)
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return Interval(float(v.mean()), (float(v.mean() - half), float(v.mean() + half)), int(len(v)))


def _batches(ds: ClipDataset, batch: int, device: torch.device | str = "cpu", state=None):
    """Batches of the clip subset as dicts with `video` (on `device`), `actions` (CPU) and `index` (the batch's
    number). Under several processes (`state`, genie.distributed) each yields a contiguous share of the batches."""
    starts = list(range(0, len(ds), batch))
    if state is not None:
        with state.split_between_processes(starts) as mine:
            starts = list(mine)
    for i in starts:
        items = [ds[j] for j in range(i, min(len(ds), i + batch))]
        out = {"video": torch.stack([it["video"] for it in items]).to(device), "index": i // batch}
        if "actions" in items[0]:
            out["actions"] = torch.stack([it["actions"] for it in items])  # labels stay on the CPU
        yield out


def _batch_generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    """One generator per batch, so the figures do not depend on how the batches are shared between processes."""
    return generator_for(device, seed * 1_000_003 + index)


def _gather(state, *lists: list) -> tuple[list, ...]:
    """Per-batch results of every process, in batch order (the shares are contiguous and gathered in rank order)."""
    return lists if state is None else tuple(gather_object(list(x)) for x in lists)


# Label budgets of the few-label scores (the dictionary and the linear map on the continuous latent).
FEW_LABEL_BUDGETS = (200, 1000)


def few_label_transitions(lam, data, probe_data=None, seed: int = 0) -> Transitions | str:
    """Labelled training-level transitions for evaluate_lam's few-label scores: from the train split of
    `probe_data` (default `data`), or a string saying why there are none."""
    src = data if probe_data is None else probe_data
    card = read_card(src)
    if not card.get("has_actions"):
        return f"not computed: {src} has no true actions"
    if not (card.get("splits", {}).get("train") or {}).get("episodes"):
        return f"not computed: {src} has no labelled train split (pass --probe-data DIR)"
    # a pool five times the largest budget, so each budget's labels are a random draw from many clips, not the
    # transitions of a few
    return collect_transitions(lam, src, "train", 5 * max(FEW_LABEL_BUDGETS), seed)


def _share(num: int, den: int) -> float | None:
    return num / den if den else None


@torch.no_grad()
def evaluate_tokenizer(tokenizer, data, split: str, num_clips: int, seed: int, batch: int = 8, progress=None,
                       state=None) -> TokenizerResult:
    ds = ClipDataset(data, split, clip_len=tokenizer.config.num_frames, num_clips=num_clips, seed=seed)
    ps, ss, ids, stab, kinds = [], [], [], [], []
    for b in _batches(ds, batch, module_device(tokenizer), state):
        out = tokenizer(b["video"])
        kinds.append(level_types(b["video"]))
        ps.append(psnr(out.recon, b["video"]).cpu())  # (b, t)
        ss.append(ssim(out.recon, b["video"]).flatten().cpu())
        ids.append(out.indices.flatten().cpu())
        stab.append(token_stability_counts(out.indices, b["video"], tokenizer.config.patch_size))
        if progress:
            progress(len(b["video"]))
    ps, ss, ids, stab, kinds = _gather(state, ps, ss, ids, stab, kinds)
    stab = torch.stack(stab).sum(0)
    u = codebook_usage(torch.cat(ids), tokenizer.codebook_size)
    per_clip, kinds = torch.cat(ps).mean(1), [k for ks in kinds for k in ks]
    by_type = {k: {"clips": sum(x == k for x in kinds),
                   "psnr_db": float(per_clip[[x == k for x in kinds]].mean()) if k in kinds else None} for k in LEVEL_TYPES}
    p = tokenizer.config.patch_size
    stability = TokenStability(
        identical_share=_share(int(stab[0]), int(stab[1])),
        identical_share_unchanged_patches=_share(int(stab[2]), int(stab[3])),
        unchanged_patch_share=_share(int(stab[3]), int(stab[1])),
        unchanged_patch_rule=f"max |pixel difference| <= {UNCHANGED_PATCH_THRESHOLD:g} in [-1, 1] over the {p}x{p} "
                             "patch (identical uint8)")
    return TokenizerResult(clips=len(ds), clip_len=ds.clip_len, psnr_db=float(torch.cat(ps).mean()),
                           psnr_db_by_level_type=by_type, ssim=float(torch.cat(ss).mean()),
                           codebook_usage=float(u.usage), codebook_perplexity=float(u.perplexity),
                           token_stability=stability)


def supervised_ceiling(data, probe_data=None, cache_dir=None, seed: int = 0, device: torch.device | str = "cpu",
                       settings=None, progress: bool = False):
    """(model or None, info) for evaluate_lam: the supervised inverse-dynamics ceiling (genie.ceiling) trained on the
    labelled train split of `probe_data` (default `data`); None when `data` has no true actions to score against."""
    card = read_card(data)
    if not card.get("has_actions"):
        return None
    probe_data = data if probe_data is None else probe_data
    why = check_same_classes(probe_data, card)
    if why:
        return None, {"reason": why}
    return ceiling_for(probe_data, settings, seed=seed, device=device, cache_dir=cache_dir, progress=progress)


def _ceiling_result(pred: np.ndarray, labels: np.ndarray, shuffled: np.ndarray, raw: np.ndarray, card: dict,
                    lam_nmi: float, info: dict) -> CeilingResult:
    """The ceiling's predicted classes `pred` scored as the LAM's codes are: against the (merged) `labels`, their
    `shuffled` twin and, when the card names its actions' components, the components of the `raw` actions."""
    nmi = normalized_mutual_info(pred, labels)
    res = CeilingResult(nmi=nmi, nmi_shuffled=normalized_mutual_info(pred, shuffled),
                        accuracy=float((pred == labels).mean()),
                        majority_accuracy=float(np.bincount(labels).max() / len(labels)),
                        lam_nmi_fraction=lam_nmi / nmi if nmi > 0 else None, probe=info)
    components, merge = action_components(card), merged_action_table(card)
    if components is not None:
        # The ceiling predicts (merged) classes: each class takes the components of its raw actions, which agree
        # within a class (they have the same effect), so any one of them stands for it.
        rep = np.arange(len(card["action_names"])) if merge is None else \
            np.array([int(np.flatnonzero(merge == m)[0]) for m in range(int(merge.max()) + 1)])
        res.nmi_components = {k: normalized_mutual_info(table[rep[pred]], table[raw]) for k, table in components.items()}
    return res


@torch.no_grad()
def evaluate_lam(lam, data, split: str, num_clips: int, seed: int, batch: int = 8, progress=None,
                 ceiling=None, state=None, few_labels: Transitions | str | None = None) -> LamResult:
    """LAM figures on a fixed clip subset. `ceiling`: (model or None, info) from `supervised_ceiling`, scored on the
    same transitions and merged classes. `few_labels`: labelled training-level transitions (genie.grounding) for the
    dictionary and the linear map's held-out accuracy at FEW_LABEL_BUDGETS labels, or a string saying why there are
    none."""
    ds = ClipDataset(data, split, clip_len=lam.config.num_frames, num_clips=num_clips, seed=seed)
    codes, true, p_inf, p_rand, ceiling_pred, latents = [], [], [], [], [], []
    ceiling_net, ceiling_info = ceiling if ceiling is not None else (None, None)
    device = module_device(lam)
    if ceiling_net is not None:
        ceiling_net = ceiling_net.to(device)
    for b in _batches(ds, batch, device, state):
        video = b["video"]
        out = lam(video)
        g = _batch_generator(device, seed, b["index"])
        rand = torch.randint(0, lam.num_actions, out.actions.shape, generator=g, device=device)
        p_inf.append(psnr(out.pred, video[:, 1:]).flatten().cpu())
        p_rand.append(psnr(lam.decode_with_actions(video[:, :-1], rand), video[:, 1:]).flatten().cpu())
        codes.append(out.actions.flatten().cpu())
        latents.append(out.latents.flatten(0, 1).float().cpu())
        if "actions" in b:
            true.append(b["actions"].flatten())
            if ceiling_net is not None:
                ceiling_pred.append(ceiling_net.predict_clip(video).flatten().cpu())
        if progress:
            progress(len(video))
    codes, true, p_inf, p_rand, ceiling_pred, latents = _gather(state, codes, true, p_inf, p_rand, ceiling_pred, latents)
    codes_np = torch.cat(codes).numpy()
    u = codebook_usage(torch.cat(codes), lam.num_actions)
    inferred, random_action = float(torch.cat(p_inf).mean()), float(torch.cat(p_rand).mean())
    res = LamResult(clips=len(ds), transitions=int(len(codes_np)), code_usage=float(u.usage),
                    codes_used=int(len(np.unique(codes_np))), num_actions=lam.num_actions,
                    code_perplexity=float(u.perplexity), next_frame_psnr_inferred_db=inferred,
                    next_frame_psnr_random_db=random_action, psnr_gap_db=inferred - random_action)
    if not true:
        res.action_metrics = "not computed: the data has no true actions"
        return res
    raw = torch.cat(true).numpy()
    labels = merge_actions(raw, ds.card)
    components, merge = action_components(ds.card), merged_action_table(ds.card)
    if merge is not None:
        res.true_actions = f"merged by the dataset card's merged_action table ({len(np.unique(merge))} classes)"
    shuffled = np.random.default_rng(seed).permutation(labels)
    res.nmi, res.nmi_shuffled = normalized_mutual_info(codes_np, labels), normalized_mutual_info(codes_np, shuffled)
    res.probe_accuracy = linear_probe_accuracy(codes_np, labels, lam.num_actions, seed)
    res.probe_accuracy_shuffled = linear_probe_accuracy(codes_np, shuffled, lam.num_actions, seed)
    if components is not None:
        res.nmi_components = {k: normalized_mutual_info(codes_np, table[raw]) for k, table in components.items()}
    if isinstance(few_labels, Transitions):
        # Genie App. E: the maps fitted on labelled training-level transitions, scored on these held-out ones
        held = Transitions(torch.cat(latents).numpy(), codes_np.astype(np.int64), labels.astype(np.int64))
        k = int(max(labels.max(), few_labels.labels.max())) + 1
        res.few_labels = FewLabelResult(f"labelled training-level transitions ({len(few_labels)} available)",
                                        grounding_table(few_labels, held, lam.num_actions, k, FEW_LABEL_BUDGETS, seed))
    elif few_labels is not None:
        res.few_labels = few_labels
    if ceiling_net is not None:
        res.supervised_ceiling = _ceiling_result(torch.cat(ceiling_pred).numpy(), labels, shuffled, raw, ds.card,
                                                 res.nmi, ceiling_info)
    elif ceiling is not None:
        res.supervised_ceiling = f"not computed: {ceiling_info['reason']}"
    return res


@torch.no_grad()
def _box(video: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, bottom, right = box
    return video[..., top:bottom, left:right]


def action_margin(wm, true_tokens: torch.Tensor, actions: torch.Tensor, target: torch.Tensor,
                  settings: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
    """Counterfactual action margin (n, T) in dB: at each step k, from the true frames' tokens before it, the
    PSNR of frame k generated under the inferred action minus the best PSNR any other latent action reaches.
    Positive: the inferred action explains the true frame better than every alternative (the action matters);
    near 0 or below: the model's frame barely depends on which action it is given (architecture §7.14).

    true_tokens (n, T+1, h, w); actions (n, T) inferred; target (n, T, c, H, W) the true frames 1..T."""
    n, horizon = actions.shape
    a = wm.num_actions
    out = []
    for k in range(1, horizon + 1):
        ctx = true_tokens[:, :k].repeat(a, 1, 1, 1)  # (a*n, k, h, w): candidate-major
        cand = torch.arange(a, device=actions.device).repeat_interleave(n)[:, None]  # (a*n, 1)
        frame = wm.rollout(ctx, cand, generator, settings=settings,
                           prompt_actions=actions[:, :k - 1].repeat(a, 1))[:, -1]  # (a*n, c, H, W)
        p = psnr(frame, target[:, k - 1].repeat(a, 1, 1, 1)).view(a, n)  # (a, n)
        inferred = p.gather(0, actions[:, k - 1][None]).squeeze(0)
        others = p.masked_fill(torch.nn.functional.one_hot(actions[:, k - 1], a).T.bool(), float("-inf"))
        out.append(inferred - others.max(0).values)
    return torch.stack(out, dim=1)


@torch.no_grad()
def _world_model_batch(wm, video: torch.Tensor, generator: torch.Generator, settings: SamplingSettings, delta_t: int,
                       box: tuple[int, int, int, int] | None, margin: bool, i3d=None) -> dict[str, torch.Tensor]:
    """The per-clip figures of one batch of true clips (n, 1 + T, c, H, W), on the CPU: per step (n, T) the PSNRs of
    the rollout from the first frame with the LAM's actions, of copy-last-frame and of the two references through
    the tokenizer (in the agent `box` too), the rollout's SSIM; ΔtPSNR (n,); with `margin` the action margin (n, T);
    with `i3d` the embeddings of the true, generated and copy-last clips. The generator is drawn from in this order:
    rollout, random actions, their rollout, margin."""
    horizon = video.shape[1] - 1
    target, copy = video[:, 1:], video[:, :1].expand(-1, horizon, -1, -1, -1)
    acts = wm.lam.infer_actions(video)  # (n, T)
    prompt, _ = wm.encode_prompt(video[:, :1])  # (n, 1, h, w)
    gen = wm.rollout(prompt, acts, generator, settings=settings)[:, 1:]
    # The same two references through the tokenizer: its decoding of the prompt's tokens repeated (what a dynamics
    # model that only copies would show) and of the true clip's own tokens (what a perfect one would).
    copy_tokens = decode_tokens(wm.tokenizer, prompt.expand(-1, horizon + 1, -1, -1))[:, 1:]
    w = wm.tokenizer.config.num_frames  # encoded in consecutive windows, as `genie tokenize` does
    true_tokens = torch.cat([wm.tokenizer.encode(video[:, i:i + w]) for i in range(0, horizon + 1, w)], 1)
    recon = decode_tokens(wm.tokenizer, true_tokens)[:, 1:]
    out = {"rollout": psnr(gen, target), "rollout_ssim": ssim(gen, target), "copy_last": psnr(copy, target),
           "copy_last_tokens": psnr(copy_tokens, target), "tokenizer_recon": psnr(recon, target)}
    if box is not None:
        for k, x in (("rollout", gen), ("copy_last", copy), ("tokenizer_recon", recon)):
            out[f"box_{k}"] = psnr(_box(x, box), _box(target, box))
    out = {k: v.cpu() for k, v in out.items()}
    # ΔtPSNR (Genie §3): PSNR at step t under the inferred actions minus under random ones
    rand = torch.randint(0, wm.num_actions, (video.shape[0], delta_t), generator=generator, device=video.device)
    gen_r = wm.rollout(prompt, rand, generator, settings=settings)[:, -1]
    out["delta"] = out["rollout"][:, delta_t - 1] - psnr(gen_r, video[:, delta_t]).cpu()
    if margin:
        out["margin"] = action_margin(wm, true_tokens[:, :horizon + 1], acts, target, settings, generator).cpu()
    if i3d is not None:
        out["i3d_real"] = i3d_features(i3d, video)
        out["i3d_generated"] = i3d_features(i3d, torch.cat([video[:, :1], gen], 1))
        out["i3d_copy_last"] = i3d_features(i3d, video[:, :1].expand_as(video))
    return out


def evaluate_world_model(wm, data, split: str, num_clips: int, seed: int, horizon: int = 10, delta_t: int = 4,
                         settings: SamplingSettings | None = None, batch: int = 4, progress=None, i3d=None,
                         state=None, margin_clips: int = 32) -> tuple[WorldModelResult, FVDResult | None]:
    """Rollouts of `horizon` frames from 1 prompt frame with the LAM's actions inferred on the true clip, sampled
    with `settings` (default: SamplingSettings()).

    Beside the whole-frame figures, the same PSNRs inside the dataset card's `agent_box` (where the eye looks:
    CoinRun's agent), and on the first `margin_clips` clips the counterfactual action margin (`action_margin`).
    With an `i3d` network (genie.fvd), also the FVD of the rollouts (prompt + generated frames) and of the
    copy-last-frame clips against the true clips (else None)."""
    if horizon < 1:
        raise GenieInputError(f"--horizon must be >= 1, got {horizon}")
    settings = settings or SamplingSettings()
    delta_t = min(delta_t, horizon)  # ΔtPSNR at t = 4 (Genie §3), or at the last step of a shorter rollout
    ds = ClipDataset(data, split, clip_len=horizon + 1, num_clips=num_clips, seed=seed)
    if horizon + 1 > wm.lam.config.num_frames:
        raise GenieInputError(f"horizon {horizon} needs LAM clips of {horizon + 1} frames (LAM num_frames {wm.lam.config.num_frames})")
    box = agent_box(ds.card, tuple(ds.frame_shape[:2]))
    names = ["rollout", "rollout_ssim", "copy_last", "copy_last_tokens", "tokenizer_recon", "delta", "margin"]
    names += ["box_rollout", "box_copy_last", "box_tokenizer_recon"] if box is not None else []
    names += ["i3d_real", "i3d_generated", "i3d_copy_last"] if i3d is not None else []
    per_batch = {k: [] for k in names}  # the same on every process: each gathers every list
    for b in _batches(ds, batch, wm.device, state):
        g = _batch_generator(wm.device, seed, b["index"])
        out = _world_model_batch(wm, b["video"], g, settings, delta_t, box, b["index"] * batch < margin_clips, i3d)
        for k, v in out.items():
            per_batch[k].append(v)
        if progress:
            progress(len(b["video"]))
    f = {k: torch.cat(v) for k, v in zip(per_batch, _gather(state, *per_batch.values())) if v}

    def per_step(x: torch.Tensor) -> list[float]:  # (clips, T) -> the mean of each step
        return [float(v) for v in x.mean(0)]

    ps, base, base_tok, recon = f["rollout"], f["copy_last"], f["copy_last_tokens"], f["tokenizer_recon"]
    res = WorldModelResult(
        clips=len(ds), horizon=horizon, maskgit_steps=settings.steps, temperature=settings.temperature,
        top_k=settings.top_k, guidance=settings.guidance,
        rollout_psnr_db=per_step(ps), rollout_ssim=per_step(f["rollout_ssim"]), copy_last_frame_psnr_db=per_step(base),
        rollout_mean_psnr_db=float(ps.mean()), copy_last_frame_mean_psnr_db=float(base.mean()),
        mean_psnr_minus_copy_last_db=mean_ci95((ps.mean(1) - base.mean(1)).numpy()),
        copy_last_tokens_psnr_db=per_step(base_tok), copy_last_tokens_mean_psnr_db=float(base_tok.mean()),
        mean_psnr_minus_copy_last_tokens_db=mean_ci95((ps.mean(1) - base_tok.mean(1)).numpy()),
        tokenizer_recon_psnr_db=per_step(recon), tokenizer_recon_mean_psnr_db=float(recon.mean()),
        delta_t=delta_t, delta_t_psnr_db=mean_ci95(f["delta"].numpy()),
        agent_box="not computed: the dataset card names no agent_box")
    if box is not None:
        kinds = ("rollout", "copy_last", "tokenizer_recon")
        res.agent_box = AgentBoxResult(
            box=box, psnr_db={k: per_step(f[f"box_{k}"]) for k in kinds},
            mean_psnr_db={k: float(f[f"box_{k}"].mean()) for k in kinds},
            last_step_minus_copy_last=mean_ci95((f["box_rollout"][:, -1] - f["box_copy_last"][:, -1]).numpy()))
    if "margin" in f:
        m = f["margin"]  # (clips, T)
        res.action_margin_db, res.action_margin_mean_db = per_step(m), mean_ci95(m.mean(1).numpy())
        res.action_margin_clips = int(m.shape[0])
    fvd = None
    if i3d is not None:
        fvd = FVDResult(**fvd_report(f["i3d_real"], f["i3d_generated"], f["i3d_copy_last"], frames=horizon + 1,
                                     source_size=tuple(ds[0]["video"].shape[-2:])))
    return res, fvd


def _load_stages(p: Path) -> dict:
    """The stage exports in `p`: a world-model folder, or a single stage export."""
    if not p.is_dir():
        raise GenieInputError(f"{p}: no such model folder")
    if (p / "config.json").is_file():
        stage = json.loads((p / "config.json").read_text()).get("genie_stage")
        if stage not in STAGES:
            raise GenieInputError(f"{p}: not a genie export or world-model folder")
        return {stage: load_export(p, stage)}
    stages = {stage: load_export(p / stage, stage) for stage in STAGES if (p / stage).is_dir()}
    if not stages:
        raise GenieInputError(f"{p}: holds no genie export (expected tokenizer/, lam/, dynamics/ or config.json)")
    return stages


def evaluate(model_dir: str | Path, data: str | Path, split: str | None = None, num_clips: int = 128, seed: int = 0,
             steps: int = 25, horizon: int = 10, delta_t: int = 4, temperature: float | None = None,
             progress: bool = True, i3d: str | Path | None = None, device: str | torch.device = "auto",
             probe_data: str | Path | None = None, probe_cache: str | Path | None = None, top_k: int | None = None,
             guidance: float | None = None, heads: str | Path | None = None, margin_clips: int = 32) -> Evaluation:
    """Evaluate the stages found in `model_dir`: a world-model folder, or a single stage export.

    `split`: None picks test, else val, else train (whichever holds episodes) and says which on stderr.
    `steps`, `temperature`, `top_k`, `guidance`: how rollouts sample (genie.sampling.SamplingSettings, checked before
    anything loads; None: its default).
    `i3d`: a local I3D weights file (see genie.fvd); with it and all three stages, FVD is computed.
    `device`: 'auto' | 'cpu' | 'cuda[:N]'; the same seed gives the same figures on a given device.
    `probe_data`: the dataset whose labelled train split trains the supervised ceiling (genie.ceiling) scored beside
    the LAM (default `data`); `probe_cache`: where trained ceilings are cached (default `<probe_data>/.genie-cache`).
    `margin_clips`: clips that also get the action margin (`action_margin`, ~10x a clip's other cost); 0 skips it.
    `heads`: a `genie heads train` folder, scored on the frame pairs of up to `num_clips` episodes of the split (their
    last window and one earlier one, tokenised with the model's tokenizer) against the base rates.
    Returns the result; its `to_dict()` is the JSON `genie evaluate` writes."""
    sampling = SamplingSettings.from_args(steps=steps, temperature=temperature, top_k=top_k, guidance=guidance)
    if margin_clips < 0:  # the one check here: the sampling settings check theirs
        raise GenieInputError(f"--margin-clips must be >= 0, got {margin_clips}")
    dev = resolve_device(device)
    p = Path(model_dir)
    torch.manual_seed(seed)
    stages = _load_stages(p)
    i3d_net = None
    if i3d is not None:  # load first: a bad weights file fails before minutes of evaluation
        i3d_net = load_i3d(i3d)
    heads_net = None
    if heads is not None:
        if "tokenizer" not in stages:
            raise GenieInputError(f"--heads {heads}: the heads read the tokenizer's tokens, and {p} holds no tokenizer")
        heads_net = load_heads(heads, tokenizer=stages["tokenizer"])
    state, dev = process_state(dev)  # under torchrun: this process's share of the clips, gathered at the end
    split, note = pick_split(data, split)
    main = state is None or state.is_main_process
    if note and main:
        print(note, file=sys.stderr)
    stages = {s: to_device(m, dev, f"{p} ({s})") for s, m in stages.items()}
    if i3d_net is not None:
        i3d_net = to_device(i3d_net, dev, str(i3d))
    show = progress and main
    ceiling = None
    if "lam" in stages:  # first, with its own progress: minutes the first time for a dataset, then cached
        with state.main_process_first() if state is not None else nullcontext():  # one process trains it
            ceiling = supervised_ceiling(data, probe_data, probe_cache, seed, dev, progress=show)
    bar = tqdm(unit="clip", desc="evaluating", dynamic_ncols=True) if show else None
    tick = bar.update if bar is not None else None
    res = Evaluation(model=str(p), data=str(data), split=split, num_clips=num_clips, seed=seed, device=str(dev),
                     processes=state.num_processes if state is not None else 1, stages=sorted(stages),
                     fvd="not computed: FVD needs I3D weights, which genie never downloads (pass --i3d FILE)",
                     main_process=main)
    if "tokenizer" in stages:
        res.tokenizer = evaluate_tokenizer(stages["tokenizer"], data, split, num_clips, seed, progress=tick, state=state)
    if "lam" in stages:
        few = few_label_transitions(stages["lam"], data, probe_data, seed) if read_card(data).get("has_actions") else None
        res.lam = evaluate_lam(stages["lam"], data, split, num_clips, seed, progress=tick, ceiling=ceiling, state=state,
                               few_labels=few)
    if len(stages) == 3:
        wm = WorldModel(stages["tokenizer"], stages["lam"], stages["dynamics"])
        res.world_model, fvd = evaluate_world_model(wm, data, split, num_clips, seed, horizon=horizon, delta_t=delta_t,
                                                    settings=sampling, progress=tick, i3d=i3d_net, state=state,
                                                    margin_clips=margin_clips)
        res.fvd = fvd or res.fvd
    elif "dynamics" in stages:
        res.world_model = "not computed: rollouts need the tokenizer and the LAM beside the dynamics model"
    if heads_net is not None:
        ex = head_examples(stages["tokenizer"], data, split, max_episodes=num_clips, windows=2, seed=seed)
        scores = score_heads(to_device(heads_net, dev, str(heads)), ex)
        episodes = read_card(data)["splits"][split]["episodes"]
        res.heads = HeadsResult(heads=str(heads), episodes=min(num_clips, episodes), **scores)
    if i3d is not None and not isinstance(res.fvd, FVDResult):
        res.fvd = "not computed: FVD compares generated rollouts, which need the tokenizer, the LAM and the dynamics model"
    if bar is not None:
        bar.close()
    return res
