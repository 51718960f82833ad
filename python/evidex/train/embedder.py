"""The transformers embedding model used for training lives in
:mod:`evidex.embedding_model` (below both the inference embedders and the trainer);
it stays importable from here."""

from ..embedding_model import *  # noqa: F403
from ..embedding_model import Embedder, length_groups, pool

__all__ = ["Embedder", "length_groups", "pool"]
