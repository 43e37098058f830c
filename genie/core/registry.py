"""The one list of genie's stages (architecture §3), as data: names and module paths, never imports.

The core must not reach a stage, so the classes are named by "module:Class" strings; the application
resolves them (`genie.stages`). Each stage's `name` is what the command line, the export folder of a
world model (`DIR/<name>/`) and an export's `config.json` (`genie_stage`) call it; its `package` is
its top-level folder, and its YAML configs live in `configs/<package>/`. Order is the pipeline's:
the tokenizer, then the latent action model, then the dynamics model trained on their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    package: str
    config: str  # "module:Class" of the config dataclass
    model: str  # ... of the plain nn.Module
    module: str  # ... of the LightningModule that trains it
    data: str  # what it trains on: "video" clips, or "tokens" of a dataset pre-tokenised by the first two
    train_share: float  # its share of a whole-pipeline training budget (genie quickstart)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("tokenizer", "tokenizer", "tokenizer.config:TokenizerConfig", "tokenizer.model:VideoTokenizer",
          "tokenizer.module:TokenizerModule", data="video", train_share=0.4),
    Stage("lam", "latent_actions", "latent_actions.config:LatentActionConfig", "latent_actions.model:LatentActionModel",
          "latent_actions.module:LatentActionModule", data="video", train_share=0.2),
    Stage("dynamics", "dynamics", "dynamics.config:DynamicsConfig", "dynamics.model:DynamicsModel",
          "dynamics.module:DynamicsModule", data="tokens", train_share=0.4),
)}


def stage_list(conj: str = "or") -> str:
    """'tokenizer, lam or dynamics', for messages."""
    *head, last = STAGES
    return f"{', '.join(head)} {conj} {last}" if head else last
