"""bench_phrasings' comparison of region dtypes (issue 23): the paired differences to float32, from made-up seeds.

The benchmark itself (the collages indexed and searched once per dtype) is
`python -m bench.bench_phrasings --regions-dtypes float32,float16,int8`;
these check the arithmetic it reports with, and its argument checks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    """bench/bench_phrasings.py as a module (bench/ is a folder of this checkout, not an installed package)."""
    spec = importlib.util.spec_from_file_location("bench_phrasings", REPO / "bench" / "bench_phrasings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_record(bench, seed: int, target: list[int], twin: list[int]) -> dict:
    """One seed's search record, the same ranks in every phrasing and for every method."""
    q = len(target)
    metrics = {"r1": sum(t == 0 for t in target) / q, "twin": sum(t < w for t, w in zip(target, twin)) / q,
               "ranks": {"target": target, "twin": twin}}
    return {"seed": seed, "phrasings": {n: {m: metrics for m in ("rerank", "cosine")} for n in bench.PHRASINGS}}


def test_paired_differences(bench):
    # seed 1: one query lost at 1 and one gained (R@1 equal, 2 changed); seed 2: one lost (-50 points of 2 queries)
    ref = [seed_record(bench, 1, [0, 1], [1, 0]), seed_record(bench, 2, [0, 0], [1, 1])]
    other = [seed_record(bench, 1, [1, 0], [0, 1]), seed_record(bench, 2, [0, 2], [1, 1])]
    paired = bench.paired_differences(ref, other, ["rerank", "cosine"])
    r1 = paired[bench.PHRASINGS[0]]["rerank"]["r1"]
    assert r1 == {"mean_diff": -25.0, "max_abs_seed_diff": 50.0, "changed_queries": 3}
    twin = paired[bench.PHRASINGS[0]]["rerank"]["twin"]  # seed 1: both flip (same share); seed 2: 2 > 1 now
    assert twin == {"mean_diff": -25.0, "max_abs_seed_diff": 50.0, "changed_queries": 3}
    mean = paired["mean_over_phrasings"]["cosine"]["r1"]
    assert mean == {"mean_diff": -25.0, "max_abs_seed_diff": 50.0, "changed_queries": 3 * len(bench.PHRASINGS)}
    worst = bench.worst_paired({"int8": {"paired": paired}})["int8"]
    assert worst["max_abs_seed_diff"] == 50.0 and worst["changed_queries"] == 2 * 2 * 3 * len(bench.PHRASINGS)
    assert len(worst["changed_in"]) == 2 * 2 * len(bench.PHRASINGS)


def test_paired_differences_equal_and_mismatched_seeds(bench):
    ref = [seed_record(bench, 1, [0, 3], [1, 0])]
    paired = bench.paired_differences(ref, ref, ["rerank"])
    assert all(v == {"mean_diff": 0.0, "max_abs_seed_diff": 0.0, "changed_queries": 0}
               for n in bench.PHRASINGS for v in paired[n]["rerank"].values())
    with pytest.raises(ValueError, match="paired seeds differ"):
        bench.paired_differences(ref, [seed_record(bench, 2, [0, 3], [1, 0])], ["rerank"])


@pytest.mark.parametrize("dtypes", ["int8,float32", "float32,float32", "float32,bfloat16"])
def test_regions_dtypes_checked_before_any_work(bench, dtypes, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--regions-dtypes", dtypes, "--out", "/nonexistent/x.json"])
    assert exc.value.code == 2 and "--regions-dtypes" in capsys.readouterr().err
