"""What `genie evaluate` reports: one result dataclass per stage, its JSON and its table rows.

`genie.evaluate` computes each figure once into these types; `to_dict` writes the JSON (the keys of every
result file since the figures were introduced, so old files and `benchmarks/results/` stay comparable) and
`table_rows` the lines of the markdown table, each figure rendered in one place, as diffusers' output classes
carry a pipeline's figures. `markdown_table` joins the rows of an `Evaluation` or of one stage's result.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

Row = tuple[str, str, str]  # (stage, metric, value): one line of the markdown table


def _fields_dict(result) -> dict:
    """A result's fields in declaration order as JSON values, nested results through their `to_dict`. A field whose
    default is None is optional: left out while None (not computed), as in every earlier result file."""
    out = {}
    for f in fields(result):
        value = getattr(result, f.name)
        if value is None and f.default is None:
            continue
        out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def _na(x: float | None, spec: str) -> str:
    return "n/a" if x is None else f"{x:{spec}}"


def _per_step(values: list[float], spec: str = ".2f") -> str:
    return ", ".join(f"{x:{spec}}" for x in values)


@dataclass(frozen=True)
class Interval:
    """A mean in dB with its 95% confidence interval (normal approximation) over `n` values."""

    mean: float
    ci95: tuple[float, float]
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": list(self.ci95), "n": self.n}

    def describe(self, spec: str = "+.2f", with_n: bool = True) -> str:
        text = f"{self.mean:{spec}} dB, 95% CI [{self.ci95[0]:{spec}}, {self.ci95[1]:{spec}}]"
        return text + (f" (n={self.n})" if with_n else "")


# -- tokenizer -----------------------------------------------------------------------------------------------------
@dataclass
class TokenStability:
    """Tokens identical between consecutive frames (architecture §7.13): the share of all token transitions and of
    those on unchanged patches, and the share of patches that did not change (None where there were none)."""

    identical_share: float | None
    identical_share_unchanged_patches: float | None
    unchanged_patch_share: float | None
    unchanged_patch_rule: str

    def to_dict(self) -> dict:
        return _fields_dict(self)


@dataclass
class TokenizerResult:
    """Held-out reconstruction of the tokenizer (architecture §8)."""

    clips: int
    clip_len: int
    psnr_db: float
    psnr_db_by_level_type: dict[str, dict]  # level type -> {"clips": n, "psnr_db": mean, or None without clips}
    ssim: float
    codebook_usage: float
    codebook_perplexity: float
    token_stability: TokenStability

    def to_dict(self) -> dict:
        return _fields_dict(self)

    def table_rows(self) -> list[Row]:
        st = self.token_stability
        by_type = ", ".join(f"{k} {_na(v['psnr_db'], '.2f')} ({v['clips']})" for k, v in self.psnr_db_by_level_type.items())
        return [("tokenizer", "reconstruction PSNR", f"{self.psnr_db:.2f} dB"),
                ("tokenizer", "PSNR by level type (clips)", by_type),
                ("tokenizer", "SSIM", f"{self.ssim:.4f}"),
                ("tokenizer", "codebook usage", f"{self.codebook_usage:.1%} (perplexity {self.codebook_perplexity:.1f})"),
                ("tokenizer", "identical tokens between consecutive frames: all / unchanged patches",
                 f"{_na(st.identical_share, '.1%')} / {_na(st.identical_share_unchanged_patches, '.1%')} "
                 f"({_na(st.unchanged_patch_share, '.1%')} of patches unchanged)")]


# -- LAM -----------------------------------------------------------------------------------------------------------
@dataclass
class FewLabelResult:
    """What a user gets from a few labels (Genie App. E; genie.grounding): the dictionary and the linear map on the
    continuous latent, fitted on labelled training-level transitions and scored on the held-out ones."""

    fitted_on: str
    rows: list[dict]  # per label budget: labels, dictionary_accuracy, linear_accuracy, majority_accuracy

    def to_dict(self) -> dict:
        return _fields_dict(self)

    def table_rows(self) -> list[Row]:
        return [("LAM", f"{r['labels']} labels: dictionary / linear map on the latent / majority accuracy",
                 f"{r['dictionary_accuracy']:.3f} / {r['linear_accuracy']:.3f} / {r['majority_accuracy']:.3f}")
                for r in self.rows]


@dataclass
class CeilingResult:
    """The supervised inverse-dynamics ceiling (genie.ceiling) on the LAM's held-out transitions and classes."""

    nmi: float
    nmi_shuffled: float
    accuracy: float
    majority_accuracy: float
    lam_nmi_fraction: float | None  # the LAM's NMI as a share of the ceiling's; None when the ceiling's is 0
    probe: dict  # how the ceiling model was trained (genie.ceiling.ceiling_for's info)
    nmi_components: dict[str, float] | None = None  # per action component, from the card's action names

    def to_dict(self) -> dict:
        return _fields_dict(self)

    def table_rows(self, lam_components: dict[str, float] | None) -> list[Row]:
        rows = [("LAM", "supervised inverse-dynamics ceiling: NMI (shuffled) / accuracy (majority)",
                 f"{self.nmi:.3f} ({self.nmi_shuffled:.3f}) / {self.accuracy:.3f} ({self.majority_accuracy:.3f})"),
                ("LAM", "LAM NMI as a share of the ceiling's", _na(self.lam_nmi_fraction, ".1%"))]
        if self.nmi_components is not None and lam_components is not None:
            rows.append(("LAM", "NMI by component, LAM / ceiling", ", ".join(
                f"{k} {lam_components[k]:.3f} / {v:.3f}" for k, v in self.nmi_components.items())))
        return rows


