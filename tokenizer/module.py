"""LightningModule of the video tokenizer: loss, optimiser, validation metrics and images.

Loss (Genie §2.1): pixel MSE of the reconstruction plus the quantizer's commitment loss.
Validation: PSNR and SSIM (`genie.core.metrics`: torchmetrics, on [0,1] frames), codebook usage and perplexity over the
whole validation set, and a PNG grid of originals over reconstructions.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from genie.core.errors import GenieInputError
from genie.core.frames import to_uint8
from genie.core.metrics import psnr, ssim
from genie.core.training import GenieModule
from genie.nn import codebook_usage
from tokenizer.config import TokenizerConfig
from tokenizer.model import VideoTokenizer


def video_grid(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack clips (t,c,H,W) in [-1,1] as grid rows → uint8 (H_total, W_total, c)."""
    x = torch.stack([r.float().clamp(-1, 1) for r in rows])  # (r, t, c, H, W)
    x = F.pad(x, (1, 1, 1, 1), value=1.0)
    grid = rearrange(x, "r t c h w -> (r h) (t w) c")
    return to_uint8(grid)


class TokenizerModule(GenieModule):
    """Trains a `VideoTokenizer`.

    Args:
        config: the model config (see `tokenizer.config.PRESETS` and configs/tokenizer/*.yaml).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with linear warmup and cosine
            decay to `min_lr_ratio * lr`.
        image_every_n_val: write a reconstruction grid every n validation runs (0 = never).
        train_decoder_only: freeze what decides the token ids (conv stem, patch embedding, encoder, codebook: no
            gradients, and kept in eval mode so the codebook's EMA and dead-code restarts stay off) and train only the
            decoder and pixel head. With `--init_from` an export (its decoder may grow deeper) the tokens stay
            bit-identical, so a dynamics model trained on them stays valid while the frames it decodes to improve.
        freeze_codebook: keep the VQ codebook as it is (no EMA updates, no dead-code restarts) while the encoder and
            decoder train, with the commitment loss and straight-through gradient as usual. A code id keeps its
            vector, so with `--init_from` an export the tokens change only where the encoder now picks another code
            (an EMA codebook with its restarts renames nearly every code: 1.2% of held-out tokens kept their id after
            200 steps of the committed tokenizer), and a dynamics model trained on the old tokens stays close.
    """

    stage = "tokenizer"

    def __init__(self, config: TokenizerConfig, lr: float = 3e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 500, min_lr_ratio: float = 0.1,
                 image_every_n_val: int = 1, train_decoder_only: bool = False, freeze_codebook: bool = False):
        super().__init__()
        if isinstance(config, dict):
            config = TokenizerConfig.from_dict(config)
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = config.to_dict()
        self.model = VideoTokenizer(config)
        if freeze_codebook:
            if config.quantizer != "vq":
                raise GenieInputError(f"model.freeze_codebook needs quantizer 'vq' (a learned codebook), got {config.quantizer!r}")
            self.model.quantizer.freeze_codebook()
        for part in self._frozen_parts():  # eval now: Lightning never calls .train() at fit start, it keeps each mode
            part.requires_grad_(False).eval()
        self._val_indices: list[torch.Tensor] = []
        self._val_runs = 0

    def train(self, mode: bool = True):
        super().train(mode)
        for part in self._frozen_parts():  # the frozen side never trains: no codebook updates either
            part.eval()
        return self

    def _frozen_parts(self) -> list[torch.nn.Module]:
        """With train_decoder_only, the modules that decide the token ids (VideoTokenizer.ENCODER_SIDE); else none."""
        if not self.hparams.get("train_decoder_only"):
            return []
        return [p for p in (getattr(self.model, n) for n in VideoTokenizer.ENCODER_SIDE) if p is not None]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_data()

    def forward(self, video: torch.Tensor):
        return self.model(video)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        out = self.model(video)
        mse = F.mse_loss(out.recon.float(), video.float())
        loss = mse + out.quant_loss
        usage = codebook_usage(out.indices, self.model.codebook_size)
        self.log_dict({"train/loss": loss, "train/mse": mse, "train/quant_loss": out.quant_loss,
                       "train/codebook_usage": usage.usage, "train/perplexity": usage.perplexity},
                      prog_bar=False, sync_dist=False)
        self.log("mse", mse, prog_bar=True, logger=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_indices = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        video = batch["video"]
        out = self.model(video)
        b = video.shape[0]  # the per-frame figures `genie evaluate` averages, from the same functions
        self.log("val/psnr", psnr(out.recon, video).mean(), batch_size=b, sync_dist=True, prog_bar=True)
        self.log("val/ssim", ssim(out.recon, video).mean(), batch_size=b, sync_dist=True)
        self.log("val/mse", F.mse_loss(out.recon.float(), video.float()), batch_size=b, sync_dist=True)
        self._val_indices.append(out.indices.detach().flatten().cpu())
        if batch_idx == 0 and self.trainer.is_global_zero and self.hparams.image_every_n_val and \
                self._val_runs % self.hparams.image_every_n_val == 0:
            self._write_image(video[:4], out.recon[:4])

    def on_validation_epoch_end(self) -> None:
        if self._val_indices:
            u = codebook_usage(torch.cat(self._val_indices), self.model.codebook_size)
            self.log("val/codebook_usage", u.usage)
            self.log("val/perplexity", u.perplexity)
        self._val_runs += 1

    def _write_image(self, video: torch.Tensor, recon: torch.Tensor) -> None:
        rows = []
        for v, r in zip(video, recon):
            rows += [v[:8], r[:8]]
        grid = video_grid(rows)
        # not trainer.log_dir: it broadcasts, and this runs on rank 0 only (a DDP deadlock)
        log_dir = Path(getattr(self.logger, "log_dir", None) or self.trainer.default_root_dir)
        try:
            (log_dir / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid.cpu().numpy()).save(log_dir / "images" / f"recon_step{self.global_step:07d}.png")
        except OSError:
            pass
        for lg in self.loggers:
            exp = getattr(lg, "experiment", None)
            if hasattr(exp, "add_image"):
                exp.add_image("val/reconstructions", grid.permute(2, 0, 1), self.global_step)
