"""LightningModule of the latent action model: loss, optimiser, validation of what the actions carry.

Loss (Genie §2.2): MSE of the decoder's prediction of x_{t+1} (from x_<=t and a_t) plus the VQ
commitment loss. Validation: next-frame PSNR with the inferred actions and with random actions
(the gap is what the action carries), code usage and perplexity, and, when the data has true actions,
the NMI between latent codes and true actions (merged by the dataset card's `merged_action` table).
"""

from __future__ import annotations

import torch

from genie.core.device import generator_for
from genie.core.metrics import merge_actions, normalized_mutual_info, psnr
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
    """

    stage = "lam"

    def __init__(self, config: LatentActionConfig, lr: float = 3e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 500, min_lr_ratio: float = 0.1,
                 change_weight: float = 0.0, surprise_weight: float = 0.0):
        super().__init__()
        if not change_weight >= 0:
            raise ValueError(f"change_weight must be >= 0, got {change_weight!r}")
        if not surprise_weight >= 0:
            raise ValueError(f"surprise_weight must be >= 0, got {surprise_weight!r}")
        if isinstance(config, dict):
            config = LatentActionConfig.from_dict(config)
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = config.to_dict()
        self.model = LatentActionModel(config)
        # Training-only "no action" embedding of the action-free branch (surprise_weight); not in exports.
        self.no_action = torch.nn.Parameter(torch.zeros(config.width)) if surprise_weight > 0 else None
        self._codes: list[torch.Tensor] = []
        self._true: list[torch.Tensor] = []

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_data()

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
        weighted = self.hparams.change_weight > 0 or null_mse is not None
        recon = (err * (w / w.mean())).mean() if weighted else mse
        if null_mse is not None:
            recon = recon + null_mse
            self.log("train/null_mse", null_mse)
        loss = recon + out.quant_loss
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
