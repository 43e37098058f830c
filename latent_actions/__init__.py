"""Latent action model (Genie §2.2): discrete latent actions learned from unlabeled video."""

from latent_actions.config import PRESETS, LatentActionConfig
from latent_actions.model import LAMOutput, LatentActionModel

__all__ = ["PRESETS", "LAMOutput", "LatentActionConfig", "LatentActionModel"]