@dataclass
class LamResult:
    """The LAM's codes on held-out clips (architecture §8); the action figures need the data's true actions."""

    clips: int
    transitions: int
    code_usage: float
    codes_used: int
    num_actions: int
    code_perplexity: float
    next_frame_psnr_inferred_db: float
    next_frame_psnr_random_db: float
    psnr_gap_db: float  # inferred minus random action: what the action carries
    action_metrics: str | None = None  # why the figures below are missing (no true actions)
    true_actions: str | None = None  # how true actions were merged into classes
    nmi: float | None = None
    nmi_shuffled: float | None = None
    probe_accuracy: float | None = None  # the linear probe from one-hot codes (genie.evaluate.linear_probe_accuracy)
    probe_accuracy_shuffled: float | None = None
    nmi_components: dict[str, float] | None = None  # which part of the control the codes carry
    few_labels: FewLabelResult | str | None = None  # or why it was not computed
    supervised_ceiling: CeilingResult | str | None = None  # or why it was not computed

    def to_dict(self) -> dict:
        return _fields_dict(self)

    def table_rows(self) -> list[Row]:
        rows = [("LAM", "codes used", f"{self.codes_used} of {self.num_actions} (perplexity {self.code_perplexity:.2f})"),
                ("LAM", "next-frame PSNR inferred / random action",
                 f"{self.next_frame_psnr_inferred_db:.2f} / {self.next_frame_psnr_random_db:.2f} dB"),
                ("LAM", "next-frame PSNR gap (what the action carries)", f"{self.psnr_gap_db:.2f} dB")]
        if self.nmi is not None:
            rows += [("LAM", "NMI vs true actions (shuffled)", f"{self.nmi:.3f} ({self.nmi_shuffled:.3f})"),
                     ("LAM", "linear-probe accuracy (shuffled)",
                      f"{self.probe_accuracy:.3f} ({self.probe_accuracy_shuffled:.3f})")]
        ceiling = self.supervised_ceiling
        if isinstance(ceiling, CeilingResult):
            rows += ceiling.table_rows(self.nmi_components)
        elif ceiling:
            rows.append(("LAM", "supervised inverse-dynamics ceiling", ceiling))
        if isinstance(self.few_labels, FewLabelResult):
            rows += self.few_labels.table_rows()
        elif self.few_labels:
            rows.append(("LAM", "few-label accuracy", self.few_labels))
        if self.nmi_components is not None and not isinstance(ceiling, CeilingResult):  # else in the ceiling's row
            rows.append(("LAM", "NMI by component", ", ".join(f"{k} {v:.3f}" for k, v in self.nmi_components.items())))
        return rows


# -- world model ---------------------------------------------------------------------------------------------------
AGENT_BOX_LABELS = {"rollout": "rollout", "copy_last": "copy-last-frame", "tokenizer_recon": "tokenizer reconstruction"}


