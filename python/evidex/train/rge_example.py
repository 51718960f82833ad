"""Moved to :mod:`evidex.examples.rge` (``python -m evidex.examples.rge``); this
name stays importable and runnable."""

import sys

from ..examples.rge import *  # noqa: F403
from ..examples.rge import main

if __name__ == "__main__":
    sys.exit(main())
