"""Latent action model (LAM, Genie §2.2): discrete actions learned from unlabeled video.

An encoder sees frames x_1..x_T and emits one continuous latent per transition t -> t+1, which a
VQ with a tiny codebook (|A| = 6-8 codes) turns into a latent action a_t. A decoder must then
predict x_{t+1} from the past frames x_<=t and a_t alone, so the only way information about the
future reaches it is the few bits of a_t: the codes are pushed to describe what changed, i.e. the
action. The decoder is thrown away after training; the world model keeps the codebook and the
encoder (to label videos for the dynamics model). Pixel input throughout (Genie Table 2).

The encoder reads each frame's patches together with their difference from the previous frame (and,
with `crop_box`, a fixed window of the frame at finer patches), and pools frame t+1's output tokens
(attention pooling) into the latent of transition t.

Causality (architecture §7.2, §7.6):
- encoder: causal temporal attention by default, and a_t is read from frame t+1's tokens, so a_t
  depends on frames <= t+1 only. With `encoder_causal: false` the encoder's temporal attention is
  bidirectional and a_t may read the whole clip (a multi-step inverse model, LAOM); allowed because
  the encoder only labels training data (Genie §2.1), the decoder below stays causal;
- decoder: causal temporal attention over frames x_1..x_{T-1}, with a_t added to frame t's tokens,
  so the prediction of x_{t+1} depends on x_<=t and a_<=t only, never on x_{t+1} itself.

Shape legend: b batch, t frames, c channels, H W pixels, p patch size, h w patch grid,
n flattened patches (h*w), d width, a latent-action vocabulary (num_actions), e code dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from genie.nn import STTransformer, build_quantizer
from latent_actions.config import LatentActionConfig


@dataclass
class LAMOutput:
    pred: Tensor  # (b, t-1, c, H, W) predictions of frames 2..t (targets video[:, 1:], in [-1, 1])
    actions: Tensor  # (b, t-1) int64 latent action ids in [0, a); actions[:, i] moves frame i -> i+1
    action_emb: Tensor  # (b, t-1, d) fp32 quantized action embeddings the decoder was given
    quant_loss: Tensor  # () VQ commitment loss, already weighted; 0 in eval mode
    latents: Tensor  # (b, t-1, d) fp32 continuous pre-quantization latents (what the VQ rounded)


class LatentActionModel(nn.Module):
    """Pixel-input LAM over clips of 2..`config.num_frames` frames."""

    def __init__(self, config: LatentActionConfig) -> None:
        super().__init__()
        if config.crop_box == "card":
            raise ValueError('crop_box "card" is settled by the training data: build the model from '
                             "config.with_card(card) (genie train does this)")
        self.config = config
        c, p, d = config.channels, config.patch_size, config.width
        n = config.tokens_per_frame

        # ---- encoder: frames x_1..x_T -> one latent per transition ----
        self.encoder_patch_embed = nn.Linear(2 * p * p * c, d)
        self.crop_patch_embed = None
        n_crop = 0
        if config.crop_box is not None:  # the crop's finer patches, also beside their change (see _encode_latents)
            cp, (top, left, bottom, right) = config.crop_patch, config.crop_box
            self.crop_patch_embed = nn.Linear(2 * cp * cp * c, d)
            n_crop = ((bottom - top) // cp) * ((right - left) // cp)
        self.encoder = STTransformer(
            d,
            config.depth_encoder,
            config.num_heads,
            num_tokens=n + n_crop,
            num_frames=config.num_frames,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            causal=config.encoder_causal,
        )
        # Attention pooling over the n patches of frame t+1: a learned score per patch, so the
        # latent can concentrate on the few patches where something moved instead of averaging
        # them away among static background.
        self.pool_score = nn.Linear(d, 1)
        self.quantizer = build_quantizer(
            "vq",
            d,
            codebook_size=config.train_codes or config.num_actions,
            code_dim=config.code_dim,
            commitment_weight=config.commitment_weight,
            decay=config.vq_decay,
            kmeans_iters=config.kmeans_iters,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
            entropy_weight=config.code_entropy_weight,
        )

        # ---- decoder: frames x_1..x_{T-1} + actions a_1..a_{T-1} -> frames x_2..x_T ----
        # With decoder_motion the decoder also reads each context frame's change since the previous
        # one (see _decode), like the encoder does.
        self.decoder_patch_embed = nn.Linear((2 if config.decoder_motion else 1) * p * p * c, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        # Context frames number at most num_frames - 1 (the last frame is only ever a target).
        self.decoder = STTransformer(
            d,
            config.depth_decoder,
            config.num_heads,
            num_tokens=n,
            num_frames=config.context_frames,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            causal=True,
        )
        self.to_pixels = nn.Linear(d, p * p * c)
        self._init_weights()

    def _init_weights(self) -> None:
        # The two STTransformers initialise themselves (GPT-2 scheme, genie.nn.st_block); the
        # quantizer keeps PyTorch's default for its projections and the library's k-means codebook.
        for linear in (self.encoder_patch_embed, self.decoder_patch_embed, self.to_pixels, self.crop_patch_embed):
            if linear is None:
                continue
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        # Zero scores: pooling starts as a plain mean over the patches and learns where to look.
        nn.init.zeros_(self.pool_score.weight)
        nn.init.zeros_(self.pool_score.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        # The action embedding (unit-norm code -> width d) starts at O(1) per channel, larger than
        # the patch embeddings (~0.5), so the decoder feels a_t from the first steps; with the
        # default PyTorch init (~0.2) it learned to use the action more slowly on synthetic sprites.
        if isinstance(self.quantizer.project_out, nn.Linear):
            nn.init.normal_(self.quantizer.project_out.weight, std=1.0)
            nn.init.zeros_(self.quantizer.project_out.bias)

    @property
    def num_actions(self) -> int:
        """Size a of the latent-action vocabulary (while training with `train_codes`, that wider codebook's)."""
        return self.config.train_codes or self.config.num_actions

    @property
    def codebook(self) -> Tensor:
        """(a, e) unit-norm latent-action codes: what a user picks from at generation time."""
        return self.quantizer.codebook

    # ---- checks -------------------------------------------------------------------------------

    def _check_video(self, video: Tensor, min_frames: int, max_frames: int, name: str) -> None:
        cfg = self.config
        expected = (cfg.channels, *cfg.frame_size)
        if video.ndim != 5 or tuple(video.shape[2:]) != expected:
            raise ValueError(
                f"{name} must be (b, t, c, H, W) with (c, H, W) = {expected}, got {tuple(video.shape)}"
            )
        if not min_frames <= video.shape[1] <= max_frames:
            raise ValueError(
                f"number of frames in {name} must be in [{min_frames}, {max_frames}], got {video.shape[1]}"
            )

    def _check_actions(self, actions: Tensor, context: Tensor) -> None:
        b, t = context.shape[:2]
        if actions.shape != (b, t):
            raise ValueError(
                f"actions must be (b, t) = ({b}, {t}), one per context frame, got {tuple(actions.shape)}"
            )
        if actions.is_floating_point() or actions.dtype == torch.bool:
            raise ValueError(f"actions must be an integer tensor, got {actions.dtype}")
        if actions.numel() and (actions.min() < 0 or actions.max() >= self.num_actions):
            raise ValueError(
                f"action ids must be in [0, {self.num_actions}), got min {actions.min().item()} "
                f"max {actions.max().item()}"
            )

    # ---- model --------------------------------------------------------------------------------

    def _patchify(self, video: Tensor, p: int | None = None) -> Tensor:
        p = p or self.config.patch_size
        return rearrange(video, "b t c (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=p, p2=p)

    @staticmethod
    def _with_motion(patches: Tensor) -> Tensor:
        """patches (b, t, n, f) -> (b, t, n, 2f): each frame's patches beside their change since the
        previous frame (zero for the first). Uses frames t-1 and t only, so causality holds."""
        diff = torch.cat([torch.zeros_like(patches[:, :1]), patches[:, 1:] - patches[:, :-1]], dim=1)
        return torch.cat([patches, diff], dim=-1)

    def _encode_latents(self, video: Tensor) -> Tensor:
        # Each frame's patches go in beside their change since the previous frame (zero for the first):
        # motion becomes a linear input feature, not something attention must discover by comparing frames
        # (measured: README, Measured here). It uses frames t-1 and t only, so causality holds.
        x = self.encoder_patch_embed(self._with_motion(self._patchify(video)))  # (b, t, n, d)
        if self.crop_patch_embed is not None:
            # The agent window at finer patches: a sprite's facing is a few pixels that a coarse patch embedding
            # averages with the background (agent-centred inputs: MaskLAM, arXiv 2602.02259); its tokens join the frame's.
            top, left, bottom, right = self.config.crop_box
            crop = self._patchify(video[..., top:bottom, left:right], self.config.crop_patch)
            x = torch.cat([x, self.crop_patch_embed(self._with_motion(crop))], dim=2)  # (b, t, n + n_crop, d)
        x = self.encoder(x)
        # Transition i (frames i -> i+1) is read from frame i+1's tokens, which causal temporal
        # attention has let see frames <= i+1 only (all frames with encoder_causal off). Frame 0's
        # tokens end no transition.
        x = x[:, 1:]  # (b, t-1, n, d)
        weights = self.pool_score(x).float().softmax(dim=2)  # (b, t-1, n, 1)
        latents = (weights * x.float()).sum(dim=2)  # (b, t-1, d)
        if self.config.center_latents and latents.shape[1] > 1:
            # What every transition of the clip shares (the game, the level, the scene) is not the action: the
            # codes quantise each transition's difference from the clip's mean, so they must vary within a clip
            # (on a dozen Atari videos the uncentred LAM gave every transition of a held-out video one code)
            latents = latents - latents.mean(dim=1, keepdim=True)
        return latents


    def _decode(self, context: Tensor, action_emb: Tensor) -> Tensor:
        """context (b, t, c, H, W) frames x_1..x_t, action_emb (b, t, d) -> x_2..x_{t+1} (b, t, c, H, W)."""
        (h, _), p = self.config.grid, self.config.patch_size
        patches = self._patchify(context)  # (b, t, n, p*p*c)
        if self.config.decoder_motion:
            # The scene's own motion (camera scroll, walking enemies) is predictable from the last two
            # context frames; given that change as an input, the decoder needs no a_t for it, so a_t's few
            # bits go to what the past cannot tell: the controller's choice (measured: README, Measured here).
            patches = self._with_motion(patches)
        x = self.decoder_patch_embed(patches)  # (b, t, n, d)
        ratio = self.config.decoder_mask_ratio
        if self.training and ratio > 0:
            # Anti-ignore guard (architecture §7.6). With the full past visible, a decoder can predict
            # most of x_{t+1} (static background, momentum of moving objects) without a_t; the
            # tiny action codes then carry little gradient signal and collapse to one or two ids.
            # Hiding a random fraction of the context patches behind a learned mask token makes the
            # past an unreliable source: where the object and its surroundings are masked, the
            # decoder must lean on what else it is given — a_t — to place what moved. Each sample
            # draws its own rate ~U(0, ratio) (architecture §7.7: one rate per batch is noisy), so the
            # decoder also trains on nearly unmasked contexts like those of eval mode, where this
            # never runs. The target frames are never masked.
            b, t, n = x.shape[:3]
            rate = torch.rand(b, 1, 1, device=x.device) * ratio
            masked = torch.rand(b, t, n, device=x.device) < rate  # (b, t, n)
            x = torch.where(masked[..., None], self.mask_token.to(x.dtype), x)
        # Genie-style additive conditioning: a_t is broadcast over every patch of frame t, whose
        # output position (causal in time) predicts frame t+1.
        x = x + action_emb[:, :, None, :].to(x.dtype)  # (b, t, n, d)
        x = self.decoder(x)
        return rearrange(
            self.to_pixels(x), "b t (h w) (p1 p2 c) -> b t c (h p1) (w p2)", h=h, p1=p, p2=p
        )

    def forward(self, video: Tensor) -> LAMOutput:
        """video (b, t, c, H, W) in [-1, 1], 2 <= t <= num_frames -> LAMOutput.

        The reconstruction target is video[:, 1:]; the loss is left to the training module.
        """
        self._check_video(video, 2, self.config.num_frames, "video")
        latents = self._encode_latents(video)
        q = self.quantizer(latents)
        pred = self._decode(video[:, :-1], q.quantized)
        return LAMOutput(pred=pred, actions=q.indices, action_emb=q.quantized, quant_loss=q.loss, latents=latents)

    def infer_actions(self, video: Tensor) -> Tensor:
        """video (b, t, c, H, W) in [-1, 1] -> latent action ids (b, t-1) int64.

        Call in eval mode: in train mode the VQ updates its codebook (EMA) as a side effect.
        """
        self._check_video(video, 2, self.config.num_frames, "video")
        return self.quantizer(self._encode_latents(video)).indices

    def encode_latents(self, video: Tensor) -> Tensor:
        """video (b, t, c, H, W) in [-1, 1] -> continuous pre-quantization latents (b, t-1, d) fp32: what the
        VQ rounds to a code. Read by few-label probes and the latent -> real action map (genie.grounding)."""
        self._check_video(video, 2, self.config.num_frames, "video")
        return self._encode_latents(video)

    @torch.no_grad()
    def reduced(self) -> LatentActionModel:
        """The playable model of a LAM trained with `train_codes` K > num_actions: the K codes, weighted by their
        use (the VQ's EMA counts), clustered into num_actions groups by spherical k-means; each group's unit-norm
        weighted mean becomes one playable code. Every other weight is shared. A model without train_codes is
        returned as it is."""
        cfg = self.config
        if not cfg.train_codes:
            return self
        inner = self.quantizer.vq._codebook
        codes = self.codebook.float()  # (K, e) unit-norm
        use = inner.cluster_size[0].float().clamp_min(1e-6)  # (K,) EMA counts
        centroids, assign = spherical_kmeans(codes, use, cfg.num_actions)
        out = LatentActionModel(LatentActionConfig.from_dict({**cfg.to_dict(), "train_codes": 0}))
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("quantizer.vq.")}
        out.load_state_dict(state, strict=False)
        target = out.quantizer.vq._codebook
        sizes = torch.zeros(cfg.num_actions).index_add_(0, assign, use)
        target.embed.data.copy_(centroids[None])
        target.cluster_size.data.copy_(sizes[None])
        target.embed_avg.data.copy_((centroids * sizes[:, None])[None])
        target.initted.data.fill_(True)
        return out.train(self.training)

    def embed_actions(self, actions: Tensor) -> Tensor:
        """action ids (...) -> their decoder embeddings (..., d) fp32 (codebook projected to d)."""
        return self.quantizer.indices_to_codes(actions)

    def decode_embeddings(self, context: Tensor, action_emb: Tensor) -> Tensor:
        """The decoder alone: context (b, t, c, H, W) frames x_1..x_t and any (b, t, d) action embeddings (a
        codebook entry, or a training-only "no action" vector) -> predictions of x_2..x_{t+1}."""
        return self._decode(context, action_emb)

    def decode_with_actions(self, context: Tensor, actions: Tensor) -> Tensor:
        """Predict each next frame from the context and chosen latent actions.

        context (b, t, c, H, W) frames x_1..x_t in [-1, 1], 1 <= t < num_frames; actions (b, t) ids,
        actions[:, i] applied to frame i -> predictions of x_2..x_{t+1}, (b, t, c, H, W). In eval
        mode with actions = infer_actions(video) and context = video[:, :-1] this equals
        forward(video).pred; with other ids it shows what each latent action does.
        """
        self._check_video(context, 1, self.config.context_frames, "context")
        self._check_actions(actions, context)
        return self._decode(context, self.embed_actions(actions))


def spherical_kmeans(x: Tensor, weight: Tensor, k: int, iters: int = 50) -> tuple[Tensor, Tensor]:
    """Weighted k-means of unit vectors x (K, e) under cosine similarity -> (centroids (k, e) unit-norm, (K,)
    group of each vector). Deterministic: starts from the most used vector, then repeatedly the vector least
    similar to every chosen one (farthest-point), so the groups start spread out."""
    chosen = [int(weight.argmax())]
    while len(chosen) < k:
        sim = (x @ x[chosen].T).max(dim=1).values
        sim[chosen] = float("inf")
        chosen.append(int(sim.argmin()))
    centroids = x[chosen].clone()
    for _ in range(iters):
        assign = (x @ centroids.T).argmax(dim=1)
        new = torch.zeros_like(centroids).index_add_(0, assign, x * weight[:, None])
        empty = new.norm(dim=1) < 1e-12
        new[empty] = centroids[empty]  # a group that lost every member keeps its centre
        new = torch.nn.functional.normalize(new, dim=1)
        if torch.allclose(new, centroids):
            break
        centroids = new
    return centroids, (x @ centroids.T).argmax(dim=1)
