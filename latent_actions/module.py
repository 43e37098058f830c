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
    """

    stage = "lam"

    def __init__(self, config: LatentActionConfig, lr: float = 3e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 500, min_lr_ratio: float = 0.1,
                 change_weight: float = 0.0):
        super().__init__()
        if not change_weight >= 0:
            raise ValueError(f"change_weight must be >= 0, got {change_weight!r}")
        if isinstance(config, dict):
            config = LatentActionConfig.from_dict(config)
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = config.to_dict()
        self.model = LatentActionModel(config)
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
        recon = mse
        if self.hparams.change_weight > 0:
            change = (target - video[:, :-1].float()).abs().mean(dim=2, keepdim=True)  # (b, t-1, 1, H, W)
            w = 1 + self.hparams.change_weight * change
            recon = (err * (w / w.mean())).mean()
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
