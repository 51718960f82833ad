"""Training (extra ``train``): contrastive embedder training, RAR, RGE, CLaRa, and GRPO.

- `Embedder`: a transformers backbone with pooling, trainable and savable.
- `InfoNCELoss`, `CachedInfoNCELoss`: contrastive losses as objects.
- `ContrastiveTrainer`: AdamW, warm-up, accumulation, checkpoints, torch.distributed.
- `evaluate_retrieval`, `RetrievalEvaluator`: Recall@K, MRR@10, nDCG@10 on an evidex index.
- `rl`: GRPO of a reasoner against Embed-RL rewards; `rar`, `rge`, `clara`: the methods.
"""

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ModuleNotFoundError as e:  # pragma: no cover - exercised in a venv without torch
    raise ModuleNotFoundError(
        f"evidex.train needs torch and transformers ({e.name} is missing): "
        "pip install 'evidex[train]'"
    ) from e

from .data import ContrastiveBatch, ContrastiveExample, collate, load_jsonl
from .embedder import Embedder
from .evaluation import RetrievalEvaluator, evaluate_retrieval
from .losses import CachedInfoNCELoss, InfoNCELoss
from .trainer import ContrastiveTrainer, TrainOutput

__all__ = [
    "CachedInfoNCELoss",
    "ContrastiveBatch",
    "ContrastiveExample",
    "ContrastiveTrainer",
    "Embedder",
    "InfoNCELoss",
    "RetrievalEvaluator",
    "TrainOutput",
    "collate",
    "evaluate_retrieval",
    "load_jsonl",
]
