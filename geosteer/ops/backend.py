"""Backend resolution shared by the ops: "auto" | "triton" | "torch".

`backend` is a choice for CUDA tensors only. CPU tensors always run the
plain-torch reference (the ops register it as their default kernel and the
Triton launcher only on "cuda"), whatever `backend` says.

On CUDA:
- "torch": the reference.
- "triton": the Triton kernel; if it cannot run here, `BackendUnavailable`
  says why (never a silent fallback: an explicit choice is a promise).
- "auto": the Triton kernel when it can run, else the reference with a
  one-time `RuntimeWarning` that says why.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "torch")

#: dtypes the Triton kernels read; others (float64) run the reference.
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Compute capability Triton needs (Volta and newer).
_MIN_CAPABILITY = (7, 0)

_warned: set[str] = set()


class BackendUnavailable(RuntimeError):
    """backend="triton" was asked for but the Triton kernel cannot run."""


def check_backend(backend: str) -> str:
    """Validate the `backend` string; return it.

    Raises:
        ValueError: not one of "auto", "triton", "torch".
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@functools.lru_cache(maxsize=None)
def triton_import_problem() -> str | None:
    """Why Triton cannot be imported (None when it can).

    Raises:
        ImportError: Triton is installed but importing it fails on another
            module; that is a broken install, not a missing optional one.
    """
    try:
        import triton  # noqa: F401
    except ImportError as error:
        if error.name != "triton":
            raise
        return "triton is not installed (pip install triton)"
    return None


def _device_problem(device: torch.device) -> str | None:
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < _MIN_CAPABILITY:
        return f"Triton needs CUDA compute capability >= 7.0, {device} has {major}.{minor}"
    return None


def triton_problem(device: torch.device, dtypes: tuple[torch.dtype, ...]) -> str | None:
    """Why the Triton kernel cannot run on CUDA `device` for `dtypes` (None when it can)."""
    problem = triton_import_problem()
    if problem is not None:
        return problem
    for dtype in dtypes:
        if dtype not in TRITON_DTYPES:
            return f"the Triton kernels read float16/bfloat16/float32, got {dtype}"
    return _device_problem(device)


def use_triton(op: str, backend: str, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> bool:
    """Whether `op` runs its Triton kernel for tensors on `device` with `dtypes`.

    Args:
        op: the op's name, for messages (e.g. "geosteer::part_cost").
        backend: "auto" | "triton" | "torch".
        device: where the op's tensors live.
        dtypes: the floating dtypes the kernel would read.

    Returns:
        True for the Triton kernel, False for the torch reference. CPU (and
        any non-CUDA) tensors always get False.

    Raises:
        ValueError: unknown `backend`.
        BackendUnavailable: backend="triton" on CUDA, and the kernel cannot run.
    """
    check_backend(backend)
    if device.type != "cuda" or backend == "torch":
        return False
    problem = triton_problem(device, dtypes)
    if problem is None:
        return True
    if backend == "triton":
        raise BackendUnavailable(f"{op}: backend='triton' cannot run: {problem}; use backend='auto' or 'torch'")
    _warn_once(op, problem)
    return False


def _warn_once(op: str, problem: str) -> None:
    key = f"{op}: {problem}"
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(
        f"{op}: backend='auto' falls back to the torch reference on CUDA because {problem}",
        RuntimeWarning,
        stacklevel=3,
    )


def same_device(op: str, first: torch.Tensor, **others: torch.Tensor) -> None:
    """Before a Triton launch: every tensor must live on `first`'s device.

    Raises:
        ValueError: naming the tensor on another device (a kernel would read
            a host pointer as device memory).
    """
    for name, tensor in others.items():
        if tensor.device != first.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but the embeddings are on {first.device}")


def check_ids_in_range(ids: torch.Tensor, size: int, name: str) -> None:
    """Before a Triton launch: ids must index `[0, size)`.

    A kernel gathers through `ids` with no bounds check, so an id out of
    range would read foreign memory; one small reduction (and host sync)
    rules that out.

    Raises:
        TypeError: `ids` is not an integer tensor.
        ValueError: an id lies outside `[0, size)`.
    """
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be int32/int64, got {ids.dtype}")
    if ids.numel() and bool(((ids < 0) | (ids >= size)).any()):
        raise ValueError(f"{name} holds ids outside [0, {size})")


def optional_numba_module(name: str) -> ModuleType | None:
    """Import one of geosteer's numba modules, or None when numba is not installed.

    Raises:
        ModuleNotFoundError: a module other than numba / llvmlite is missing
            (a broken install, not the optional dependency).
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name not in ("numba", "llvmlite"):
            raise
        return None