@dataclass
class AgentBoxResult:
    """The world model's PSNRs inside the dataset card's agent_box, where the eye looks (CoinRun's agent)."""

    box: tuple[int, int, int, int]  # top, left, bottom, right pixels, end-exclusive
    psnr_db: dict[str, list[float]]  # AGENT_BOX_LABELS' keys -> per step
    mean_psnr_db: dict[str, float]
    last_step_minus_copy_last: Interval  # per clip at the last step, rollout minus copy-last

    def to_dict(self) -> dict:
        """Flat keys, written beside the whole-frame figures in the world model's JSON."""
        top, left, bottom, right = self.box
        out = {"agent_box": {"top": top, "left": left, "bottom": bottom, "right": right}}
        for k in self.psnr_db:
            out[f"agent_box_{k}_psnr_db"] = self.psnr_db[k]
            out[f"agent_box_{k}_mean_psnr_db"] = self.mean_psnr_db[k]
        out["agent_box_last_step_minus_copy_last_db"] = self.last_step_minus_copy_last.to_dict()
        return out

    def table_rows(self) -> list[Row]:
        return [("world model", f"agent-box PSNR, {AGENT_BOX_LABELS[k]}",
                 _per_step(v) + f"; mean {self.mean_psnr_db[k]:.2f} dB") for k, v in self.psnr_db.items()]


@dataclass
class WorldModelResult:
    """Rollouts from 1 prompt frame with LAM-inferred actions against copying the last frame, per step (horizon,),
    beside the same two references through the tokenizer (architecture §8)."""

    clips: int
    horizon: int
    maskgit_steps: int
    temperature: float
    rollout_psnr_db: list[float]
    rollout_ssim: list[float]
    copy_last_frame_psnr_db: list[float]
    rollout_mean_psnr_db: float
    copy_last_frame_mean_psnr_db: float
    mean_psnr_minus_copy_last_db: Interval  # per clip: mean over the horizon, rollout minus copy-last
    copy_last_tokens_psnr_db: list[float]  # the prompt's tokens repeated: a dynamics model that only copies
    copy_last_tokens_mean_psnr_db: float
    mean_psnr_minus_copy_last_tokens_db: Interval
    tokenizer_recon_psnr_db: list[float]  # the true frames' own tokens: a perfect dynamics model
    tokenizer_recon_mean_psnr_db: float
    delta_t: int
    delta_t_psnr_db: Interval  # ΔtPSNR (Genie §3): PSNR at step delta_t, inferred minus random actions
    agent_box: AgentBoxResult | str  # or why it was not computed
    action_margin_db: list[float] | None = None  # inferred minus the best other action, one step from true context
    action_margin_mean_db: Interval | None = None
    action_margin_clips: int | None = None
    top_k: int | None = None  # the sampling's top-k and classifier-free guidance (written only when used)
    guidance: float = 0.0

    @property
    def above_baseline_every_step(self) -> bool:
        return all(r > c for r, c in zip(self.rollout_psnr_db, self.copy_last_frame_psnr_db))

    def to_dict(self) -> dict:
        out = {"clips": self.clips, "horizon": self.horizon, "maskgit_steps": self.maskgit_steps,
               "temperature": self.temperature, **({"top_k": self.top_k} if self.top_k is not None else {}),
               **({"guidance": self.guidance} if self.guidance else {}),
               "rollout_psnr_db": self.rollout_psnr_db, "rollout_ssim": self.rollout_ssim,
               "copy_last_frame_psnr_db": self.copy_last_frame_psnr_db,
               "above_baseline_every_step": self.above_baseline_every_step,
               "rollout_mean_psnr_db": self.rollout_mean_psnr_db,
               "copy_last_frame_mean_psnr_db": self.copy_last_frame_mean_psnr_db,
               "mean_psnr_minus_copy_last_db": self.mean_psnr_minus_copy_last_db.to_dict(),
               "copy_last_tokens_psnr_db": self.copy_last_tokens_psnr_db,
               "copy_last_tokens_mean_psnr_db": self.copy_last_tokens_mean_psnr_db,
               "mean_psnr_minus_copy_last_tokens_db": self.mean_psnr_minus_copy_last_tokens_db.to_dict(),
               "tokenizer_recon_psnr_db": self.tokenizer_recon_psnr_db,
               "tokenizer_recon_mean_psnr_db": self.tokenizer_recon_mean_psnr_db,
               f"delta_t_psnr_t{self.delta_t}_db": self.delta_t_psnr_db.to_dict()}
        out.update(self.agent_box.to_dict() if isinstance(self.agent_box, AgentBoxResult) else {"agent_box": self.agent_box})
        if self.action_margin_db is not None:
            out.update(action_margin_db=self.action_margin_db, action_margin_mean_db=self.action_margin_mean_db.to_dict(),
                       action_margin_clips=self.action_margin_clips)
        return out

    def table_rows(self) -> list[Row]:
        rows = [("world model", "rollout PSNR per step", _per_step(self.rollout_psnr_db)),
                ("world model", "copy-last-frame PSNR", _per_step(self.copy_last_frame_psnr_db)),
                ("world model", f"mean rollout / copy-last PSNR ({self.horizon} steps)",
                 f"{self.rollout_mean_psnr_db:.2f} / {self.copy_last_frame_mean_psnr_db:.2f} dB, difference "
                 + self.mean_psnr_minus_copy_last_db.describe()),
                ("world model", "copy-last through the tokenizer (prompt tokens repeated)",
                 _per_step(self.copy_last_tokens_psnr_db) + f"; mean {self.copy_last_tokens_mean_psnr_db:.2f} dB, "
                 "rollout minus it " + self.mean_psnr_minus_copy_last_tokens_db.describe(with_n=False)),
                ("world model", "tokenizer reconstruction of the true frames (a perfect dynamics model)",
                 _per_step(self.tokenizer_recon_psnr_db) + f"; mean {self.tokenizer_recon_mean_psnr_db:.2f} dB")]
        if isinstance(self.agent_box, AgentBoxResult):
            rows += self.agent_box.table_rows()
        if self.action_margin_db is not None:
            rows.append(("world model", "action margin: inferred minus best other action, one step from true context",
                         _per_step(self.action_margin_db, "+.2f") + "; mean " + self.action_margin_mean_db.describe()))
        rows.append(("world model", f"ΔtPSNR (t{self.delta_t})", self.delta_t_psnr_db.describe(".3f")))
        return rows


