"""evidex: a fast, trustworthy backend for reasoning-augmented multimodal retrieval.

`import evidex` needs numpy alone; torch, transformers, pillow and decord are
optional extras used by the sub-packages that need them.
"""

from ._core import CorruptIndexError, cpu_simd_level, set_simd_level, simd_level
from .bruteforce import BruteForceIndex, exact_knn
from .filters import F
from .index import HNSWIndex
from .ivf import IVFIndex

__version__ = "0.1.0"

__all__ = [
    "BruteForceIndex",
    "CorruptIndexError",
    "F",
    "HNSWIndex",
    "IVFIndex",
    "cpu_simd_level",
    "exact_knn",
    "set_simd_level",
    "simd_level",
]
