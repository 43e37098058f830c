"""The assembled world model: frozen tokenizer + latent action model + dynamics (Genie §2, Fig. 6).

A world-model folder holds one export per stage::

    DIR/tokenizer/  DIR/lam/  DIR/dynamics/   (each config.json + model.safetensors)
    DIR/world_model.json                      (what was assembled, and the checks that passed)

Generation: encode the prompt frame(s) to tokens, then per chosen latent action append a fully
masked frame, fill it with the MaskGIT loop conditioned on that action, and decode to pixels.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from genie.core.atomic import replace_dir, temp_dir_beside
from genie.core.config import format_hw
from genie.core.device import generator_for, module_device
from genie.core.errors import GenieInputError
from genie.core.registry import STAGES
from genie.export import load_export
from genie.sampling import Rollout, SamplingSettings, decode_tokens, rollout_tokens


def check_compatible(tokenizer, lam, dynamics) -> None:
    """Vocabularies, grids and resolutions must agree; a clear GenieInputError names the mismatch."""
    t, l, d = tokenizer.config, lam.config, dynamics.config
    problems = []
    if d.vocab_size != t.codebook_size:
        problems.append(f"dynamics vocab_size {d.vocab_size} != tokenizer codebook_size {t.codebook_size}")
    if tuple(d.grid) != t.grid:
        problems.append(f"dynamics grid {tuple(d.grid)} != tokenizer grid {t.grid}")
    if d.num_actions != l.num_actions:
        problems.append(f"dynamics num_actions {d.num_actions} != LAM num_actions {l.num_actions}")
    if (l.frame_size, l.channels) != (t.frame_size, t.channels):
        problems.append(f"LAM frames {format_hw(l.image_size)}px×{l.channels} != tokenizer frames "
                        f"{format_hw(t.image_size)}px×{t.channels} (width×height×channels)")
    if problems:
        raise GenieInputError("the three stages do not fit together: " + "; ".join(problems))


@dataclass
class GenieState:
    """Interactive state: token ids of the frames so far, the actions between them, the generator, and the
    rollout (with the dynamics model's KV cache) that `WorldModel.step` keeps between calls.

    settings: how `step` samples unless told otherwise, checked against the model (its context and window hop
    are the rollout's; see `genie.sampling.SamplingSettings`). `genie generate --context C --window-hop K` with the
    same seed and settings replays a session.
    Assigning `tokens` or `actions` directly is allowed: the next `step` then starts a fresh rollout from them.
    """

    tokens: Tensor  # (b, t, h, w)
    actions: Tensor  # (b, t-1)
    generator: torch.Generator = field(repr=False)
    settings: SamplingSettings = field(default_factory=SamplingSettings)
    rollout: Rollout | None = field(default=None, repr=False, compare=False)
    _published: tuple | None = field(default=None, repr=False, compare=False)  # (tokens, actions) the rollout set

    def truncate(self, num_frames: int) -> None:
        """Keep the first `num_frames` frames (undo); the generator is the caller's to rewind."""
        if self.synced():
            self.rollout.truncate(num_frames)
            self.publish()
        else:
            self.tokens, self.actions = self.tokens[:, :num_frames], self.actions[:, :num_frames - 1]

    def synced(self) -> bool:
        """Whether `tokens`/`actions` are still the rollout's (so its cache can be reused)."""
        return (self.rollout is not None and self._published is not None
                and self.tokens is self._published[0] and self.actions is self._published[1])

    def publish(self) -> None:
        self.tokens, self.actions = self.rollout.tokens, self.rollout.action_ids
        self._published = (self.tokens, self.actions)


class WorldModel(nn.Module):
    """Frozen tokenizer, LAM and dynamics model with `generate` and the `reset` / `step` API."""

    def __init__(self, tokenizer: nn.Module, lam: nn.Module, dynamics: nn.Module):
        super().__init__()
        check_compatible(tokenizer, lam, dynamics)
        self.tokenizer, self.lam, self.dynamics = tokenizer, lam, dynamics
        self.eval()
        self.requires_grad_(False)

    # -- loading / saving -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> WorldModel:
        p = Path(path)
        if not p.is_dir():
            raise GenieInputError(f"{p}: no such world-model folder")
        missing = [stage for stage in STAGES if not (p / stage).is_dir()]
        if missing:
            raise GenieInputError(f"{p}: not a world-model folder (missing {', '.join(missing)}/; "
                                  "make one with `genie assemble`)")
        return cls(*(load_export(p / stage, stage) for stage in STAGES))

    @staticmethod
    def assemble(tokenizer: str | os.PathLike, lam: str | os.PathLike, dynamics: str | os.PathLike,
                 out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Check three exports fit together and copy them into one world-model folder (atomically)."""
        srcs = {stage: Path(src) for stage, src in zip(STAGES, (tokenizer, lam, dynamics))}
        models = {stage: load_export(src, stage) for stage, src in srcs.items()}
        check_compatible(models["tokenizer"], models["lam"], models["dynamics"])
        out = Path(out)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise GenieInputError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir_beside(out)
        try:
            for stage, src in srcs.items():
                shutil.copytree(src, tmp / stage)
            summary = {"stages": {s: str(src) for s, src in srcs.items()},
                       "num_actions": models["lam"].num_actions,
                       "vocab_size": models["tokenizer"].config.codebook_size,
                       "image_size": models["tokenizer"].config.image_size}
            (tmp / "world_model.json").write_text(json.dumps(summary, indent=2))
            replace_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    # -- properties -------------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return self.lam.num_actions

    @property
    def device(self) -> torch.device:
        return module_device(self.dynamics)

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The tokenizer's `image_size`: an int for square frames, else (height, width)."""
        return self.tokenizer.config.image_size

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) of the frames the model reads and writes."""
        return self.tokenizer.config.frame_size

    def check_actions(self, actions: Tensor | Sequence[int]) -> None:
        """Latent action ids must lie in 0..num_actions-1: the one check of that range (generate, step, the
        `genie` command, genie play), a GenieInputError naming the first id outside it."""
        ids = actions.flatten().tolist() if isinstance(actions, Tensor) else actions
        bad = [a for a in ids if not 0 <= a < self.num_actions]
        if bad:
            raise GenieInputError(f"action id {bad[0]} is outside the latent action vocabulary 0..{self.num_actions - 1}")

    def _prompt(self, prompt: Tensor) -> Tensor:
        if prompt.ndim == 4:
            prompt = prompt[:, None] if prompt.shape[1] == self.tokenizer.config.channels else prompt[None]
        if prompt.ndim != 5:
            raise GenieInputError(f"prompt must be (b, t, c, H, W) or (b, c, H, W), got {tuple(prompt.shape)}")
        return prompt

    # -- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: Tensor) -> tuple[Tensor, Tensor]:
        """Prompt video (b, t0, c, H, W) → its tokens (b, t0, h, w) and LAM actions between its frames (b, t0-1)."""
        prompt = self._prompt(prompt).to(self.device)
        window = self.tokenizer.config.num_frames
        prompt = prompt[:, -min(prompt.shape[1], window, self.dynamics.config.context_frames):]
        tokens = self.tokenizer.encode(prompt)
        actions = self.lam.infer_actions(prompt) if prompt.shape[1] > 1 else tokens.new_zeros((prompt.shape[0], 0))
        return tokens, actions

    @torch.no_grad()
    def generate(self, prompt_frames: Tensor, actions: Tensor | list[int], steps: int | None = None,
                 temperature: float | None = None, seed: int | None = 0, use_cache: bool = True, unmask: str | None = None,
                 context: int | None = None, window_hop: int | None = None, *,
                 settings: SamplingSettings | None = None) -> Tensor:
        """Roll out one frame per action from a prompt.

        prompt_frames: (b, t0, c, H, W) or (b, c, H, W) in [-1, 1]. actions: (b, T) or (T,) latent action ids.
        settings: how frames are sampled (default: SamplingSettings(), Genie's 25 steps at temperature 1, the
        sliding window); steps, temperature, unmask, context, window_hop: its fields, given separately.
        Returns video (b, t0 + T, c, H, W) in [-1, 1]: the (re-decoded) prompt, then the generated frames.
        The same seed gives the same frames, and so does `reset` + one `step` per action with the same settings.
        """
        settings = SamplingSettings.from_args(settings, steps=steps, temperature=temperature, unmask=unmask,
                                              context=context, window_hop=window_hop).for_dynamics(self.dynamics)
        prompt_frames = self._prompt(prompt_frames)
        b = prompt_frames.shape[0]
        actions = torch.as_tensor(actions, dtype=torch.long)
        if actions.ndim == 1:
            actions = actions[None].expand(b, -1)
        self.check_actions(actions)
        tokens, prompt_actions = self.encode_prompt(prompt_frames)
        return self.rollout(tokens, actions.to(tokens.device), generator_for(tokens.device, seed), settings=settings,
                            prompt_actions=prompt_actions, use_cache=use_cache)

    @torch.no_grad()
    def rollout(self, prompt_tokens: Tensor, actions: Tensor, generator: torch.Generator | None = None, *,
                settings: SamplingSettings | None = None, prompt_actions: Tensor | None = None,
                use_cache: bool = True) -> Tensor:
        """Roll out one frame per action from prompt tokens and decode: the one rollout `generate`, `genie evaluate`
        and `genie probe` run (`step`, for genie play, runs the same `Rollout` one frame per call).

        prompt_tokens: (b, t0, h, w); prompt_actions: (b, t0-1), needed when t0 > 1; actions: (b, T) latent ids.
        settings: how frames are sampled (default: SamplingSettings()). generator: drawn from in frame order.
        Returns video (b, t0 + T, c, H, W) in [-1, 1]: the prompt's frames decoded, then the generated ones."""
        tokens = rollout_tokens(self.dynamics, prompt_tokens, actions, generator=generator, use_cache=use_cache,
                                prompt_actions=prompt_actions if prompt_tokens.shape[1] > 1 else None, settings=settings)
        return decode_tokens(self.tokenizer, tokens).clamp(-1, 1)

    @torch.no_grad()
    def reset(self, prompt: Tensor, seed: int = 0, context: int | None = None, window_hop: int | None = None, *,
              settings: SamplingSettings | None = None) -> GenieState:
        """Start an interactive session from a prompt (b, t0, c, H, W) or (b, c, H, W).

        settings: how `step` samples unless told otherwise (default: SamplingSettings()); context, window_hop: its
        fields, given separately. They are checked against the model here, before anything is encoded."""
        settings = SamplingSettings.from_args(settings, context=context, window_hop=window_hop).for_dynamics(self.dynamics)
        tokens, actions = self.encode_prompt(prompt)
        return GenieState(tokens=tokens, actions=actions, generator=generator_for(tokens.device, seed), settings=settings)

    @torch.no_grad()
    def step(self, state: GenieState, action: int | Tensor, steps: int | None = None, temperature: float | None = None,
             *, settings: SamplingSettings | None = None) -> Tensor:
        """Apply one latent action: returns the new frame (b, c, H, W) and extends `state` in place.

        settings: this step's (default: the state's; its context and window hop must be the state's); steps,
        temperature: its fields, given separately.
        The dynamics model's cache lives in `state` between calls, so a step costs the MaskGIT loop on one
        frame plus one frame of cache update, except when the context window moves (every frame with
        window_hop 1 once the context is full, every window_hop frames otherwise)."""
        b = state.tokens.shape[0]
        a = torch.as_tensor(action, dtype=torch.long, device=state.tokens.device).reshape(-1).expand(b)
        self.check_actions(a)
        if not state.synced():  # a new state, or tokens/actions assigned from outside: start from them
            state.rollout = Rollout(self.dynamics, state.tokens, state.actions if state.tokens.shape[1] > 1 else None,
                                    settings=state.settings)
        state.rollout.step(a, generator=state.generator,
                           settings=(settings or state.settings).override(steps=steps, temperature=temperature))
        state.publish()
        return decode_tokens(self.tokenizer, state.tokens[:, -self.tokenizer.config.num_frames:])[:, -1].clamp(-1, 1)