@dataclass
class FVDResult:
    """FVD (Unterthiner et al. 2018) of the rollouts and of copy-last-frame clips against the true clips, with the
    settings it depends on (genie.fvd.fvd_report)."""

    fvd: float
    clips: int
    frames: int | None
    resolution: str | None
    embedding: str
    fvd_copy_last_frame: float | None = None

    def to_dict(self) -> dict:
        return _fields_dict(self)

    def table_rows(self) -> list[Row]:
        return [("world model", f"FVD ({self.clips} clips of {self.frames} frames, {self.resolution})",
                 f"{self.fvd:.1f} (copy-last-frame {_na(self.fvd_copy_last_frame, '.1f')})")]


# -- acting --------------------------------------------------------------------------------------------------------
@dataclass
class HeadsResult:
    """The reward and continuation heads (genie.acting.heads, issue 28) on the held-out episodes' frame pairs: per head
    the accuracy at p = 1/2 against always-the-majority's, the AUC, the positives and the base rate."""

    heads: str  # the heads folder
    episodes: int  # held-out episodes whose frame pairs were scored
    reward: dict
    end: dict

    def to_dict(self) -> dict:
        return _fields_dict(self)

    def table_rows(self) -> list[Row]:
        return [("heads", f"{name}: accuracy (majority) / AUC, positives of examples",
                 f"{m['accuracy']:.3f} ({m['majority_accuracy']:.3f}) / {_na(m['auc'], '.3f')}, "
                 f"{m['positives']} of {m['examples']}")
                for name, m in (("reward", self.reward), ("end", self.end))]


# -- the whole evaluation ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Evaluation:
    """Everything `genie evaluate` reports on one model folder: what was evaluated, on what, and each stage's result
    (None: the folder holds no such stage; a string: why it was not computed)."""

    model: str
    data: str
    split: str
    num_clips: int
    seed: int
    device: str
    processes: int
    stages: list[str]
    tokenizer: TokenizerResult | None = None
    lam: LamResult | None = None
    world_model: WorldModelResult | str | None = None
    fvd: FVDResult | str  # beside the stages: it compares whole clips, prompt frame included
    heads: HeadsResult | None = None  # with --heads: the reward and continuation heads on the same split
    main_process: bool = True  # under torchrun, whether this process writes the result; not part of it

    def to_dict(self) -> dict:
        out = _fields_dict(self)
        del out["main_process"]
        return out

    def table_rows(self) -> list[Row]:
        rows = []
        for stage in (self.tokenizer, self.lam, self.world_model, self.heads):
            if stage is not None and not isinstance(stage, str):
                rows += stage.table_rows()
        return rows + (self.fvd.table_rows() if isinstance(self.fvd, FVDResult) else [("—", "FVD", self.fvd)])


def markdown_table(result) -> str:
    """The markdown table of an `Evaluation`, or of one stage's result (anything with `table_rows`)."""
    lines = ["| stage | metric | value |", "|---|---|---|"]
    lines += [f"| {stage} | {metric} | {value} |" for stage, metric, value in result.table_rows()]
    return "\n".join(lines) + "\n"
