"""The head and the on-disk index used from several threads at once give the serial results.

The per-tensor caches (geosteer/ops/tensor_cache.py: the bf16 screen copies,
the checks' flags) are module-level state shared by every thread. Each test
runs the same calls serially first, then from 4-8 threads started together,
and compares every output. Every wait is bounded: a hung thread fails the
test instead of hanging the run.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geosteer import GeoSteerHead, get_config
from geosteer.ops import screen as screen_mod
from geosteer.ops.tensor_cache import TensorCache

TIMEOUT_S = 120.0


def run_threads(target, args_list, timeout=TIMEOUT_S) -> list:
    """`[target(*args) for args in args_list]`, one thread each, started together; bounded waits."""
    results, errors = {}, []
    barrier = threading.Barrier(len(args_list))

    def run(i, args):
        try:
            barrier.wait(timeout)
            results[i] = target(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i, a), daemon=True) for i, a in enumerate(args_list)]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    assert not hung, f"{hung} of {len(threads)} threads still running after {timeout:.0f} s"
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(args_list))]


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).float()


def assert_same(a, b) -> None:
    for name in a._fields:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), name
        else:
            assert x == y, name


# ---------------------------------------------------------------- the cache


@pytest.mark.parametrize("verify, rounds", [(False, 20000), (True, 2000)], ids=["by-version", "by-content"])
def test_cache_from_many_threads(verify, rounds):
    # Before the lock, two threads evicting at once popped the same oldest
    # key: KeyError (or "dictionary changed size during iteration") out of
    # `put`, so out of the head's checks.
    cache = TensorCache(max_entries=1, verify=verify)
    tensors = [torch.full((2,), float(i)) for i in range(32)]

    def work(seed):
        for i in range(rounds):
            j = (seed * 7 + i) % len(tensors)
            cache.put(tensors[j], j)
            value = cache.get(tensors[j])
            assert value is None or value == j
        return True

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        assert run_threads(work, [(s,) for s in range(8)]) == [True] * 8
    finally:
        sys.setswitchinterval(interval)
    assert len(cache) == 1


def test_cache_entries_die_with_their_tensors_across_threads():
    cache = TensorCache(max_entries=64)

    def work(seed):
        for i in range(50):
            x = unit(8, 4, seed=seed * 100 + i)
            cache.put(x, i)
            assert cache.get(x) == i
        return True

    run_threads(work, [(s,) for s in range(6)])
    assert len(cache) == 0  # every tensor is gone, so is its entry


# ---------------------------------------------------------------- the head


def test_head_from_many_threads_equals_serial():
    # 3 galleries (one shared by several threads), bf16 screen and the
    # default parts preset: the screen copies and the checks' caches are
    # made, hit and evicted concurrently.
    galleries = [unit(3000, 48, seed=s) for s in range(3)]
    gallery_parts = [unit(3000, 4, 48, seed=10 + s) for s in range(3)]
    heads = [GeoSteerHead(k=10, lam=0.0, screen="bf16"), GeoSteerHead(get_config("default", k=10, screen="bf16"))]
    jobs = []
    for t in range(8):
        g = t % 3
        jobs.append((heads[t % 2], unit(5 + t, 48, seed=100 + t), unit(5 + t, 3, 48, seed=200 + t), g))
    screen_mod._GALLERIES.clear()

    def call(head, query, parts, g):
        kwargs = dict(query_parts=parts, gallery_parts=gallery_parts[g]) if head.config.lam > 0 else {}
        return [head(query, galleries[g], **kwargs) for _ in range(3)]

    serial = [call(*job) for job in jobs]
    screen_mod._GALLERIES.clear()
    threaded = run_threads(call, jobs)
    for want, got in zip(serial, threaded):
        for a, b in zip(want, got):
            assert_same(a, b)


def test_head_with_a_shared_gallery_changed_between_rounds():
    # A gallery written through numpy between two concurrent rounds: every
    # thread of the second round sees the new content (no stale copy).
    gallery = unit(3000, 48, seed=30)
    head = GeoSteerHead(k=10, lam=0.0, screen="bf16")
    queries = [unit(6, 48, seed=40 + t) for t in range(6)]
    run_threads(head, [(q, gallery) for q in queries])
    gallery.numpy()[77] = queries[2][0].numpy()
    got = run_threads(head, [(q, gallery) for q in queries])
    assert int(got[2].indices[0, 0]) == 77
    for q, r in zip(queries, got):
        assert_same(r, head(q, gallery))


# ---------------------------------------------------------------- the on-disk index

CAPTIONS = [
    ["a red square to the left of a blue circle"],
    ["a green star", "a yellow hexagon"],
    ["a purple triangle above a red circle"],
    ["a blue square"],
]


def make_images(folder: Path, count: int) -> Path:
    from geosteer.geoshapes import random_scene, render

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        render(random_scene(random.Random(i)), size=64).save(folder / f"scene_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def demo():
    from geosteer.encoders import load_clip

    return load_clip("demo")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"), 8)


@pytest.fixture(scope="module")
def built(images, demo, tmp_path_factory):
    from geosteer.index import Index

    return Index.build(images, tmp_path_factory.mktemp("idx") / "index", demo, shard_size=3, progress=False)


def assert_same_search(a, b) -> None:
    assert_same(a.head, b.head)
    assert a.reranked == b.reranked and a.cosine == b.cosine


def test_index_search_from_many_threads_equals_serial(built, demo):
    from geosteer.index import Index

    shared = Index.open(built.path, encoder=demo)
    serial = [shared.search(c, k=5) for c in CAPTIONS]
    # one opened index shared by every thread, and one opened per thread
    got_shared = run_threads(lambda c: shared.search(c, k=5), [(c,) for c in CAPTIONS * 2])
    got_own = run_threads(lambda c: Index.open(built.path, encoder=demo).search(c, k=5), [(c,) for c in CAPTIONS])
    for want, got in zip(serial * 2, got_shared):
        assert_same_search(want, got)
    for want, got in zip(serial, got_own):
        assert_same_search(want, got)


def test_index_builds_from_many_threads_equal_serial(images, demo, built, tmp_path):
    from geosteer.index import Index

    outs = run_threads(
        lambda i: Index.build(images, tmp_path / f"index{i}", demo, shard_size=3, progress=False), [(i,) for i in range(2)]
    )
    want = built.gallery
    for index in outs:
        assert index.paths == built.paths
        got = Index.open(index.path, encoder=demo).gallery
        for name in ("embeddings", "parts", "parts_mask", "part_boxes"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
