"""Moved to :mod:`evidex.examples.rar_ablation` (``python -m evidex.examples.rar_ablation``); this
name stays importable and runnable."""

import sys

from ..examples.rar_ablation import *  # noqa: F403
from ..examples.rar_ablation import main

if __name__ == "__main__":
    sys.exit(main())
