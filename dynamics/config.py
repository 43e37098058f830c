"""Configuration of the dynamics model (MaskGIT ST-transformer, Genie §2.3) and its named presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from genie.core.config import StageConfig, check_at_least, check_positive_ints, check_transformer

ACTION_CONDITIONINGS = ("additive", "token")


@dataclass
class DynamicsConfig(StageConfig):
    """Sizes of the dynamics model. Defaults are the Genie CoinRun case study (App. F).

    `vocab_size` is the tokenizer's codebook size; the model embeds one extra id, `vocab_size`
    itself, as the MASK token. `grid` is the (h, w) token grid of one frame. `num_actions` is the
    latent-action vocabulary of the LAM.

    `action_conditioning` says how the action a_t (taken between frames t and t+1) enters:
    - "additive" (Genie §2.3): the embedding of a_t is added to every token embedding of frame
      t+1, the frame it leads to; frame 0 gets a learned "no action" embedding.
    - "token": one extra action token is prepended to the tokens of frame t+1 (spatial attention
      spreads it over the frame); frame 0's action token is the learned "no action" embedding.
    Either way the prediction of frame t+1 sees a_t and nothing of a_{t+1} onwards.

    `prev_token_input` (not in the paper; default off, so older exports load unchanged) adds to every
    position of frame t the embedding of frame t-1's token there (see `dynamics.model`).

    `copy_gate` (needs `prev_token_input`; default off) adds to each position's logit of frame t-1's token
    there a gate the model computes from its output, starting at log(v - 1): "keep the previous token"
    is then the prediction from step 0 (copy-last accuracy), and training learns where to change it.

    `null_action` (default off, so older exports load unchanged) gives the model a learned "action unknown"
    embedding that may stand in for any a_t: training's action dropout (`DynamicsModule(action_dropout=p)`)
    teaches it, and classifier-free guidance at sampling (`SamplingSettings.guidance`) contrasts the frame
    predicted under a_t with the frame predicted under it. A model without one cannot be guided.
    """

    PRESET_KIND = "dynamics"

    vocab_size: int = 1024
    grid: tuple[int, int] = (16, 16)
    num_actions: int = 8
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    num_frames: int = 16
    dropout: float = 0.0
    action_conditioning: str = "additive"
    prev_token_input: bool = False
    copy_gate: bool = False
    null_action: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.grid, int) or len(self.grid) != 2:
            raise ValueError(f"grid must be a pair (h, w), got {self.grid!r}")
        self.grid = tuple(self.grid)
        for side in self.grid:
            if isinstance(side, bool) or not isinstance(side, int) or side < 1:
                raise ValueError(f"grid must be two positive integers (h, w), got {self.grid!r}")
        check_positive_ints(self, "vocab_size", "num_actions", "width", "depth", "num_heads", "num_frames")
        check_at_least(self, "vocab_size", 2)
        check_at_least(self, "num_frames", 2)  # one frame has no transition to predict
        check_transformer(self)
        if not isinstance(self.prev_token_input, bool):
            raise ValueError(f"prev_token_input must be true or false, got {self.prev_token_input!r}")
        if not isinstance(self.copy_gate, bool):
            raise ValueError(f"copy_gate must be true or false, got {self.copy_gate!r}")
        if not isinstance(self.null_action, bool):
            raise ValueError(f"null_action must be true or false, got {self.null_action!r}")
        if self.copy_gate and not self.prev_token_input:
            raise ValueError("copy_gate needs prev_token_input: true (it boosts the previous frame's token)")
        if self.action_conditioning not in ACTION_CONDITIONINGS:
            raise ValueError(
                f"action_conditioning must be one of {ACTION_CONDITIONINGS}, got {self.action_conditioning!r}"
            )

    @property
    def mask_id(self) -> int:
        """Token id of MASK: one past the tokenizer's codebook."""
        return self.vocab_size

    @property
    def tokens_per_frame(self) -> int:
        """n = h * w."""
        return self.grid[0] * self.grid[1]


PRESETS: dict[str, dict[str, Any]] = {
    # Tiny, for tests.
    "debug": dict(
        vocab_size=32,
        grid=(8, 8),  # the debug tokenizer's grid (patch 8 at 64x64)
        num_actions=8,
        width=32,
        depth=1,
        num_heads=2,
        num_frames=4,
    ),
    # For training on 2 CPU cores (16x16 tokens of a 64x64 frame at patch 4); the committed
    # pretrained/ dynamics model has these sizes, without prev_token_input and copy_gate.
    "cpu": dict(
        vocab_size=1024,
        grid=(16, 16),
        num_actions=8,
        width=192,
        depth=3,
        num_heads=6,
        num_frames=16,
        prev_token_input=True,
        copy_gate=True,
    ),
    # Genie App. F, CoinRun case study: exactly the paper's sizes.
    "coinrun-paper": dict(
        vocab_size=1024,
        grid=(16, 16),
        num_actions=8,
        width=512,
        depth=12,
        num_heads=8,
        num_frames=16,
    ),
}
DynamicsConfig.PRESETS = PRESETS
