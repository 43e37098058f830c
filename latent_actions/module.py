"""LightningModule of the latent action model: loss, optimiser, validation of what the actions carry.

Loss (Genie §2.2): MSE of the decoder's prediction of x_{t+1} (from x_<=t and a_t) plus the VQ
commitment loss. Validation: next-frame PSNR with the inferred actions and with random actions
(the gap is what the action carries), code usage and perplexity, and, when the data has true actions,
the NMI between latent codes and true actions (merged by the dataset card's `merged_action` table).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from genie.core.device import generator_for
from genie.core.errors import GenieInputError
from genie.core.metrics import agent_box, merge_actions, merged_action_table, normalized_mutual_info, psnr
from genie.core.training import GenieModule
from genie.nn import codebook_usage
from latent_actions.config import LatentActionConfig
from latent_actions.model import LatentActionModel


class LatentActionModule(GenieModule):
    """Trains a `LatentActionModel`.

    Args:
        config: the model config (see `latent_actions.config.PRESETS`, configs/latent_actions/*.yaml).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with warmup and cosine decay.
        change_weight: 0 (default) is the plain MSE of Genie §2.2. w > 0 weights each pixel's squared error
            by 1 + w·|x_{t+1} − x_t| (mean over channels, in [-1, 1] units; weights normalised to mean 1 per
            batch), so pixels that change between frames (the sprite, what the action moves) count more than
            the static or slowly scrolling background that dominates the plain MSE. Training only: exports
            and evaluation do not depend on it.
        surprise_weight: 0 (default) off. w > 0 also runs the decoder once per step with no action (a learned
            "no action" embedding in place of a_t, trained by its own plain MSE, so it learns what the past
            alone predicts) and weights each pixel's squared error of the action branch by
            1 + w·e / mean(e), e being the action-free branch's squared error there (detached; weights
            normalised to mean 1 per batch). Pixels the past predicts (static background, steady scroll)
            then count little and the pixels only the action explains (a sprite turning, a jump starting)
            count more: the codes are pushed toward what the past cannot tell. Training only; about 1.4×
            the step time. Combines with change_weight (the weights multiply).
        roi_weight: 0 (default) off. w > 0 weights each pixel's squared error by 1 + w inside the region of
            interest the dataset card names (`agent_box`: CoinRun's fixed centre box, where the camera keeps
            the agent) and 1 elsewhere (normalised to mean 1). The agent's left/right shows in pixels only
            there (its sprite turns), under a large scroll the plain MSE is dominated by (MaskLAM weights the
            loss with agent masks). Data whose card names no box (imported videos) trains as w = 0, with a
            warning. Multiplies with the other weights. Training only.
        label_fraction: 0 (default: unsupervised, as Genie). f > 0 makes the LAM semi-supervised: a linear head
            from the continuous pre-quantisation latent to the true (merged) action is trained with
            cross-entropy, weighted `label_weight`, on the transitions chosen as labelled — a fixed share f of
            the training transitions by a hash of (episode, frame), so the same ones are labelled in every
            epoch (LAOM: 2.5% labels). Needs data with actions. The head is not exported. Training only.
        label_weight: weight of that cross-entropy in the loss (default 0.1).
        label_batch: 0 (default): the labelled transitions are those that happen to be in the training batch
            (about label_fraction of it: ~3 of 120 transitions at 2.5%). n > 0: as LAOM, every step also draws n
            clips from a fixed labelled pool — the non-overlapping clip_len windows of the training episodes chosen
            by a hash of (episode, window), label_fraction of them — and trains the head on all of their
            transitions (encoder only; the labelled share of the data is the same, it is just seen every step).
            The draw is a function of the step, so a resumed run draws what the unbroken run would have.
    """

    stage = "lam"

    def __init__(self, config: LatentActionConfig, lr: float = 3e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 500, min_lr_ratio: float = 0.1,
                 change_weight: float = 0.0, surprise_weight: float = 0.0, roi_weight: float = 0.0,
                 label_fraction: float = 0.0, label_weight: float = 0.1, label_batch: int = 0):
        super().__init__()
        for name, value in (("change_weight", change_weight), ("surprise_weight", surprise_weight),
                            ("roi_weight", roi_weight), ("label_weight", label_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not 0 <= label_fraction <= 1:
            raise ValueError(f"label_fraction must be in [0, 1], got {label_fraction!r}")
        if not (isinstance(label_batch, int) and label_batch >= 0):
            raise ValueError(f"label_batch must be an int >= 0, got {label_batch!r}")
        if isinstance(config, dict):
            config = LatentActionConfig.from_dict(config)
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = config.to_dict()
        self.model = LatentActionModel(config)
        # Training-only "no action" embedding of the action-free branch (surprise_weight); not in exports.
        self.no_action = torch.nn.Parameter(torch.zeros(config.width)) if surprise_weight > 0 else None
        # Few-label head (label_fraction), built in setup once the data says how many classes there are.
        self.label_head: torch.nn.Linear | None = None
        self._label_pool: list[tuple[int, int]] = []  # (episode index, window start) of the labelled windows
        self._label_data = None  # the training set the pool indexes
        self._merge: torch.Tensor | None = None  # raw action id -> scored class
        self._roi: tuple[int, int, int, int] | None = None
        self._codes: list[torch.Tensor] = []
        self._true: list[torch.Tensor] = []

    @staticmethod
    def config_for_data(model, card: dict) -> None:
        """`genie train`, before the module is built: settle what the training data's card decides (crop_box
        "card", see `LatentActionConfig.with_card`) in the parsed `model` arguments, and say what was chosen."""
        args = getattr(model.config, "init_args", model.config)  # jsonargparse: class_path + init_args
        if getattr(args, "crop_box", None) != "card":
            return
        box = LatentActionConfig.from_dict(vars(args)).with_card(card).crop_box
        args.crop_box = box
        print(f"crop_box card: {box} (around the data's agent_box)" if box is not None else
              "crop_box card: off (the data's card names no agent_box)")

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        self.check_data()
        card = getattr(getattr(getattr(self.trainer, "datamodule", None), "train_set", None), "card", None)
        if self.hparams.roi_weight > 0:
            self._roi = agent_box(card or {}, self.model.config.frame_size)
            if self._roi is None:
                warnings.warn("roi_weight is set but the dataset card names no agent_box: training without it",
                              stacklevel=2)
        if self.model.config.crop_box is not None and agent_box(card or {}, self.model.config.frame_size) is None:
            warnings.warn(f"crop_box {self.model.config.crop_box} is set but the dataset card names no agent_box: the "
                          "encoder reads that fixed window of every frame anyway (for videos without a fixed agent "
                          "position pass --model.config.crop_box null)", stacklevel=2)
        if self.hparams.label_fraction > 0 and self.label_head is None:
            if not card or not card.get("has_actions"):
                raise GenieInputError("label_fraction > 0 needs training data with true actions (a recorded "
                                      "CoinRun dataset); this data has none")
            table = merged_action_table(card)
            if table is None:
                if not card.get("num_actions"):
                    raise GenieInputError("label_fraction > 0: the dataset card names no num_actions")
                table = torch.arange(int(card["num_actions"])).numpy()
            self._merge = torch.as_tensor(table, dtype=torch.long)
            self.label_head = torch.nn.Linear(self.model.config.width, int(table.max()) + 1)
        if self.hparams.label_fraction > 0 and self.hparams.label_batch > 0 and not self._label_pool:
            self._label_data = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
            self._label_pool = self._labelled_windows(self._label_data)

    def _labelled_windows(self, ds) -> list[tuple[int, int]]:
        """The labelled pool of `label_batch`: (episode, start) of every non-overlapping window of the model's
        clip length in the training episodes whose hash of (episode id, window) falls below label_fraction."""
        if ds is None or not hasattr(ds, "item") or not hasattr(ds, "num_episodes"):
            raise GenieInputError("label_batch > 0 needs a recorded dataset read by episode (genie data coinrun), "
                                  "not streamed shards or a folder of videos")
        t = ds.clip_len  # the windows are training clips: what `item` reads
        pool = []
        for e in range(ds.num_episodes):
            eid = ds.episode_id(e)
            for w in range(len(ds.episode_actions(e)) // t):
                if _hash_unit(eid, w) < self.hparams.label_fraction:
                    pool.append((e, w * t))
        if not pool:
            raise GenieInputError(f"label_fraction {self.hparams.label_fraction} labels none of the training "
                                  f"set's {t}-frame windows: raise it or record more episodes")
        return pool

    def _label_loss(self, device: torch.device) -> torch.Tensor:
        """Cross-entropy of the label head on `label_batch` windows of the labelled pool, drawn by the step."""
        ds = self._label_data
        g = generator_for("cpu", 7_919 + getattr(self._trainer, "global_step", 0))  # indices into the pool, which lives in CPU memory
        picks = torch.randint(len(self._label_pool), (self.hparams.label_batch,), generator=g).tolist()
        items = [ds.item(*self._label_pool[i]) for i in picks]
        video = torch.stack([it["video"] for it in items]).to(device)
        y = self._merge[torch.stack([it["actions"] for it in items]).long()].to(device)  # (n, t-1)
        latents = self.model.encode_latents(video)  # (n, t-1, d)
        return F.cross_entropy(self.label_head(latents.flatten(0, 1)), y.flatten())

    def _labelled(self, batch: dict, t: int) -> torch.Tensor:
        """(b, t) bool: which transitions of the batch count as labelled — a fixed share label_fraction of all
        training transitions, chosen by a hash of (episode id, frame index) so that it does not change
        between epochs or runs."""
        frame = batch["start"][:, None] + torch.arange(t, device=batch["start"].device)  # (b, t)
        return _hash_unit(batch["episode_id"][:, None], frame) < self.hparams.label_fraction

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        out = self.model(video)
        target = video[:, 1:].float()
        err = (out.pred.float() - target).square()  # (b, t-1, c, H, W)
        mse = err.mean()
        w = torch.ones_like(err[:, :, :1])  # (b, t-1, 1, H, W)
        if self.hparams.change_weight > 0:
            change = (target - video[:, :-1].float()).abs().mean(dim=2, keepdim=True)
            w = w * (1 + self.hparams.change_weight * change)
        null_mse = None
        if self.no_action is not None:
            b, t = out.actions.shape
            null_pred = self.model.decode_embeddings(video[:, :-1], self.no_action.expand(b, t, -1))
            null_err = (null_pred.float() - target).square()
            null_mse = null_err.mean()
            e = null_err.detach().mean(dim=2, keepdim=True)
            w = w * (1 + self.hparams.surprise_weight * e / e.mean().clamp_min(1e-8))
        if self._roi is not None:
            top, left, bottom, right = self._roi
            roi = torch.ones_like(err[:1, :1, :1])  # (1, 1, 1, H, W)
            roi[..., top:bottom, left:right] += self.hparams.roi_weight
            w = w * roi
        weighted = self.hparams.change_weight > 0 or null_mse is not None or self._roi is not None
        recon = (err * (w / w.mean())).mean() if weighted else mse
        if null_mse is not None:
            recon = recon + null_mse
            self.log("train/null_mse", null_mse)
        loss = recon + out.quant_loss
        if self.label_head is not None and self._label_pool:
            ce = self._label_loss(video.device)
            loss = loss + self.hparams.label_weight * ce
            self.log("train/label_ce", ce)
        elif self.label_head is not None and "actions" in batch:
            labelled = self._labelled(batch, out.actions.shape[1])
            if labelled.any():
                y = self._merge.to(batch["actions"].device)[batch["actions"].long()][labelled]
                ce = F.cross_entropy(self.label_head(out.latents[labelled]), y)
                loss = loss + self.hparams.label_weight * ce
                self.log("train/label_ce", ce)
        usage = codebook_usage(out.actions, self.model.num_actions)
        self.log_dict({"train/loss": loss, "train/mse": mse, "train/quant_loss": out.quant_loss,
                       "train/code_usage": usage.usage, "train/perplexity": usage.perplexity})
        self.log("mse", mse, prog_bar=True, logger=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._codes, self._true = [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        video = batch["video"]
        b = video.shape[0]
        out = self.model(video)
        target = video[:, 1:]
        g = generator_for(video.device, 1000 + batch_idx)
        random_actions = torch.randint(0, self.model.num_actions, out.actions.shape, generator=g, device=video.device)
        pred_random = self.model.decode_with_actions(video[:, :-1], random_actions)
        p_inf, p_rand = psnr(out.pred, target).mean(), psnr(pred_random, target).mean()
        self.log_dict({"val/psnr_inferred": p_inf, "val/psnr_random": p_rand, "val/psnr_gap": p_inf - p_rand},
                      batch_size=b, sync_dist=True)
        self.log("val/psnr", p_inf, batch_size=b, sync_dist=True, prog_bar=True)
        self._codes.append(out.actions.flatten().cpu())
        if "actions" in batch:
            self._true.append(batch["actions"].flatten().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._codes:
            return
        codes = torch.cat(self._codes)
        u = codebook_usage(codes, self.model.num_actions)
        self.log("val/code_usage", u.usage)
        self.log("val/perplexity", u.perplexity)
        if self._true:
            dm = getattr(self.trainer, "datamodule", None)
            card = getattr(getattr(dm, "train_set", None), "card", None) or {}
            true = merge_actions(torch.cat(self._true).numpy(), card)
            self.log("val/nmi", normalized_mutual_info(codes.numpy(), true))


def _hash_unit(episode_id, index):
    """A fixed pseudo-random number in [0, 1) for (episode id, frame or window index): which transitions or
    windows are labelled, the same in every epoch and run (ints or tensors, broadcast)."""
    if isinstance(episode_id, torch.Tensor) or isinstance(index, torch.Tensor):
        key = (torch.as_tensor(episode_id).long() * 1_000_003 + torch.as_tensor(index).long()) * 2_654_435_761 % 4_294_967_296
        return key.float() / 4_294_967_296
    return ((int(episode_id) * 1_000_003 + int(index)) * 2_654_435_761 % 4_294_967_296) / 4_294_967_296
