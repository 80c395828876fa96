"""Test set-up: Triton runs in its interpreter on CPU tensors.

TRITON_INTERPRET must be set before triton is first imported, so it is set
here, at the top of the first module pytest loads.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded generator; each test gets the same stream."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def without_numba(monkeypatch):
    """Run as if numba were not installed: every op takes its torch reference on the CPU."""
    from geosteer import cpu_kernels
    from geosteer.ops import dispatch

    monkeypatch.setattr(cpu_kernels, "numba_problem", lambda: "numba is not installed")
    monkeypatch.setattr(dispatch, "_warned", set())
