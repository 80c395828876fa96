"""Skip markers shared by the kernel and op tests."""

import importlib.util
import os

import pytest
import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
# Kernel tests on CPU tensors need Triton's interpreter (tests/conftest.py
# turns it on; `TRITON_INTERPRET=0 pytest` runs only the compiled CUDA tests).
needs_interpreter = pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton with TRITON_INTERPRET=1"
)
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
HAS_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
