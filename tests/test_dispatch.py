"""The one dispatch rule (geosteer.ops.dispatch): which implementation each op runs, per backend and device."""

from __future__ import annotations

import builtins
import importlib
import pkgutil
import sys
import warnings

import pytest
import torch

import geosteer.ops
from geosteer import cpu_kernels
from geosteer.ops import dispatch
from geosteer.ops.dispatch import BackendUnavailable, KernelSpec, resolve

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BOTH = KernelSpec("geosteer::both", triton=True, numba=(torch.float32,))
TRITON_ONLY = KernelSpec("geosteer::triton_only", triton=True)
NONE = KernelSpec("geosteer::plain")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())


@pytest.fixture
def triton_runs(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_problem", lambda device, dtypes: None)


# (spec, backend, device, dtype) -> implementation, the module docstring's table
RULE = [
    (BOTH, "auto", CUDA, torch.float16, "triton"),
    (BOTH, "triton", CUDA, torch.float16, "triton"),
    (BOTH, "torch", CUDA, torch.float16, "torch"),
    (BOTH, "auto", CPU, torch.float32, "numba"),
    (BOTH, "torch", CPU, torch.float32, "torch"),
    (BOTH, "auto", CPU, torch.float64, "torch"),  # a dtype the numba kernel does not read
    (TRITON_ONLY, "auto", CPU, torch.float32, "torch"),
    (NONE, "auto", CUDA, torch.float16, "torch"),
    (NONE, "triton", CUDA, torch.float16, "torch"),  # no kernel anywhere: the same code for every backend
    (NONE, "triton", CPU, torch.float32, "torch"),
]


@pytest.mark.parametrize("spec, backend, device, dtype, expected", RULE)
def test_the_rule(spec, backend, device, dtype, expected, triton_runs):
    if expected == "numba" and cpu_kernels.numba_problem() is not None:
        pytest.skip("numba is not installed")
    assert resolve(spec, backend, device, (dtype,)) == expected


def test_triton_on_cpu_tensors_is_refused_for_an_op_with_a_triton_kernel():
    with pytest.raises(BackendUnavailable, match="CUDA tensors"):
        resolve(BOTH, "triton", CPU, (torch.float32,))


def test_auto_falls_back_on_cuda_with_one_warning(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_problem", lambda device, dtypes: "triton is not installed")
    with pytest.warns(RuntimeWarning, match="triton is not installed"):
        assert resolve(BOTH, "auto", CUDA, (torch.float16,)) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        assert resolve(BOTH, "auto", CUDA, (torch.float16,)) == "torch"
        assert resolve(BOTH, "torch", CUDA, (torch.float16,)) == "torch"
    with pytest.raises(BackendUnavailable, match="triton is not installed"):
        resolve(BOTH, "triton", CUDA, (torch.float16,))


def test_auto_without_numba_takes_the_reference_with_one_warning(without_numba):
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        assert resolve(BOTH, "auto", CPU, (torch.float32,)) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve(BOTH, "auto", CPU, (torch.float32,)) == "torch"
    assert cpu_kernels.load("part_cost") is None


def test_float64_is_a_reason_to_fall_back_on_cuda(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_import_problem", lambda: None)
    problem = dispatch.triton_problem(CUDA, (torch.float32, torch.float64))
    assert problem is not None and "float64" in problem


def test_missing_triton_is_reported_and_a_broken_one_raises(monkeypatch):
    real_import = builtins.__import__
    dispatch.triton_import_problem.cache_clear()
    try:
        monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError(name="triton")
        assert "not installed" in dispatch.triton_import_problem()
        dispatch.triton_import_problem.cache_clear()
        monkeypatch.undo()

        def broken(name, *args, **kwargs):
            if name == "triton":
                raise ImportError("libfoo.so: cannot open shared object file", name="triton._C.libtriton")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", broken)
        with pytest.raises(ImportError, match="libfoo"):
            dispatch.triton_import_problem()
    finally:
        monkeypatch.undo()
        dispatch.triton_import_problem.cache_clear()


def test_unknown_backend_names_are_refused():
    with pytest.raises(ValueError, match="backend"):
        resolve(BOTH, "Triton", CPU, (torch.float32,))


def _op_modules():
    skip = {"dispatch", "checks", "screen", "tensor_cache"}  # the rule, value checks, first_stage's helpers
    return [m.name for m in pkgutil.iter_modules(geosteer.ops.__path__) if m.name not in skip]


@pytest.mark.parametrize("name", _op_modules())
def test_every_op_declares_its_kernels_where_they_live(name):
    """One op, one name: `ops/<op>.py` has a SPEC; its kernels sit in `kernels/<op>.py` / `cpu_kernels/<op>.py`."""
    module = importlib.import_module(f"geosteer.ops.{name}")
    spec = module.SPEC
    assert spec.op == f"geosteer::{name}"
    assert hasattr(torch.ops.geosteer, name)
    kernel_names = {m.name for m in pkgutil.iter_modules(importlib.import_module("geosteer.kernels").__path__)}
    cpu_names = {m.name for m in pkgutil.iter_modules(cpu_kernels.__path__)}
    assert spec.triton == (name in kernel_names)
    assert bool(spec.numba) == (name in cpu_names)
