"""`geosteer serve`: the FastAPI application over a small GeoShapes index, through TestClient.

One index of 24 GeoShapes scenes (grid regions, the demo model) and one
application (its heads compiled, as on CUDA) serve most tests: /health,
/search against `Index.search` for the same query and against a ranking
recomputed with numpy and scipy's Hungarian solver, the one JSON form
`geosteer search --json` prints too, every kind of bad request (a 4xx with a
message, never a 500), the image endpoint (404s, no path traversal), the
page and its static files (nothing loaded from elsewhere), the heads built
once, eager heads by default on a CPU, and `run_serve` up to the point where
uvicorn would start (with the limits it starts uvicorn with).

Hostile clients and files: test_serve_hostile.py; the schema fuzz:
test_serve_fuzz.py; concurrent clients on a live server: test_serve_load.py
(they use `build_geoshapes_index` and `live_server` from here).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx (the serve extra)")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from geosteer import GeoSteerHead, HeadConfig, get_config  # noqa: E402
from geosteer.commands import serve  # noqa: E402

NUM_QUERIES = 8  # binding split: 3 scenes a query -> 24 images
K_MAX = 20  # below the index size, so "k too large" is the service's cap, not the index's


def build_geoshapes_index(folder: Path, encoder, num_queries: int = NUM_QUERIES, regions: str = "grid"):
    """Render a GeoShapes binding split into `folder/images` and index it into `folder/index`.

    Returns:
        (the opened `Index`, the split's query captions).
    """
    from geosteer.geoshapes import make_split
    from geosteer.index import Index

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    split = make_split("binding", 100, num_queries=num_queries, image_size=96)
    for i, im in enumerate(split.images()):
        im.save(images / f"scene{i:03d}.png")
    index = Index.build(images, folder / "index", encoder, regions=regions, progress=False)
    return index, split.queries


@contextlib.contextmanager
def live_server(app, read_timeout_s: float | None = None, start_s: float = 30.0) -> Iterator[tuple[str, int]]:
    """`app` served by uvicorn with `geosteer serve`'s limits (`serve.server_options`) on 127.0.0.1 in a thread.

    Yields (host, port); the server is stopped (bounded wait) on exit.
    """
    import uvicorn

    if read_timeout_s is None:
        read_timeout_s = serve.READ_TIMEOUT_S

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, **serve.server_options("127.0.0.1", port, "warning", read_timeout_s))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"uvicorn did not start within {start_s} s")
            time.sleep(0.02)
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def encoder():
    from geosteer.encoders import load_clip

    return load_clip("demo")


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    return build_geoshapes_index(tmp_path_factory.mktemp("serve"), encoder)


@pytest.fixture(scope="module")
def index(built):
    return built[0]


@pytest.fixture(scope="module")
def queries(built):
    return built[1]


@pytest.fixture(scope="module")
def app(index, encoder):
    return serve.create_app(index, encoder, k_max=K_MAX, compile=True)  # what CUDA gets by default


@pytest.fixture(scope="module")
def client(app):
    # the service answers loopback Host names only (TestClient's default "testserver" gets 421)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


def test_health(client, index):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["images"] == len(index) == 24
    assert body["encoder"] == "demo" and body["regions"] == "grid"
    assert body["method"] == "rerank" and body["k_max"] == K_MAX
    assert body["methods"] == list(serve.METHODS)
    assert body["compiled"] is True  # the module's app: compiled heads, asked for


@pytest.mark.parametrize("method", list(serve.METHODS))
def test_search_equals_index_search(client, index, encoder, queries, method):
    """The service's answer is `Index.search` with the method's preset, row by row."""
    q, k = queries[2], 5
    r = client.post("/search", json={"query": q, "k": k, "method": method})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["method"], body["k"], len(body["queries"])) == (method, k, 1)
    result = body["queries"][0]
    assert result["query"] == q
    preset = get_config(serve.METHODS[method])
    want = index.search([q], get_config(serve.METHODS[method], k=min(len(index), max(preset.k, K_MAX))),
                        encoder=encoder, k=k)
    assert result["parts"] == want.parts[0] == ["a red star", "a cyan hexagon"]
    for key, ranking in (("cosine", want.cosine[0]), ("reranked", want.reranked[0])):
        rows = result[key]
        assert [h["rank"] for h in rows] == list(range(1, k + 1))
        assert [h["id"] for h in rows] == ranking.ids
        assert [h["path"] for h in rows] == ranking.paths
        assert [h["score"] for h in rows] == pytest.approx(ranking.scores, abs=1e-6)
        assert [h["first_stage"] for h in rows] == pytest.approx(ranking.first_stage, abs=1e-6)
        assert [h["rank_before"] for h in rows] == ranking.ranks_before
        for h, boxes in zip(rows, ranking.boxes):
            assert (h["width"], h["height"]) == (96, 96)
            assert [(m["part"], m["box"]) for m in h["matches"]] == [
                (p, list(b)) for p, b in enumerate(boxes) if b is not None]
            for m in h["matches"]:
                assert m["text"] == result["parts"][m["part"]]
                assert m["box_frac"] == pytest.approx([v / 96 for v in m["box"]])
    reranked = result["reranked"]
    if method == "cosine":  # nothing re-ranks, nothing is matched
        assert [h["id"] for h in reranked] == [h["id"] for h in result["cosine"]]
        assert all(h["matches"] == [] for h in reranked)
    else:  # every result shows one box per query part, and the alignment it scored
        assert all(len(h["matches"]) == 2 for h in reranked)
        assert all(0.0 <= h["alignment"] <= 1.0 for h in reranked)
    assert body["server_ms"] > 0


def test_search_defaults(client):
    """Only the query is required: k = 10, the service's default method."""
    r = client.post("/search", json={"query": "a green circle"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 10 and body["method"] == "rerank"
    result = body["queries"][0]
    assert len(result["cosine"]) == len(result["reranked"]) == 10
    assert result["parts"] == ["a green circle"]


def test_search_where_filters_the_images(client, queries):
    """`where` searches a subset: every hit matches it, and the cosine list is the unfiltered one restricted to it."""
    import fnmatch

    q = queries[1]
    full = client.post("/search", json={"query": q, "k": K_MAX, "method": "cosine"}).json()["queries"][0]["cosine"]
    allowed = [h["id"] for h in full if fnmatch.fnmatch(h["path"], "scene00*")]
    assert len(allowed) >= 5  # 10 of the 24 images match; the top 20 misses at most 4
    r = client.post("/search", json={"query": q, "k": 5, "method": "cosine", "where": "path:scene00*"})
    assert r.status_code == 200, r.text
    got = r.json()["queries"][0]
    assert [h["id"] for h in got["cosine"]] == allowed[:5]
    r = client.post("/search", json={"query": q, "k": 5, "where": ["path:scene00*", "id:0-3"]})
    assert r.status_code == 200, r.text
    hits = r.json()["queries"][0]["reranked"]
    assert 1 <= len(hits) <= 4 and all(h["id"] <= 3 and h["path"].startswith("scene00") for h in hits)


@pytest.mark.parametrize("where, status, words", [
    ("path:nothing-matches-*", 400, "where"),
    ("colour:red", 400, "where"),
    (["id:1"] * 17, 422, "at most 16"),
    ("id:" + "1," * 200, 422, "at most 300"),
    (5, 422, ""),
    (["path:scene*", "path:\ud800"], 422, "where must be Unicode text"),
])
def test_search_where_refused(client, where, status, words):
    # json.dumps escapes a lone surrogate as \ud800, as a raw client would send it (httpx's json= cannot)
    r = client.post("/search", content=json.dumps({"query": "a red star", "where": where}),
                    headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.text


@pytest.mark.parametrize("query", ["!!!", "at night", "pentagons everywhere maybe", "  a   red   star  "])
def test_query_the_splitter_cannot_split_still_works(client, query):
    """No object phrase found (or odd spacing): the caption is matched as one part."""
    r = client.post("/search", json={"query": query, "k": 3})
    assert r.status_code == 200, r.text
    result = r.json()["queries"][0]
    assert len(result["parts"]) == 1 and len(result["reranked"]) == 3
    assert result["query"] == " ".join(query.split())


def test_longest_query_accepted(client):
    r = client.post("/search", json={"query": ("a red star and " * 40)[: serve.MAX_QUERY_CHARS], "k": 1})
    assert r.status_code == 200, r.text


BAD_BODIES = [
    ({"query": ""}, "query"),
    ({"query": "   "}, "query"),
    ({"query": "x" * (serve.MAX_QUERY_CHARS + 1)}, "query"),
    ({"query": "a red star", "k": 0}, "k"),
    ({"query": "a red star", "k": -3}, "k"),
    ({"query": "a red star", "k": K_MAX + 1}, "k"),
    ({"query": "a red star", "k": "5"}, "k"),
    ({"query": "a red star", "k": 2.5}, "k"),
    ({"query": "a red star", "k": True}, "k"),
    ({"query": "a red star", "k": None}, "k"),
    ({"query": 5}, "query"),
    ({"query": ["a red star"]}, "query"),
    ({"k": 3}, "query"),
    ({}, "query"),
    ({"query": "a red star", "method": "bm25"}, "method"),
    ({"query": "a red star", "lam": 0.9}, "lam"),
]


@pytest.mark.parametrize("body, field", BAD_BODIES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_BODIES)])
def test_bad_request_is_422_with_a_message(client, body, field):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    msg = r.json()["message"]
    assert msg.startswith(f"{field}:"), msg
    assert r.json()["detail"], "FastAPI's structured errors stay in detail"


@pytest.mark.parametrize("content, ctype", [
    (b"not json", "application/json"),
    (b'["a red star"]', "application/json"),
    (b'"a red star"', "application/json"),
    (b"query=a+red+star", "application/x-www-form-urlencoded"),
    (b"", "application/json"),
])
def test_body_that_is_not_a_json_object_is_422(client, content, ctype):
    r = client.post("/search", content=content, headers={"content-type": ctype})
    assert r.status_code == 422, r.text
    assert r.json()["message"]


def test_wrong_http_method_is_405(client):
    assert client.get("/search").status_code == 405
    assert client.post("/health").status_code == 405


def test_library_error_is_400_not_500(client, app, monkeypatch):
    """A ValueError from the library (it names the argument) reaches the client as a 400."""
    service = app.state.service

    def refuse(*a, **kw):
        raise ValueError("queries must be non-empty captions, got ''")

    monkeypatch.setattr(service.searcher, "search", refuse)
    r = client.post("/search", json={"query": "a red star"})
    assert r.status_code == 400
    assert "queries must be non-empty captions" in r.json()["detail"]


def test_image(client, index):
    r = client.get("/image/3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    want = Image.open(Path(index.root) / index.paths[3]).convert("RGB")  # a PNG: no EXIF turn
    assert im.size == want.size == (96, 96)  # a thumbnail never upscales
    assert list(im.convert("RGB").getdata()) == list(want.getdata())
    # sizes snap up to 128 / 256 / 512 (never upscaled): 96 x 96 from every size up to 512
    for size in (16, 32, 100, 128, 129, 600, 1024):
        r = client.get("/image/3", params={"size": size})
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (96, 96)


@pytest.mark.parametrize("path", [
    "/image/24", "/image/1000000", "/image/-1", "/image/abc", "/image/1.0", "/image/0x1", "/image/%20",
    "/image/99999999999999999999999999",
    "/image/..%2F..%2F..%2Fetc%2Fpasswd", "/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/image/..%5C..%5Cwindows",
    "/image/scene000.png", "/image/images%2Fscene000.png", "/image/%2Fetc%2Fpasswd",
    "/static/..%2Fserve.py", "/static/%2e%2e%2f__init__.py", "/static/index.html", "/static/missing.js",
])
def test_image_and_static_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert "root:" not in r.text and "detail" in r.json()


@pytest.mark.parametrize("size", [0, 15, 1025, "big"])
def test_image_bad_size_is_422(client, size):
    assert client.get("/image/0", params={"size": size}).status_code == 422


def test_image_whose_file_is_gone_is_404(client, app, index):
    f = Path(index.root) / index.paths[5]
    moved = f.with_name(f.name + ".away")
    f.rename(moved)
    try:
        r = client.get("/image/5", params={"size": 512})  # a size not cached yet
        assert r.status_code == 404 and "missing" in r.json()["detail"]
        assert str(f) not in r.text  # the server's paths stay private
        # a search over every image (past the request cap, so through the service) still answers; the
        # sizes come from the manifest, so the missing file's boxes still have their place
        service = app.state.service
        body = service.search("a red star and a cyan hexagon", "rerank", K_MAX)
        rows = body["queries"][0]["reranked"]
        assert all(h["width"] == h["height"] == 96 for h in rows)
        assert all(m["box_frac"] is not None for h in rows for m in h["matches"])
    finally:
        moved.rename(f)


def test_no_swagger_page(client):
    """FastAPI's /docs loads Swagger from a CDN: off, so nothing the service serves needs the network."""
    assert client.get("/docs").status_code == 404
    assert client.get("/openapi.json").status_code == 200


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for needle in ('id="q"', 'id="search-form"', 'id="before"', 'id="after"', 'src="/static/app.js"',
                   'href="/static/style.css"'):
        assert needle in html
    assert "default-src 'self'" in r.headers["content-security-policy"]
    js = client.get("/static/app.js")
    css = client.get("/static/style.css")
    assert js.status_code == css.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert css.headers["content-type"].startswith("text/css")
    assert 'fetch("/search"' in js.text and ".box" in css.text
    # works offline: no absolute URL anywhere (CDN, fonts, analytics)
    for text in (html, js.text, css.text):
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), re.findall(r"\S*//\S+", text)


def test_web_files_are_package_data():
    for name in serve.WEB_FILES:
        assert serve.web_file(name)
    with pytest.raises(ValueError, match="name must be one of"):
        serve.web_file("../serve.py")


def test_heads_are_built_once(client, app, monkeypatch):
    """Requests reuse the heads made at start-up: none is constructed per request."""
    service = app.state.service
    before = dict(service.searcher.heads)
    made = []
    init = GeoSteerHead.__init__

    def counting(self, *a, **kw):
        made.append(1)
        init(self, *a, **kw)

    monkeypatch.setattr(GeoSteerHead, "__init__", counting)
    for method in serve.METHODS:
        assert client.post("/search", json={"query": "a red star and a cyan hexagon", "method": method}).status_code == 200
    assert made == []
    assert all(service.searcher.heads[m] is before[m] for m in serve.METHODS)
    assert service.searcher.heads["rerank"].config == get_config("default", k=24)
    assert service.searcher.heads["cosine"].config.lam == 0


def test_concurrent_requests(client, queries):
    out: list[int] = []

    def one(q: str) -> None:
        out.append(client.post("/search", json={"query": q, "k": 4}).status_code)

    threads = [threading.Thread(target=one, args=(q,)) for q in queries[:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == [200] * 4


def test_create_app_checks_its_arguments(index, encoder):
    with pytest.raises(ValueError, match="method must be one of"):
        serve.create_app(index, encoder, method="bm25", warm_up=False)
    with pytest.raises(ValueError, match="k_max must be a positive int"):
        serve.create_app(index, encoder, k_max=0, warm_up=False)
    with pytest.raises(TypeError, match="config must be a HeadConfig"):
        serve.create_app(index, encoder, {"lam": 0.5}, warm_up=False)


def test_config_overrides_keep_each_preset(index, encoder):
    """A config's non-default fields apply to every method; each keeps its own λ, γ."""
    app = serve.create_app(index, encoder, HeadConfig(backend="torch"), k_max=100, warm_up=False)
    heads = app.state.service.searcher.heads
    assert all(h.config.backend == "torch" for h in heads.values())
    assert heads["rerank"].config.lam == get_config("default").lam
    assert heads["relations"].config.gamma == get_config("relations").gamma
    assert all(h.config.k == len(index) for h in heads.values())  # K capped at the index
    assert app.state.service.searcher.k_max == len(index)
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/search", json={"query": "a red star", "k": 24}).status_code == 200
        assert c.post("/search", json={"query": "a red star", "k": 25}).status_code == 422


def test_serve_arguments():
    p = argparse.ArgumentParser()
    serve.add_serve_arguments(p)
    args = p.parse_args(["some/index"])
    assert (args.index, args.host, args.port, args.method, args.k_max, args.model, args.compile) == (
        "some/index", "127.0.0.1", 8000, "rerank", 100, None, None)
    assert (args.allow_host, args.queue) == ([], serve.QUEUE_SIZE)
    assert p.parse_args(["x", "--allow-host", "geo.lan", "--allow-host", "10.0.0.2"]).allow_host == ["geo.lan", "10.0.0.2"]
    assert p.parse_args(["x", "--compile"]).compile is True and p.parse_args(["x", "--no-compile"]).compile is False
    for bad in (["x", "--method", "bm25"], ["x", "--method", "rerank+steer"], ["x", "--compile", "--no-compile"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


@pytest.mark.parametrize("flags, compiled", [([], False), (["--no-compile"], False), (["--compile"], True)])
def test_run_serve_starts_uvicorn_on_loopback(index, monkeypatch, capsys, flags, compiled):
    """run_serve opens the index, loads the model its manifest names, builds the app, hands it to uvicorn.

    On a CPU the heads stay eager unless --compile asks (compiling costs a minute and gains nothing there).
    """
    import uvicorn

    seen = {}

    def fake_run(app, host, port, log_level, **options):
        seen.update(app=app, host=host, port=port, options=options)
        with TestClient(app, base_url="http://127.0.0.1:8123") as c:
            seen["health"] = c.get("/health").json()

    real = serve.create_app
    made = []

    def create_app(*a, **kw):  # a compiled app without its warm-up: torch compiles on the first call only
        made.append(kw["compile"])
        return real(*a, **{**kw, "warm_up": kw["warm_up"] if "warm_up" in kw else not compiled})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(serve, "create_app", create_app)
    p = argparse.ArgumentParser()
    serve.add_serve_arguments(p)
    assert serve.run_serve(p.parse_args([str(index.path), "--port", "8123", "--k-max", "7", *flags])) == 0
    assert made == [{"--compile": True, "--no-compile": False}.get(flags[0]) if flags else None]
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert seen["health"]["k_max"] == 7 and seen["health"]["images"] == 24 and seen["health"]["compiled"] is compiled
    # the limits uvicorn runs with: a read deadline (the guarded protocol), keep-alive, connections, header bytes
    opts = seen["options"]
    assert opts["http"] is serve.guarded_protocol() and opts["timeout_keep_alive"] == serve.KEEP_ALIVE_S
    assert opts["limit_concurrency"] == serve.MAX_CONNECTIONS
    assert opts["h11_max_incomplete_event_size"] == serve.MAX_HEADER_BYTES
    assert seen["app"].state.hosts == {"localhost", "127.0.0.1", "::1"}
    err = capsys.readouterr().err
    assert "24 images, model demo" in err and "http://127.0.0.1:8123/" in err and "warning" not in err
    assert f"heads {'compiled' if compiled else 'eager'} on cpu" in err


def test_a_cpu_service_is_eager_by_default(index, encoder):
    service = serve.create_app(index, encoder, warm_up=False).state.service
    assert service.searcher.compiled is False and service.searcher.device.type == "cpu"
    assert all(not hasattr(h, "_compiled_call_impl") or h._compiled_call_impl is None for h in service.searcher.heads.values())


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "INDEX '{missing}' does not exist"),
    (["{not_index}"], "is not an index (it has no manifest.json)"),
    (["{index}", "--port", "70000"], "--port must be in 0..65535, got 70000"),
    (["{index}", "--k-max", "0"], "--k-max must be >= 1, got 0"),
    (["{index}", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["{index}", "--device", "gpu9"], "--device 'gpu9' is not a torch device"),
    (["{index}", "--port", "{taken}"], "cannot listen there"),
    (["{index}", "--host", "203.0.113.7"], "--host '203.0.113.7' --port 8000: cannot listen there"),
    (["{index}", "--model", "no-such-model"], "--model 'no-such-model'"),
    (["{index}", "--queue", "0"], "--queue must be >= 1, got 0"),
    (["{index}", "--allow-host", "http://geo.lan/"], "--allow-host: 'http://geo.lan/' is not a host name"),
])
def test_run_serve_bad_argument_is_one_line_and_status_2(tmp_path, index, capsys, argv, message):
    """Checked before the model loads where it can be: one line naming the argument, exit status 2."""
    import socket

    (tmp_path / "not_index").mkdir()
    (tmp_path / "not_index" / "x.txt").write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        names = dict(missing=str(tmp_path / "nope"), not_index=str(tmp_path / "not_index"), index=str(index.path),
                     taken=str(taken.getsockname()[1]))
        p = argparse.ArgumentParser()
        serve.add_serve_arguments(p)
        assert serve.run_serve(p.parse_args([a.format(**names) for a in argv])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geosteer serve: error: "), err
    assert message.format(**names) in err[0]


def test_warm_up_compiles_every_shape_a_request_brings(client):
    """After the warm-up, queries with more parts and relations than it used reuse its graphs: no compile."""
    try:  # dynamo's compiled graphs of a code object: a debug API, absent in some torch versions
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list as graphs
    except ImportError:
        pytest.skip("this torch has no torch._dynamo.eval_frame._debug_get_cache_entry_list")
    from geosteer import GeoSteerHead

    before = len(graphs(GeoSteerHead.forward.__code__))
    assert before >= 3  # the warm-up's shape families: 1 part / 0 relations, 2 / 1, 3 / 2
    for query in ("a star above a circle to the left of a square below a hexagon", "a hexagon", "a red star"):
        for method in serve.METHODS:
            assert client.post("/search", json={"query": query, "k": 3, "method": method}).status_code == 200
    assert len(graphs(GeoSteerHead.forward.__code__)) == before, "a request compiled a new graph"


@pytest.mark.parametrize("method", ["rerank", "relations"])
def test_reranked_list_equals_a_ranking_recomputed_with_scipy(client, index, encoder, method):
    """The service's lists against an independent computation over the index's tensors.

    Cosine: numpy's G·q. Re-ranked: for every image, the Hungarian matching of the query's parts to its
    regions (scipy's `linear_sum_assignment` on the part-region similarities), A = the mean matched
    similarity, S = (1 - λ)·s + λ·A + γ·R with the preset's λ, γ (R = 0: the query has no relation).
    The gallery (24 images) is below K, so every image is a candidate.
    """
    np = pytest.importorskip("numpy")
    from scipy.optimize import linear_sum_assignment

    from geosteer.index import Indexer

    query, k = "a red star and a cyan hexagon", 8
    side = Indexer(encoder).encode_queries([query])
    assert (side.relations < 0).all()  # no relation: R = 0 for every image
    q = side.embeddings[0].double().numpy()
    parts = side.parts[0][side.parts_mask[0]].double().numpy()  # [2, D]
    g = index.gallery
    cosine = g.embeddings.double().numpy() @ q
    align, matched = np.zeros(len(index)), []
    for i in range(len(index)):
        regions = g.parts[i][g.parts_mask[i]].double().numpy()
        sim = parts @ regions.T
        rows, cols = linear_sum_assignment(sim, maximize=True)
        align[i] = sim[rows, cols].sum() / len(parts)
        matched.append(g.part_boxes[i][g.parts_mask[i]][cols].tolist())
    cfg = get_config(serve.METHODS[method])
    fused = (1 - cfg.lam) * cosine + cfg.lam * align + cfg.gamma * 0.0
    assert list(np.argsort(-fused, kind="stable")[:k]) != list(np.argsort(-cosine, kind="stable")[:k]), \
        "a query whose re-ranking moves something, so the test can tell the two orders apart"

    body = client.post("/search", json={"query": query, "k": k, "method": method}).json()["queries"][0]
    cos_ids = [h["id"] for h in body["cosine"]]
    ids = [h["id"] for h in body["reranked"]]
    # the same values as the true top-k in the true order (ties may swap ids of equal score)
    np.testing.assert_allclose(cosine[cos_ids], np.sort(cosine)[::-1][:k], atol=1e-5)
    np.testing.assert_allclose([h["first_stage"] for h in body["cosine"]], cosine[cos_ids], atol=1e-5)
    np.testing.assert_allclose(fused[ids], np.sort(fused)[::-1][:k], atol=1e-5)
    np.testing.assert_allclose([h["score"] for h in body["reranked"]], fused[ids], atol=1e-5)
    np.testing.assert_allclose([h["alignment"] for h in body["reranked"]], align[ids], atol=1e-5)
    assert all(h["structure"] == 0 for h in body["reranked"])
    for h in body["reranked"]:  # the boxes drawn are the regions scipy's matching picked
        np.testing.assert_allclose([m["box"] for m in h["matches"]], matched[h["id"]])
    # rank_before: each hit's place in the cosine order
    by_cosine = list(np.argsort(-cosine, kind="stable"))
    assert [h["rank_before"] for h in body["reranked"]] == [by_cosine.index(i) + 1 for i in ids]


def _same_json(a, b, where="") -> None:
    """Equal JSON documents: the same keys and lists everywhere, floats within 1e-5 (compiled vs eager heads)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b) if isinstance(b, dict) else b)
        for key in a:
            _same_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same_json(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, abs=1e-5), where
    else:
        assert a == b, where


def test_the_service_answers_in_the_json_form_geosteer_search_prints(client, index, capsys):
    """`POST /search` and `geosteer search --json` print one form: SearchResult.to_dict() (+ their own extras)."""
    import json

    from geosteer import cli

    query, k = "a pink star and a green triangle", 5
    assert cli.main(["search", str(index.path), query, "-k", str(k), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    served = client.post("/search", json={"query": query, "k": k}).json()
    shared = ("method", "k", "config", "queries")
    assert set(printed) == {*shared, "index", "images", "model", "preset", "seconds"}
    assert set(served) == {*shared, "server_ms"}
    _same_json({key: printed[key] for key in shared}, {key: served[key] for key in shared})
    hit = served["queries"][0]["reranked"][0]
    assert list(hit) == ["rank", "id", "path", "score", "first_stage", "alignment", "structure", "rank_before",
                         "width", "height", "matches"]
    assert list(hit["matches"][0]) == ["part", "text", "box", "box_frac"]
