"""The one dispatch rule of every geosteer op: which implementation runs.

Each op has a plain-torch reference (the oracle in tests) and up to two
compiled kernels: a Triton kernel for CUDA tensors (`geosteer.kernels.<op>`)
and a numba kernel for CPU tensors (`geosteer.cpu_kernels.<op>`). Its
`KernelSpec` says which exist; `resolve` picks one from `backend`:

| backend | CUDA tensors | CPU tensors |
|---|---|---|
| "auto" | the Triton kernel; where it cannot run, the reference with a one-time `RuntimeWarning` saying why | the numba kernel for the dtypes it reads; without numba, the reference with a one-time warning |
| "triton" | the Triton kernel, or `BackendUnavailable` saying why (an explicit choice is a promise) | `BackendUnavailable` for an op with a Triton kernel (they run on CUDA tensors only); else as "auto" |
| "torch" | the reference | the reference |

A dtype a kernel does not read (float64, say) takes the reference; on CUDA
"auto" says so once, on the CPU silently (the numba kernels are a CPU speed-up
for float32, the common case, and for the compact region dtypes they read).
Which dtypes each kernel reads is its op's `KernelSpec` (`geosteer::part_cost`
also reads float16 and int8 region rows, `geosteer.quantize`). Ops without
any kernel (`first_stage`'s matmul) run the same code for every backend;
`backend` is still validated.

One op routes further by problem size once the implementation is picked:
`geosteer::assign` on CUDA (`geosteer.ops.assign.CUDA_ROUTES`): a subset DP
(the Triton kernel, or the torch reference) for min(W, T) <= 6, above it
torch-linear-assignment's Triton kernel (capability >= 8.0), or, for the
reference, the CPU solver.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from geosteer import cpu_kernels
from geosteer.choices import check_choice

BACKENDS = ("auto", "triton", "torch")
Impl = Literal["triton", "numba", "torch"]

#: dtypes the Triton kernels read.
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Compute capability Triton needs (Volta and newer).
_MIN_CAPABILITY = (7, 0)

_warned: set[str] = set()


class BackendUnavailable(RuntimeError):
    """backend="triton" was asked for but the Triton kernel cannot run."""


@dataclass(frozen=True)
class KernelSpec:
    """Which compiled kernels an op has.

    Attributes:
        op: the op's name, for messages ("geosteer::part_cost").
        triton: a Triton kernel exists for CUDA tensors.
        numba: dtypes the numba CPU kernel reads (empty: no CPU kernel).
        triton_extra: dtypes the Triton kernel reads besides `TRITON_DTYPES`
            (part_cost: int8 region rows, with their scales).
    """

    op: str
    triton: bool = False
    numba: tuple[torch.dtype, ...] = ()
    triton_extra: tuple[torch.dtype, ...] = ()


def warn_once(message: str, stacklevel: int = 3) -> None:
    """Issue `message` as a `RuntimeWarning`, once per process."""
    if message in _warned:
        return
    _warned.add(message)
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def check_backend(backend: str) -> str:
    """Validate the `backend` string; return it.

    Raises:
        ValueError: not one of "auto", "triton", "torch".
    """
    return check_choice("backend", backend, BACKENDS)


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
    """Why a Triton kernel cannot run on CUDA `device` for `dtypes` (None when it can)."""
    problem = triton_import_problem()
    if problem is not None:
        return problem
    for dtype in dtypes:
        if dtype not in TRITON_DTYPES:
            return f"the Triton kernels read float16/bfloat16/float32, got {dtype}"
    return _device_problem(device)


def resolve(spec: KernelSpec, backend: str, device: torch.device, dtypes: tuple[torch.dtype, ...]) -> Impl:
    """The implementation `spec.op` runs for tensors on `device` with floating `dtypes`.

    Args:
        spec: the op's kernels.
        backend: "auto" | "triton" | "torch" (module docstring).
        device: where the op's tensors live.
        dtypes: the dtypes of the embeddings a kernel would read.

    Returns:
        "triton", "numba" or "torch" (the reference).

    Raises:
        ValueError: unknown `backend`.
        BackendUnavailable: backend="triton" where the Triton kernel cannot run.
    """
    check_backend(backend)
    if backend == "torch":
        return "torch"
    if device.type == "cuda":
        if not spec.triton:
            return "torch"
        problem = triton_problem(device, tuple(d for d in dtypes if d not in spec.triton_extra))
        if problem is None:
            return "triton"
        if backend == "triton":
            raise BackendUnavailable(f"{spec.op}: backend='triton' cannot run: {problem}; use backend='auto' or 'torch'")
        warn_once(f"{spec.op}: backend='auto' falls back to the torch reference on CUDA because {problem}")
        return "torch"
    if backend == "triton" and spec.triton:
        raise BackendUnavailable(
            f"{spec.op}: backend='triton' cannot run: the Triton kernels take CUDA tensors, these are on {device}; "
            "use backend='auto' (the numba CPU kernel where there is one) or 'torch'"
        )
    if device.type != "cpu" or not spec.numba or not all(d in spec.numba for d in dtypes):
        return "torch"
    problem = cpu_kernels.numba_problem()
    if problem is None:
        return "numba"
    warn_once(f"{spec.op}: the CPU runs the torch reference because {problem} (slower; pip install numba)")
    return "torch"


def same_device(op: str, first: torch.Tensor, **others: torch.Tensor) -> None:
    """Before a kernel launch: every tensor must live on `first`'s device.

    Raises:
        ValueError: naming the tensor on another device (a kernel would read
            a host pointer as device memory).
    """
    for name, tensor in others.items():
        if tensor.device != first.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but the embeddings are on {first.device}")


def check_ids_in_range(ids: torch.Tensor, size: int, name: str) -> None:
    """Before a kernel launch: ids must index `[0, size)`.

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
