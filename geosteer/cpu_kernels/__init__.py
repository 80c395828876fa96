"""numba kernels for CPU tensors, one module per op (`geosteer.cpu_kernels.<op>`).

Each is the CPU twin of the op's Triton kernel in `geosteer.kernels` and is
checked against the op's plain-torch reference in `geosteer.ops.<op>`.
numba is a dependency but may be missing in a trimmed install: `load` then
returns None and the ops run their torch references (`geosteer.ops.dispatch`).
The functions compile on first call and are cached on disk.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.lru_cache(maxsize=None)
def numba_problem() -> str | None:
    """Why the numba kernels cannot run (None when they can).

    Raises:
        ModuleNotFoundError: a module other than numba / llvmlite is missing
            (a broken install, not the optional dependency).
    """
    try:
        import numba  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name not in ("numba", "llvmlite"):
            raise
        return "numba is not installed"
    return None


def load(op: str) -> ModuleType | None:
    """The numba kernel module of `op` (`geosteer.cpu_kernels.<op>`), or None without numba."""
    if numba_problem() is not None:  # looked up at call time, so tests can stand in for a missing numba
        return None
    return importlib.import_module(f"geosteer.cpu_kernels.{op}")
