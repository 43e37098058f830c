"""LightningModule of the dynamics model: masked-token cross-entropy on pre-tokenised clips.

Batches come from a token dataset (`genie tokenize --tokenizer T --lam L`): tokens (b,t,h,w) and the
LAM's latent actions (b,t-1), so the frozen tokenizer and LAM run once per frame at tokenisation
time, never inside this optimiser (architecture §7.8: no frozen model in train mode, in the optimiser or
receiving gradients). Genie §2.3: each sample masks frames 1..t-1 at its own rate ~ U(0.5, 1)
(architecture §7.7); frame 0 stays clean, as the prompt does at sampling time. `clean_context_prob` > 0
also leaves a random prefix of frames clean in that share of the samples, so the model practises
predicting a frame from a clean past, as it does when sampling.
Two training-only levers against rollouts that drift (issue 24; both off by default, drawing no random numbers
then, so the default run is unchanged):
- `context_noise` = c > 0: each clip draws a rate r ~ U(0, c) and replaces that share of its visible (unmasked)
  tokens, and of the previous-frame tokens `prev_token_input` reads, by uniformly random ids; the targets stay the
  clean tokens. At sampling time the context is the model's own samples, errors included (architecture §7.15);
  GameNGen's noise augmentation (a level drawn per clip) is what made its autoregressive rollouts stable.
- `action_dropout` = p > 0 (needs `config.null_action`): each action is replaced by the learned null action with
  probability p, so the same model predicts with and without its action, as classifier-free guidance needs.
Validation logs, besides the masked-token loss/accuracy under the training masks (fixed seeds), the
accuracy of predicting a fully masked last frame from clean earlier frames in one step
(`val/next_frame_accuracy`), and the same figure for copying the previous frame's tokens
(`val/copy_last_accuracy`), the trivial baseline it should beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynamics.config import DynamicsConfig
from dynamics.maskgit import training_mask
from dynamics.model import DynamicsModel
from genie.core.device import generator_for
from genie.core.errors import GenieInputError
from genie.core.frames import previous_frames
from genie.core.training import GenieModule


def corrupt_tokens(tokens: torch.Tensor, max_rate: float, vocab_size: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """tokens (b, t, h, w) with a share r ~ U(0, max_rate) of each clip's tokens (r drawn per clip) replaced by
    uniformly random ids in [0, vocab_size): the errors a rollout's own samples put in its context."""
    b = tokens.shape[0]
    rate = max_rate * torch.rand(b, generator=generator, device=tokens.device)  # (b,)
    hit = torch.rand(tokens.shape, generator=generator, device=tokens.device) < rate.view(b, *[1] * (tokens.ndim - 1))
    noise = torch.randint(0, vocab_size, tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
    return torch.where(hit, noise, tokens)


class DynamicsModule(GenieModule):
    """Trains a `DynamicsModel`.

    Args:
        config: the model config (see `dynamics.config.PRESETS`, configs/dynamics/*.yaml).
        mask_rate_low, mask_rate_high: per-sample masking rate range (Genie: U(0.5, 1)).
        clean_context_prob: share of training samples whose frames before a random frame k stay clean
            (0 = Genie's scheme; see `dynamics.maskgit.training_mask`).
        context_noise: the largest share of visible context tokens replaced by random ids, a rate drawn per clip
            from U(0, context_noise) (0 = off).
        action_dropout: probability that each action is replaced by the null action (0 = off; needs
            `config.null_action`).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: AdamW with warmup and cosine decay.
    """

    stage = "dynamics"

    def __init__(self, config: DynamicsConfig, mask_rate_low: float = 0.5, mask_rate_high: float = 1.0,
                 clean_context_prob: float = 0.0, context_noise: float = 0.0, action_dropout: float = 0.0,
                 lr: float = 3e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 500, min_lr_ratio: float = 0.1):
        super().__init__()
        if isinstance(config, dict):
            config = DynamicsConfig.from_dict(config)
        for name, value in (("context_noise", context_noise), ("action_dropout", action_dropout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if action_dropout > 0 and not config.null_action:
            raise ValueError("action_dropout needs model.config.null_action: true (the learned action it drops to)")
        self.save_hyperparameters(ignore=["config"])
        self.hparams["config"] = config.to_dict()
        self.model = DynamicsModel(config)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = getattr(self.trainer, "datamodule", None)
        ds = getattr(dm, "train_set", None)
        if ds is None:
            return
        cfg = self.model.config
        if not getattr(ds, "is_tokens", False):
            raise GenieInputError(f"{dm.hparams.data}: the dynamics stage trains on a token dataset "
                                  "(make one with `genie tokenize --tokenizer DIR --lam DIR --data DIR --out DIR`)")
        if tuple(ds.frame_shape[:2]) != tuple(cfg.grid):
            raise GenieInputError(f"{dm.hparams.data}: token grid {ds.frame_shape[0]}×{ds.frame_shape[1]} does not match "
                                  f"the dynamics config grid {cfg.grid[0]}×{cfg.grid[1]}")
        vocab = ds.card.get("vocab_size")
        if vocab is not None and vocab != cfg.vocab_size:
            raise GenieInputError(f"{dm.hparams.data}: tokenizer vocabulary {vocab} != dynamics vocab_size {cfg.vocab_size}")
        if not ds.has_actions:
            raise GenieInputError(f"{dm.hparams.data}: token dataset has no actions (tokenize with --lam)")
        na = ds.card.get("num_actions")
        if na is not None and na != cfg.num_actions:
            raise GenieInputError(f"{dm.hparams.data}: {na} action ids in the data, dynamics num_actions is {cfg.num_actions}")
        if dm.hparams.clip_len > cfg.num_frames:
            raise GenieInputError(f"data.clip_len {dm.hparams.clip_len} exceeds dynamics num_frames {cfg.num_frames}")

    def _shared_step(self, batch: dict, generator: torch.Generator | None = None, clean_context_prob: float = 0.0,
                     context_noise: float = 0.0, action_dropout: float = 0.0):
        tokens, actions = batch["tokens"], batch["actions"]
        mask = training_mask(tokens.shape, self.hparams.mask_rate_low, self.hparams.mask_rate_high,
                             generator=generator, keep_first_frames=1, device=tokens.device,
                             clean_prefix_prob=clean_context_prob)
        seen = corrupt_tokens(tokens, context_noise, self.model.config.vocab_size, generator) if context_noise else tokens
        inp = seen.masked_fill(mask, self.model.mask_id)
        # with prev_token_input each frame reads the previous frame (as seen: noisy under context_noise), as when sampling
        prev = previous_frames(seen, self.model.mask_id)
        null = None
        if action_dropout:
            null = torch.rand(actions.shape, generator=generator, device=actions.device) < action_dropout
        # logits of the masked positions only (m, v): the loss reads nothing else
        logits = self.model(inp, actions, prev_tokens=prev, where=mask, null_actions=null)
        if not mask.any():  # possible only for tiny clips: keep the graph, contribute nothing
            zero = logits.sum() * 0.0
            return zero, zero.detach()
        target = tokens[mask]
        loss = F.cross_entropy(logits.float(), target)
        acc = (logits.detach().argmax(-1) == target).float().mean()
        return loss, acc

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        loss, acc = self._shared_step(batch, clean_context_prob=hp.get("clean_context_prob", 0.0),
                                      context_noise=hp.get("context_noise", 0.0), action_dropout=hp.get("action_dropout", 0.0))
        self.log_dict({"train/loss": loss, "train/masked_accuracy": acc})
        self.log("ce", loss, prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        g = generator_for(batch["tokens"].device, batch_idx)  # same masks every validation, on the data's device
        loss, acc = self._shared_step(batch, generator=g)
        b = batch["tokens"].shape[0]
        self.log("val/loss", loss, batch_size=b, sync_dist=True, prog_bar=True)
        self.log("val/masked_accuracy", acc, batch_size=b, sync_dist=True)
        tokens = batch["tokens"]
        inp = tokens.clone()
        inp[:, -1] = self.model.mask_id
        last = torch.zeros_like(tokens, dtype=torch.bool)
        last[:, -1] = True
        pred = self.model(inp, batch["actions"], where=last).argmax(-1)  # (b h w,): the last frame's logits only
        self.log("val/next_frame_accuracy", (pred == tokens[:, -1].flatten()).float().mean(), batch_size=b,
                 sync_dist=True)
        self.log("val/copy_last_accuracy", (tokens[:, -2] == tokens[:, -1]).float().mean(), batch_size=b,
                 sync_dist=True)
