"""Moved to :mod:`evidex.examples.clara` (``python -m evidex.examples.clara``); this
name stays importable and runnable."""

import sys

from ..examples.clara import *  # noqa: F403
from ..examples.clara import main

if __name__ == "__main__":
    sys.exit(main())
