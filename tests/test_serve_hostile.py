"""`geosteer serve` against hostile pages, clients and files (issue 22): each answer a 2xx or a 4xx with a message.

One small index (6 GeoShapes scenes, a copy of one under a file name that
is not UTF-8, a 1600x1200 JPEG photo; grid regions, the demo model, eager
heads) and one app serve the tests:

- DNS rebinding: a Host outside the allow-list (loopback names, the bound
  address, `allow_hosts`) gets 421 on every route; a malformed or missing
  Host 400;
- memory by request: thumbnails come in three sizes whatever `size` asks,
  their cache is bounded in bytes, bodies over `MAX_BODY_BYTES` get 413,
  headers over `MAX_HEADER_BYTES` a 4xx, and a connection that sends
  nothing, half a header, or half a body is dropped after the read
  deadline (a live uvicorn on 127.0.0.1);
- files that went bad after indexing (a PNG declaring 30000x30000, a
  truncated or empty file) give a 404 thumbnail and searches still answer;
  a file name that is not UTF-8 comes back printable with its bytes in
  `path_bytes`; lone surrogates and undecodable bytes in a body get 422;
- overload: past the search queue, 503 with Retry-After.

Every wait is bounded (socket timeouts, joins).
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")
pytest.importorskip("httpx", reason="fastapi's TestClient needs httpx (the serve extra)")
pytest.importorskip("uvicorn", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from geosteer.commands import serve  # noqa: E402
from test_serve import live_server  # noqa: E402

BAD_NAME = b"bad\xffname.png"  # Latin-1 'ÿ': not UTF-8; the index holds it as os.fsdecode does ('bad\udcffname.png')
PHOTO = "photo.jpg"
ATTACKER = "attacker.example"


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height (PIL refuses past 2 x MAX_IMAGE_PIXELS at open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def encoder():
    from geosteer.encoders import load_clip

    return load_clip("demo")


@pytest.fixture(scope="module")
def index(tmp_path_factory, encoder):
    import numpy as np

    from geosteer.geoshapes import make_split
    from geosteer.index import Index

    folder = tmp_path_factory.mktemp("hostile")
    images = folder / "images"
    images.mkdir()
    split = make_split("binding", 100, num_queries=2, image_size=96)
    for i, im in enumerate(split.images()):
        im.save(images / f"scene{i:03d}.png")
    (Path(os.fsdecode(os.fsencode(images) + b"/" + BAD_NAME))).write_bytes((images / "scene000.png").read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / PHOTO, quality=90)
    return Index.build(images, folder / "index", encoder, regions="grid", progress=False)


@pytest.fixture(scope="module")
def app(index, encoder):
    return serve.create_app(index, encoder, warm_up=False)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        yield c


def ids(index) -> dict[str, int]:
    return {p: i for i, p in enumerate(index.paths)}


def assert_message(r, status: int) -> dict:
    """The status, a JSON body of valid UTF-8 (strict decoding) with a readable detail."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = json.loads(r.content.decode("utf-8"))
    assert body["detail"], body
    return body


# ------------------------------------------------------------ 1. DNS rebinding: the Host allow-list


@pytest.mark.parametrize("method, path", [("GET", "/health"), ("POST", "/search"), ("GET", "/image/0"),
                                          ("GET", "/"), ("GET", "/static/app.js"), ("GET", "/openapi.json")])
def test_foreign_host_is_421_on_every_route(client, method, path):
    """A page on attacker.example re-pointed at 127.0.0.1 sends Host: attacker.example: refused, and says how to allow."""
    r = client.request(method, path, json={"query": "a red star"} if method == "POST" else None,
                       headers={"host": f"{ATTACKER}:8000"})
    body = assert_message(r, 421)
    assert ATTACKER in body["detail"] and f"--allow-host {ATTACKER}" in body["detail"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST:1", "localhost.", "127.0.0.1",
                                  "127.0.0.1:65535", "[::1]", "[::1]:8000"])
def test_loopback_hosts_are_answered(client, host):
    assert client.get("/health", headers={"host": host}).status_code == 200
    assert client.post("/search", json={"query": "a red star", "k": 2}, headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["a b", "[::1", "::1", "localhost:port", "localhost:8000:1", "local/host",
                                  "user@localhost", "localhost:123456"])
def test_malformed_host_is_400(client, host):
    assert_message(client.get("/health", headers={"host": host}), 400)


