"""Moved to :mod:`evidex.examples.rl` (``python -m evidex.examples.rl``); this
name stays importable and runnable."""

import sys

from ..examples.rl import *  # noqa: F403
from ..examples.rl import main

if __name__ == "__main__":
    sys.exit(main())
