"""Moved to :mod:`evidex.examples.rar` (``python -m evidex.examples.rar``); this
name stays importable and runnable."""

import sys

from ..examples.rar import *  # noqa: F403
from ..examples.rar import main

if __name__ == "__main__":
    sys.exit(main())
