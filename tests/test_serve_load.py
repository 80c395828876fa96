"""`geosteer serve` under concurrent clients on 127.0.0.1: bounded in clients, time and count.

The service (the app `geosteer serve` builds, run by uvicorn with the
command's limits, `serve.server_options`) over a 12-image GeoShapes index
with eager heads, in a thread of this process; the clients are the load
bench's (`bench/bench_serve_load.py`, `run_load`: one keep-alive
connection each, a search then its hits' thumbnails, as the page does):

- 8 clients x 3 s within the queue: every request answered 200, no 5xx,
  no connection error, every search body whole;
- 8 clients x 3 s against a queue of 2 with searches slowed to 0.1 s:
  the overflow gets 503 with Retry-After (never a 500, never a hang),
  the rest 200.

The full load test (16 clients x 10 s, with p50 / p99 and the load
average) is `python -m bench.bench_serve_load`.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")
pytest.importorskip("uvicorn", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")

from geosteer.commands import serve  # noqa: E402
from test_serve import build_geoshapes_index, live_server  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLIENTS, SECONDS = 8, 3.0


def load_bench():
    """bench/bench_serve_load.py as a module (bench/ is a folder of this checkout, not an installed package)."""
    spec = importlib.util.spec_from_file_location("bench_serve_load", REPO / "bench" / "bench_serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def encoder():
    from geosteer.encoders import load_clip

    return load_clip("demo")


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    return build_geoshapes_index(tmp_path_factory.mktemp("load"), encoder, num_queries=4)


def test_concurrent_clients_within_the_queue_all_get_answers(built, encoder, bench):
    index, queries = built
    app = serve.create_app(index, encoder, k_max=10)
    bodies: list[int] = []

    def check(kind: str, status: int, headers: dict, body: bytes) -> None:
        if kind == "search" and status == 200:
            bodies.append(len(json.loads(body)["queries"][0]["reranked"]))

    t0 = time.monotonic()
    with live_server(app) as (host, port):
        out = bench.run_load(host, port, CLIENTS, SECONDS, queries, k=5, on_response=check)
    assert time.monotonic() - t0 < SECONDS + 30
    assert out["5xx"] == 0 and out["errors"] == {} and out["stuck_clients"] == 0, out
    assert out["status"]["search"] == {"200": out["search"]["count"]}, out["status"]
    assert out["status"]["image"] == {"200": out["image"]["count"]}, out["status"]
    assert out["search"]["count"] >= CLIENTS and out["image"]["count"] >= CLIENTS
    assert bodies and set(bodies) == {5}


def test_overload_is_503_with_retry_after_not_500(built, encoder, bench, monkeypatch):
    index, queries = built
    app = serve.create_app(index, encoder, k_max=10, warm_up=False, queue_size=2)
    searcher = app.state.service.searcher
    real = searcher.search

    def slow(*a, **kw):  # searches slower than the clients ask: the queue fills
        time.sleep(0.1)
        return real(*a, **kw)

    monkeypatch.setattr(searcher, "search", slow)
    details: list[str] = []

    def check(kind: str, status: int, headers: dict, body: bytes) -> None:
        if status == 503:
            details.append(json.loads(body)["detail"])

    with live_server(app) as (host, port):
        out = bench.run_load(host, port, CLIENTS, SECONDS, queries, k=3, thumbnails=False, on_response=check)
    statuses = out["status"]["search"]
    assert set(statuses) == {"200", "503"}, statuses  # answered or told to come back: no 500, no other
    assert out["errors"] == {} and out["stuck_clients"] == 0, out
    assert out["retry_after"] == {str(serve.RETRY_AFTER_S): statuses["503"]}
    assert all("retry" in d for d in details) and len(details) == statuses["503"]
    assert out["search"]["max_ms"] < 30_000  # a bounded queue: nobody waited without end
    assert app.state.service.pending == 0
