"""SciPy's own `linear_sum_assignment` tests, run on `geosteer.batch_linear_assignment`.

`batch_linear_assignment` claims each problem is SciPy's
`linear_sum_assignment(cost[b], maximize=maximize)`, error wording included.
This module holds SciPy to its word: it imports the test module shipped with
the installed SciPy (`scipy.optimize.tests.test_linear_assignment`) and
re-exports its `test_*` functions here, so pytest collects them with their
own marks (parametrize included); an autouse fixture swaps the module's
global `linear_sum_assignment` for `lsa_adapter`, a 2-D front end built on
`batch_linear_assignment`. The tests run unchanged, in this process.

Skipped, with the reason, when the installed SciPy has no tests (some
distributions strip them).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from geosteer import batch_linear_assignment

_SCIPY_TESTS = "scipy.optimize.tests.test_linear_assignment"

try:
    scipy_tests = importlib.import_module(_SCIPY_TESTS)
except ImportError as error:  # ModuleNotFoundError included: SciPy's tests are not installed
    pytest.skip(f"SciPy's own tests cannot be imported ({_SCIPY_TESTS}: {error})", allow_module_level=True)


def lsa_adapter(cost_matrix, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`scipy.optimize.linear_sum_assignment` on top of `batch_linear_assignment`.

    Only the array-like -> tensor step is done here: a NumPy array of a dtype
    torch has no tensor for (strings, objects) goes through the safe cast to
    float64 that SciPy applies to every input, which raises NumPy's own
    TypeError. Everything else (dtype, rank, values, feasibility) is left to
    `batch_linear_assignment` on a `[1, r, c]` tensor, whose `[1, r]` column
    per row (-1 = unmatched) becomes SciPy's (row_ind sorted, col_ind).
    """
    array = np.asarray(cost_matrix)
    if array.dtype.kind in "OSUV":
        array = array.astype(np.float64, casting="safe")
    cols = batch_linear_assignment(torch.from_numpy(array)[None], maximize=maximize)[0].numpy()
    rows = np.flatnonzero(cols >= 0)
    return rows, cols[rows]


# SciPy's test functions, collected here as if written here. Their globals
# stay SciPy's module, which is what `_swap_in_the_adapter` patches.
SCIPY_TEST_NAMES = sorted(name for name, obj in vars(scipy_tests).items() if name.startswith("test_") and callable(obj))
globals().update({name: getattr(scipy_tests, name) for name in SCIPY_TEST_NAMES})


@pytest.fixture(autouse=True)
def _swap_in_the_adapter(monkeypatch):
    monkeypatch.setattr(scipy_tests, "linear_sum_assignment", lsa_adapter)


def test_the_scipy_suite_was_found_and_swapped():
    assert len(SCIPY_TEST_NAMES) >= 10, SCIPY_TEST_NAMES  # 11 in SciPy 1.17
    for name in SCIPY_TEST_NAMES:
        assert globals()[name].__globals__ is vars(scipy_tests)
    assert scipy_tests.linear_sum_assignment is lsa_adapter


def test_adapter_matches_scipy_on_rectangular_and_maximised_problems():
    """The adapter's own conversion (tall problems: every column matched, rows sorted)."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for shape in [(3, 5), (5, 3), (4, 4), (1, 6), (6, 1)]:
        cost = rng.random(shape)
        for maximize in (False, True):
            want = linear_sum_assignment(cost, maximize=maximize)
            got = lsa_adapter(cost, maximize=maximize)
            for w, g in zip(want, got):
                np.testing.assert_array_equal(g, w)
                assert g.dtype == np.int64