@pytest.mark.parametrize("host", ["127.0.0.2", "0.0.0.0", "localhost.attacker.example", "[::2]", "10.0.0.1:8000"])
def test_other_hosts_are_421(client, host):
    assert_message(client.get("/health", headers={"host": host}), 421)


def test_bound_address_and_allow_hosts_are_answered(index, encoder):
    app = serve.create_app(index, encoder, warm_up=False, host="192.0.2.5", allow_hosts=["geo.lan", "fe80::1"])
    assert app.state.hosts == {"localhost", "127.0.0.1", "::1", "192.0.2.5", "geo.lan", "fe80::1"}
    with TestClient(app, base_url="http://localhost") as c:
        for host in ("192.0.2.5:8000", "geo.lan", "GEO.LAN:80", "[fe80::1]:8000", "localhost"):
            assert c.get("/health", headers={"host": host}).status_code == 200, host
        for host in ("192.0.2.6", "lan", ATTACKER):
            assert c.get("/health", headers={"host": host}).status_code == 421, host
    # a wildcard bind names no host a client sends; "*" turns the check off
    assert serve.create_app(index, encoder, warm_up=False, host="0.0.0.0").state.hosts == set(serve.LOOPBACK_HOSTS)
    with TestClient(serve.create_app(index, encoder, warm_up=False, allow_hosts=["*"]), base_url="http://localhost") as c:
        assert c.get("/health", headers={"host": ATTACKER}).status_code == 200


def test_allow_hosts_are_checked(index, encoder):
    for bad in ("http://geo.lan/", "a b", "", "geo.lan/x"):
        with pytest.raises(ValueError, match="is not a host name or address"):
            serve.create_app(index, encoder, warm_up=False, allow_hosts=[bad])
    with pytest.raises(TypeError, match="allow_hosts must be a list"):
        serve.create_app(index, encoder, warm_up=False, allow_hosts="geo.lan")


def test_security_headers_are_kept(client):
    r = client.get("/")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


# ------------------------------------------------------------ 2. memory and connections held by a client


