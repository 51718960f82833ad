"""Lazy access to the optional CUDA module `evidex._cuda`.

The package never imports it at `import evidex`: a machine without the CUDA
module, a driver or a GPU imports and runs everything else.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_module: ModuleType | None = None
_import_error: Exception | None = None


def module() -> ModuleType:
    """The compiled CUDA module; raises RuntimeError naming why it is unavailable."""
    global _module, _import_error
    if _module is None and _import_error is None:
        try:
            _module = importlib.import_module("evidex._cuda")
        except ImportError as e:
            _import_error = e
    if _module is None:
        raise RuntimeError(
            "evidex was built without its CUDA module (nvcc was not found at build time, "
            f"or EVIDEX_CUDA=OFF): {_import_error}"
        )
    return _module


def is_built() -> bool:
    """True if the CUDA module was compiled into this installation."""
    try:
        module()
    except RuntimeError:
        return False
    return True


def device_count() -> int:
    """Number of usable CUDA devices (0 without a driver or GPU, or without the module)."""
    if not is_built():
        return 0
    return int(module().device_count())


def is_available() -> bool:
    """True when kernels can run: the module is built and a GPU is visible."""
    return device_count() > 0
