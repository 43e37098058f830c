"""genie: learn an action-controllable world model from unlabeled gameplay video (after Genie, Bruce et al. 2024)."""

__version__ = "0.1.0"