def test_thumbnail_sizes_snap_to_three(client, app, index):
    """80 sizes of one 1600x1200 photo: three thumbnails made and kept, never 80 (the old cache's RSS +188 MiB)."""
    i = ids(index)[PHOTO]
    seen = set()
    for size in range(serve.THUMB_MIN, serve.THUMB_MAX + 1, 13):  # 79 sizes
        r = client.get(f"/image/{i}", params={"size": size})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        w, h = Image.open(io.BytesIO(r.content)).size
        assert max(w, h) == serve.thumb_side(size) and (w, h) == (serve.thumb_side(size), serve.thumb_side(size) * 3 // 4)
        seen.add((w, h))
    assert seen == {(128, 96), (256, 192), (512, 384)}
    assert sum(1 for key in app.state.service.thumbnails._items if key[0] == i) == 3


def test_thumbnail_cache_is_bounded_in_bytes(index, encoder):
    budget = 200_000
    app = serve.create_app(index, encoder, warm_up=False, thumbnail_cache_bytes=budget)
    cache = app.state.service.thumbnails
    with TestClient(app, base_url="http://localhost") as c:
        for i in range(len(index)):
            for size in serve.THUMB_SIDES:
                assert c.get(f"/image/{i}", params={"size": size}).status_code == 200
                assert cache.nbytes <= budget
    assert 0 < cache.nbytes == sum(len(v) for v in cache._items.values())


def test_byte_lru():
    cache = serve.ByteLRU(10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # now the most recent: b goes first
    cache.put("c", b"1234")
    assert (cache.get("b"), cache.get("a"), cache.get("c"), cache.nbytes) == (None, b"1234", b"1234", 8)
    cache.put("big", b"x" * 11)  # longer than the whole budget: not kept, nothing dropped for it
    assert (cache.get("big"), len(cache), cache.nbytes) == (None, 2, 8)
    cache.put("a", b"123456")  # replacing counts the new length only
    assert (cache.nbytes, cache.get("c")) == (10, b"1234")
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        serve.ByteLRU(-1)


def test_request_body_over_the_cap_is_413(client):
    padded = b'{"query": "a red star"' + b" " * serve.MAX_BODY_BYTES + b"}"  # valid JSON, just long
    body = assert_message(client.post("/search", content=padded, headers={"content-type": "application/json"}), 413)
    assert str(serve.MAX_BODY_BYTES) in body["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"query": "a red star"'
        for _ in range(40):
            yield b" " * 1024
        yield b"}"

    assert_message(client.post("/search", content=chunks(), headers={"content-type": "application/json"}), 413)
    ok = b'{"query": "a red star"' + b" " * 1000 + b"}"
    assert client.post("/search", content=ok, headers={"content-type": "application/json"}).status_code == 200


def _read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection (or `limit_s` passes), and when it closed."""
    t0 = time.monotonic()
    data = b""
    sock.settimeout(0.2)
    while time.monotonic() - t0 < limit_s:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - t0


def _read_response(sock: socket.socket, limit_s: float = 10) -> bytes:
    """One whole response with a Content-Length (head and body may come in separate segments)."""
    sock.settimeout(limit_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_half_open_and_slow_connections_are_dropped(app):
    """Nothing sent, half a header trickled, half a body: each connection is gone soon after the read deadline."""
    deadline = 1.0
    with live_server(app, read_timeout_s=deadline) as (host, port):
        def connect() -> socket.socket:
            return socket.create_connection((host, port), timeout=5)

        with connect() as silent:  # opens and sends nothing: closed without a word
            data, took = _read_until_closed(silent, 10)
        assert data == b"" and took < deadline + 3, (data, took)

        with connect() as trickle:  # a header byte every 0.2 s: never complete
            head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
            t0 = time.monotonic()
            closed = False
            for b in head:
                try:
                    trickle.sendall(bytes([b]))
                except OSError:
                    closed = True
                    break
                time.sleep(0.2)
                if time.monotonic() - t0 > deadline + 3:
                    break
            data, _ = _read_until_closed(trickle, 3)
            assert closed or data.startswith(b"HTTP/1.1 408 "), data
            assert time.monotonic() - t0 < deadline + 4

        with connect() as half_body:  # whole headers, half the body it announced
            half_body.sendall(b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                              b"Content-Length: 60\r\n\r\n{\"query\": \"a red")
            data, took = _read_until_closed(half_body, 10)
        assert b" 200 " not in data and took < deadline + 3, (data, took)

        with connect() as huge:  # a header past MAX_HEADER_BYTES: refused by h11, not buffered
            huge.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * (serve.MAX_HEADER_BYTES + 1024))
            data, _ = _read_until_closed(huge, 10)
            assert data.startswith(b"HTTP/1.1 4"), data[:100]

        with connect() as ok:  # a whole request is answered, and the connection is kept alive for the next
            for _ in range(2):
                ok.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert _read_response(ok).startswith(b"HTTP/1.1 200 ")
            data, took = _read_until_closed(ok, serve.KEEP_ALIVE_S + 5)  # then closed once idle, silently
            assert data == b"" and took < min(deadline, serve.KEEP_ALIVE_S) + 3


# ------------------------------------------------------------ 3. ordinary files and text that used to give 500


@pytest.mark.parametrize("content", [bomb_png(30000, 30000), b"", b"\x89PNG\r\n\x1a\n\x00\x00", b"not an image"],
                         ids=["bomb-30000x30000", "empty", "truncated", "text"])
def test_file_that_went_bad_is_404_and_searches_still_answer(client, index, content):
    """An indexed image replaced after indexing: its thumbnail is a 404 with a message, every search still answers."""
    i = ids(index)["scene001.png"]
    f = Path(index.root) / index.paths[i]
    original = f.read_bytes()
    f.write_bytes(content)
    try:
        body = assert_message(client.get(f"/image/{i}", params={"size": 200}), 404)  # a size not cached
        assert "unreadable" in body["detail"] and str(f) not in body["detail"]
        for method in serve.METHODS:
            r = client.post("/search", json={"query": "a red star", "k": len(index), "method": method})
            assert r.status_code == 200, r.text[:300]
            assert i in [h["id"] for h in r.json()["queries"][0]["reranked"]]  # the hit is still there
    finally:
        f.write_bytes(original)


def test_file_name_that_is_not_utf8(client, index):
    """The hit comes back printable (U+FFFD per undecodable byte) with its exact bytes in hex; its thumbnail works."""
    name = os.fsdecode(BAD_NAME)
    i = ids(index)[name]
    r = client.post("/search", json={"query": "a red star", "k": len(index)})
    assert r.status_code == 200, r.text[:300]
    hits = json.loads(r.content.decode("utf-8"))["queries"][0]
    for key in ("cosine", "reranked"):
        [hit] = [h for h in hits[key] if h["id"] == i]
        assert hit["path"] == "bad\ufffdname.png"
        assert bytes.fromhex(hit["path_bytes"]) == BAD_NAME and os.fsdecode(bytes.fromhex(hit["path_bytes"])) == name
        assert list(hit)[:4] == ["rank", "id", "path", "path_bytes"]
        assert all("path_bytes" not in h for h in hits[key] if h["id"] != i)  # others: Ranking.rows() as it is
    assert client.get(f"/image/{i}").status_code == 200


@pytest.mark.parametrize("body", [
    b'{"query": "\\ud800"}',
    b'{"query": "a red star \\udcff"}',
    b'{"query": "\\udc80\\ud800 and a star"}',
    b'{"query": "a red star", "method": "\\ud800"}',
    b'{"query": "a red star", "k": "\\ud800"}',
    b'{"query": "a red star", "\\ud800": 1}',
    b'{"\\ud800": "a red star"}',
], ids=lambda b: b.decode("latin-1"))
def test_lone_surrogates_are_422(client, body):
    """JSON's \\ud800 escapes decode to lone surrogates; the 422 echo used to fail to encode them (a 500)."""
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert assert_message(r, 422)["message"]


@pytest.mark.parametrize("body", [b'{"query": Infinity}', b'{"query": NaN}', b'{"query": "a red star", "k": -Infinity}',
                                  b'{"query": "a red star", "x": [NaN, {"y": Infinity}]}'])
def test_nan_and_infinity_tokens_are_422(client, body):
    """Python's JSON parser takes bare NaN / Infinity; the 422 echo of them used to fail strict JSON (a 500)."""
    out = assert_message(client.post("/search", content=body, headers={"content-type": "application/json"}), 422)
    assert out["message"] and ("Infinity" in json.dumps(out) or "NaN" in json.dumps(out))


@pytest.mark.parametrize("body", [b'{"query": "\xff\xfe"}', b'{"query": "a red star", "k": "\xff"}', b'\xff\xfe\x00{'],
                         ids=lambda b: b.decode("latin-1"))
def test_bytes_that_are_not_utf8_are_4xx(client, body):
    r = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.status_code  # FastAPI: "There was an error parsing the body"
    json.loads(r.content.decode("utf-8"))["detail"]


@pytest.mark.parametrize("path", ["/image/%ED%A0%80", "/image/%FF", "/static/%FF", "/image/0?size=%FF",
                                  "/image/0?size=%ED%A0%80"])
def test_undecodable_urls_are_4xx(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    json.loads(r.content.decode("utf-8"))


# ------------------------------------------------------------ 4. overload: a bounded queue, then 503


def test_searches_past_the_queue_get_503_with_retry_after(index, encoder, monkeypatch):
    """Queue of 2, searches of 0.4 s, 6 at once: two answered, the rest 503 + Retry-After; nothing waits unbounded."""
    app = serve.create_app(index, encoder, warm_up=False, queue_size=2)
    searcher = app.state.service.searcher
    real = searcher.search

    def slow(*a, **kw):
        time.sleep(0.4)
        return real(*a, **kw)

    monkeypatch.setattr(searcher, "search", slow)
    out: list = []
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        gate = threading.Barrier(6, timeout=10)

        def one() -> None:
            gate.wait()
            out.append(c.post("/search", json={"query": "a red star", "k": 2}))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        codes = sorted(r.status_code for r in out)
        assert len(codes) == 6 and set(codes) == {200, 503} and codes.count(200) >= 2, codes
        for r in out:
            if r.status_code == 503:
                assert r.headers["retry-after"] == str(serve.RETRY_AFTER_S)
                assert "retry" in assert_message(r, 503)["detail"]
        assert app.state.service.pending == 0
        assert c.post("/search", json={"query": "a red star", "k": 2}).status_code == 200  # and it recovers


def test_a_search_waits_at_most_queue_wait_s(index, encoder, monkeypatch):
    app = serve.create_app(index, encoder, warm_up=False, queue_size=8)
    service = app.state.service
    monkeypatch.setattr(serve, "QUEUE_WAIT_S", 0.2)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        service.lock.acquire()  # a search that never ends
        try:
            t0 = time.monotonic()
            r = c.post("/search", json={"query": "a red star", "k": 2})
            assert time.monotonic() - t0 < 5
        finally:
            service.lock.release()
        assert "waited" in assert_message(r, 503)["detail"] and r.headers["retry-after"]
        assert c.post("/search", json={"query": "a red star", "k": 2}).status_code == 200
