"""`geosteer serve`: a small HTTP search service and web page over an on-disk index.

`geosteer serve INDEX` opens an index written by `geosteer index`, loads the
encoder its manifest records once, builds one re-ranking head per method once
(compiled on CUDA; on a CPU only with --compile, so it starts in seconds),
and serves on 127.0.0.1:8000 (`--host` / `--port`): `GET /` a search page
(query box, the cosine top-k and the re-ranked top-k side by side, the
regions matched to each query part drawn over the thumbnails), `POST /search`
(JSON: the form `geosteer search --json` prints, `SearchResult.to_dict()`),
`GET /image/<i>` (thumbnail of indexed image i) and `GET /health`. The page
loads nothing from outside the service, so it works offline. There is no
authentication: keep the default loopback host unless the network is yours.
Arguments are checked before the model loads (the port is bound once, to
fail fast); a bad one prints one line naming it (exit status 2).

What a hostile page or client can and cannot make it do (docs/serve.md):
requests naming a Host outside an allow-list (loopback names, the bound
address, `--allow-host`) get 421, which stops DNS rebinding; thumbnails come
in three sizes from a cache bounded in bytes; each request must arrive
within `READ_TIMEOUT_S` and bodies are capped; searches wait in a bounded
queue and the overflow gets 503 with Retry-After; a file that went bad or a
name that is not UTF-8 gives a 404 thumbnail or an explicit `path_bytes`,
never a 500.

The application object is `create_app(index, encoder, ...)` (FastAPI), so
it can be served by any ASGI server or tested with `fastapi.testclient`.
Needs the `serve` extra: `pip install 'geosteer[serve]'` (fastapi, uvicorn).
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints'
# annotations at run time, and the request model is a class local to create_app.

import argparse
import functools
import io
import ipaddress
import logging
import math
import re
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageOps

from geosteer import HeadConfig
from geosteer.commands.args import (
    DEFAULT_METHOD,
    METHODS,
    UsageError,
    check_device,
    check_index_argument,
    check_positive,
    fail,
    first_stage_name,
    index_encoder,
    method_configs,
    set_threads,
)
from geosteer.index import Searcher, to_rgb

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_K = 10
DEFAULT_K_MAX = 100
#: Longest query accepted: far above any caption the splitter handles well,
#: short enough that one request cannot make the text tower chew on a book.
MAX_QUERY_CHARS = 300
#: Most filter expressions in one request (`where`); each as long as a query at most.
MAX_WHERE = 16
#: The `size` a thumbnail request may name (pixels, longest side); the default is the page's.
THUMB_DEFAULT, THUMB_MIN, THUMB_MAX = 256, 16, 1024
#: The sides thumbnails are made at: a requested size snaps up to the next one (the largest above it),
#: so one image has at most three thumbnails, whatever sizes clients ask for.
THUMB_SIDES = (128, 256, 512)
#: Bytes of encoded thumbnails kept in memory (least recently used out first). Counted in bytes, not
#: entries: a count bounds nothing when one entry is a 512-px PNG of a photo (~0.5 MB) and another 2 KB.
THUMB_CACHE_BYTES = 64 << 20
#: Thumbnails decoded at once: each decode holds one whole image in memory (a 24 MP PNG is ~70 MB).
THUMB_DECODERS = 2
#: Largest image a thumbnail is decoded from, in pixels after JPEG's reduced-scale decoding (a 50 MP
#: PNG is 150 MB of RGB); past it the image gets a 404, as an unreadable file does.
THUMB_MAX_PIXELS = 50_000_000
#: Searches running or waiting at once; one more gets 503 with Retry-After. The searches run one at
#: a time, so this bounds a request's wait to about QUEUE_SIZE searches (2-50 ms each on a CPU).
QUEUE_SIZE = 32
#: Longest a search waits for its turn before it gets 503 instead (seconds).
QUEUE_WAIT_S = 30.0
#: Retry-After of a 503 (seconds).
RETRY_AFTER_S = 1
#: Largest request body (bytes): a search body is a query of <= 300 characters and two small fields.
MAX_BODY_BYTES = 16 << 10
#: Largest request line + headers (bytes; h11's own default, set here so no version changes it).
MAX_HEADER_BYTES = 16 << 10
#: A request's line, headers and body must arrive within this many seconds of the connection opening
#: or of the previous response: a client that sends a byte now and then cannot hold a connection.
READ_TIMEOUT_S = 10.0
#: An idle keep-alive connection is closed after this many seconds (uvicorn's timeout_keep_alive).
KEEP_ALIVE_S = 5
#: Open connections (uvicorn's limit_concurrency): one more request gets uvicorn's bare 503.
MAX_CONNECTIONS = 128
#: Host names every service answers to, with any port: this machine's loopback names.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: The page's static files, shipped as package data in geosteer/commands/web/.
WEB_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
#: Everything the page may load comes from the service itself (no CDN, works offline).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_IMAGE_ID = re.compile(r"[0-9]{1,18}")
_HOST_NAME = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")  # a DNS name, an IPv4 address, or [an IPv6 address]
_log = logging.getLogger(__name__)


def web_file(name: str) -> bytes:
    """The bytes of one of the page's static files (`WEB_FILES`)."""
    if name not in WEB_FILES:
        raise ValueError(f"name must be one of {tuple(WEB_FILES)}, got {name!r}")
    return resources.files("geosteer.commands").joinpath("web", name).read_bytes()


class Overloaded(RuntimeError):
    """The search queue is full, or a search waited `QUEUE_WAIT_S` for its turn: the client gets 503."""


class ByteLRU:
    """A thread-safe least-recently-used map of `bytes` values, bounded by their total length.

    Args:
        max_bytes: the most bytes the values may hold together; a value longer
            than this on its own is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Any) -> bytes | None:
        """The value of `key` (now the most recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: bytes) -> None:
        """Keep `value`, dropping the least recently used values until all fit in `max_bytes`."""
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= len(old)
            self._items[key] = value
            self.nbytes += len(value)
            while self.nbytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= len(dropped)


def thumb_side(size: int) -> int:
    """The side a thumbnail request of `size` is served at: the first of `THUMB_SIDES` >= size, else the largest."""
    return next((side for side in THUMB_SIDES if side >= size), THUMB_SIDES[-1])


class Service:
    """What every request shares: the index, its `Searcher` (one head per method, built once), thumbnails.

    Built once at start-up; requests only read it. The heads are compiled
    where that pays, on CUDA (`compile=None`), or when asked: on a CPU a
    compiled search costs what an eager one does (measured on this
    project's 2-core CPU, torch 2.14, N = 100 and 20,000, n = 16, D = 384,
    K = 100: 1.01 vs 1.04 ms, 2.45 vs 2.46 ms) after 5 s or more of
    compilation per query shape family (a minute or more of start-up), so
    an eager service starts in seconds. The warm-up runs one query per
    shape family through every method (`Searcher.warm_up`), so the first
    requests pay neither compilation nor numba's and the text tower's first
    calls.

    Searches run one at a time under a lock: the encoder's text cache and
    torch's intra-op threads are shared, and two concurrent searches on a
    few CPU cores only slow each other down. At most `queue_size` searches
    run or wait at once, each waiting at most `QUEUE_WAIT_S`; past either
    bound `search` raises `Overloaded` (the endpoint's 503) instead of
    queueing without end.

    Args:
        index: an opened `geosteer.index.Index`.
        encoder: the encoder the index was built with (`load_clip(...)`).
        method: the default method (a key of `METHODS`).
        k_max: largest k a request may ask for (capped at the index size).
        config_overrides: `HeadConfig` fields applied to every method's preset.
        warm_up: run the warm-up queries now.
        compile: compile the heads: True, False, or None (on CUDA only).
        device: where the heads run (default: the index's tensors, the CPU).
        queue_size: searches running or waiting at once (`QUEUE_SIZE`).
        thumbnail_cache_bytes: bytes of thumbnails kept (`THUMB_CACHE_BYTES`).
    """

    def __init__(
        self,
        index,
        encoder,
        method: str = DEFAULT_METHOD,
        k_max: int = DEFAULT_K_MAX,
        config_overrides: dict[str, Any] | None = None,
        warm_up: bool = True,
        compile: bool | None = None,
        device: str | None = None,
        queue_size: int = QUEUE_SIZE,
        thumbnail_cache_bytes: int = THUMB_CACHE_BYTES,
    ) -> None:
        if len(index) < 1:
            raise ValueError("index must hold at least one image")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        self.index = index
        # the searcher refuses a method that is not one of its configs' (METHODS) and holds the default
        self.searcher = Searcher(index, encoder, method_configs(config_overrides), method=method, k_max=k_max,
                                 device=device, compile=compile)
        self.root = Path(index.root)  # once: Index.root looks at the file system
        self.lock = threading.Lock()
        self.queue_size = queue_size
        self.pending = 0  # searches running or waiting for the lock
        self._pending_lock = threading.Lock()
        # per service, so a test's many apps do not keep each other's images alive
        self.thumbnails = ByteLRU(thumbnail_cache_bytes)
        self._decoders = threading.BoundedSemaphore(THUMB_DECODERS)
        self.warm_up_s = self.searcher.warm_up() if warm_up else 0.0

    # -- images

    def image_path(self, i: int) -> Path:
        """File of indexed image `i` (an id from the index, never a client's path)."""
        return self.root / self.index.paths[i]

    def thumbnail(self, i: int, size: int) -> bytes:
        """PNG of image i as indexed (upright by EXIF: the pixels its boxes are in), longest side <= thumb_side(size).

        Shrinks only; the page scales small images up. Cached (`thumbnails`).

        Raises:
            Exception: whatever decoding the file raised (missing, not an
                image, truncated, too large): the endpoint's 404.
        """
        key = (i, thumb_side(size))
        data = self.thumbnails.get(key)
        if data is None:
            data = self._thumbnail(*key)
            self.thumbnails.put(key, data)
        return data

    def _thumbnail(self, i: int, side: int) -> bytes:
        with self._decoders:  # bounds the memory many concurrent decodes of large images would take
            with Image.open(self.image_path(i)) as im:
                im.draft("RGB", (side, side))  # JPEG: decode at 1/2-1/8 scale, never below `side`
                if im.width * im.height > THUMB_MAX_PIXELS:
                    raise ValueError(f"{im.width}x{im.height} is over {THUMB_MAX_PIXELS} pixels")
                im.load()
                im = ImageOps.exif_transpose(im)
            im = to_rgb(im)  # as load_image: transparency on white, 16-bit and float greyscale scaled
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        return buf.getvalue()

    # -- search

    def search(self, query: str, method: str, k: int, where: str | list[str] | None = None) -> dict[str, Any]:
        """One query through the searcher: the JSON body of `POST /search` (`SearchResult.to_dict()` + server_ms).

        A hit whose path is not valid UTF-8 (a file name in another encoding,
        held as `os.fsdecode` does, with lone surrogates) has its path with
        U+FFFD in place of each undecodable byte, and `path_bytes`: the
        name's bytes in hex; every other hit is exactly `Ranking.rows()`.
        `where` filters the images searched (`Searcher.search`'s `where`:
        `path:GLOB`, `path:PREFIX/`, `id:3,5-9`; a list: all must hold).

        Raises:
            Overloaded: `queue_size` searches already running or waiting, or
                this one waited `QUEUE_WAIT_S` for its turn.
        """
        t0 = time.perf_counter()
        with self._pending_lock:
            if self.pending >= self.queue_size:
                raise Overloaded(f"{self.pending} searches are running or waiting (the queue holds "
                                 f"{self.queue_size}); retry in a moment")
            self.pending += 1
        try:
            if not self.lock.acquire(timeout=QUEUE_WAIT_S):
                raise Overloaded(f"waited {QUEUE_WAIT_S:g} s for the searches ahead; retry in a moment")
            try:
                result = self.searcher.search([query], method, k, where=where)
            finally:
                self.lock.release()
        finally:
            with self._pending_lock:
                self.pending -= 1
        body = result.to_dict()
        for q in body["queries"]:
            for key in ("cosine", "reranked"):
                q[key] = [_hit_with_path_bytes(h) for h in q[key]]
        return {**body, "server_ms": 1e3 * (time.perf_counter() - t0)}


def _unicode_text(name: str, value: str) -> None:
    """A request's text field holds no lone surrogate (JSON's \\ud800 escapes decode to them; no text encoder
    takes them), else a ValueError naming the field and the character."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} must be Unicode text, but character {e.start} is a lone surrogate "
                         f"(U+{ord(value[e.start]):04X})") from None


def _hit_with_path_bytes(hit: dict[str, Any]) -> dict[str, Any]:
    """`hit` as it is when its path is valid UTF-8; else its path made printable, plus `path_bytes` (hex)."""
    path = hit.get("path")
    if not isinstance(path, str):
        return hit
    try:
        path.encode("utf-8")
        return hit
    except UnicodeEncodeError:
        pass
    try:  # os.fsdecode's surrogateescape: U+DC80..U+DCFF stand for the bytes 0x80..0xFF
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # another lone surrogate: keep its code point, as UTF-8 would write it
        raw = path.encode("utf-8", "surrogatepass")
    out = {}
    for key, value in hit.items():
        out[key] = raw.decode("utf-8", "replace") if key == "path" else value
        if key == "path":
            out["path_bytes"] = raw.hex()
    return out


def _printable(value: Any) -> Any:
    """`value` as strict JSON can hold it: U+FFFD for lone surrogates (keys too), "NaN" / "Infinity" as strings.

    Python's JSON parser accepts the bare tokens NaN and Infinity in a body,
    and a 422 echoes them back; strict JSON has no such numbers.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


def _host_name(header: str) -> str | None:
    """The name a Host header names, lowercased, without port or IPv6 brackets; None if malformed."""
    host = header.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host.partition("]")
        if not bracket:
            return None
        name += "]"
    else:
        name, colon, rest = host.partition(":")
        rest = colon + rest
    if rest and not re.fullmatch(r":[0-9]{1,5}", rest):
        return None
    if not _HOST_NAME.fullmatch(name):
        return None
    return name.strip("[]").rstrip(".") or None


def allowed_hosts(bound: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names a service answers to: `LOOPBACK_HOSTS`, the address it is bound to, `extra`.

    A wildcard bound address (0.0.0.0, ::) names no host a client would
    send, so it adds nothing: reach such a service by a name in `extra`.
    "*" in `extra` allows every Host (the check is off).

    Raises:
        ValueError: a name in `extra` that is not a host name or address.
    """
    names = set(LOOPBACK_HOSTS)
    if bound and bound not in ("0.0.0.0", "::", ""):
        names.add(bound.strip("[]").lower())
    for name in extra:
        if name == "*":
            names.add("*")
            continue
        bare_ipv6 = isinstance(name, str) and name.count(":") > 1 and not name.startswith("[")
        host = _host_name(f"[{name}]" if bare_ipv6 else name) if isinstance(name, str) else None
        if host is None:
            raise ValueError(f"allow_hosts: {name!r} is not a host name or address (e.g. geo.lan, 192.168.1.5)")
        names.add(host)
    return frozenset(names)


class _Guard:
    """ASGI middleware in front of every route: the Host allow-list (421), then the request body cap (413).

    The Host check is what stops DNS rebinding: a page on attacker.example
    whose name the attacker re-points at 127.0.0.1 reaches this service
    from the victim's browser, but every such request says
    `Host: attacker.example`. The body cap counts what arrives, so a
    chunked body without Content-Length is bounded too.
    """

    def __init__(self, app, hosts: frozenset[str], max_body: int) -> None:
        self.app, self.hosts, self.max_body = app, hosts, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", ())}
        refusal = self._refuse_host(headers.get(b"host"))
        if refusal is None:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                refusal = (413, f"request body of {int(length)} bytes; the most is {self.max_body}")
        if refusal is not None:
            return await _json_response(*refusal)(scope, receive, send)

        seen = 0

        async def capped_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                from fastapi import HTTPException  # FastAPI re-raises it as it is: a 413, not its 400

                raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        await self.app(scope, capped_receive, send)

    def _refuse_host(self, raw: bytes | None) -> tuple[int, str] | None:
        if "*" in self.hosts:
            return None
        if raw is None:
            return 400, "the request has no Host header"
        header = raw.decode("latin-1")
        name = _host_name(header)
        if name is None:
            return 400, f"malformed Host header {header[:100]!r}"
        if name not in self.hosts:
            return 421, (f"this service does not answer to Host {header[:100]!r} (it answers to "
                         f"{', '.join(sorted(self.hosts))}); to reach it by that name, start it with "
                         f"--allow-host {name}")
        return None


def _json_response(status: int, detail: Any, headers: dict[str, str] | None = None):
    """A JSON response {"detail": detail} that a lone surrogate cannot turn into a 500."""
    return _safe_json_class()(status_code=status, content={"detail": detail}, headers=headers)


@functools.cache
def _safe_json_class():
    # made on first use: Starlette's JSONResponse needs the serve extra, and importing this module
    # (geosteer's CLI does) must work without it
    from fastapi.responses import JSONResponse

    class SafeJSONResponse(JSONResponse):
        """Starlette's JSON; U+FFFD for a lone surrogate, a string for NaN / inf (see `_printable`)."""

        def render(self, content: Any) -> bytes:
            try:
                return super().render(content)
            except (UnicodeEncodeError, ValueError):  # a lone surrogate; NaN / inf (allow_nan=False)
                return super().render(_printable(content))

    return SafeJSONResponse


@functools.cache
def _response_models() -> dict[str, type]:
    """The pydantic models that document the JSON bodies in /openapi.json: search, error, health.

    Documentation only (the endpoint returns its dict as it is, not through
    the model); tests/test_serve_fuzz.py checks served bodies against them.
    """
    from pydantic import BaseModel, Field

    class Match(BaseModel):
        part: int = Field(description="index of the query part")
        text: str = Field(description="the part's phrase")
        box: list[float] = Field(description="x0, y0, x1, y1 in the image's pixels")
        box_frac: list[float] | None = Field(description="the box in fractions of the image; null if its size is unknown")

    class Hit(BaseModel):
        rank: int
        id: int = Field(description="the image's id: GET /image/{id}")
        path: str | None = Field(description="the file, relative to the index's root (U+FFFD for bytes that are not UTF-8)")
        path_bytes: str | None = Field(None, description="only when the file name is not UTF-8: its bytes in hex")
        score: float | None
        first_stage: float | None
        alignment: float | None
        structure: float | None
        rank_before: int
        width: int | None
        height: int | None
        matches: list[Match]

    class QueryResult(BaseModel):
        query: str | None
        parts: list[str]
        cosine: list[Hit]
        reranked: list[Hit]

    class SearchResponse(BaseModel):
        """SearchResult.to_dict() (what `geosteer search --json` prints) plus server_ms."""

        method: str | None
        k: int
        config: dict[str, Any]
        queries: list[QueryResult]
        server_ms: float

    class Error(BaseModel):
        detail: str

    class Health(BaseModel):
        status: Literal["ok"]
        images: int
        encoder: str
        fingerprint: str | None
        regions: str | None
        compiled: bool
        methods: list[str]
        method: str
        k_max: int

    return {"search": SearchResponse, "error": Error, "health": Health}


# ---------------------------------------------------------------- the app


def create_app(
    index,
    encoder,
    config: HeadConfig | None = None,
    *,
    method: str = DEFAULT_METHOD,
    k_max: int = DEFAULT_K_MAX,
    warm_up: bool = True,
    compile: bool | None = None,
    device: str | None = None,
    host: str | None = None,
    allow_hosts: Iterable[str] = (),
    queue_size: int = QUEUE_SIZE,
    thumbnail_cache_bytes: int = THUMB_CACHE_BYTES,
):
    """The FastAPI application over an opened index.

    Args:
        index: a `geosteer.index.Index` (`Index.open(path)`).
        encoder: the encoder the index was built with.
        config: optional `HeadConfig` whose non-default fields override
            every method's preset (e.g. `HeadConfig(backend="torch")`);
            None: the presets as they are.
        method: default method of the page (a key of `METHODS`).
        k_max: largest k a request may ask for (capped at the index size).
        warm_up: the warm-up searches before serving (see `Service`).
        compile: compile the heads: True, False, or None (on CUDA only; see `Service`).
        device: where the heads run (default: the CPU, where the index is mapped).
        host: the address the server is bound to: a Host header naming it
            is answered, as are the loopback names (`allowed_hosts`).
        allow_hosts: more Host names to answer to ("*": every one).
        queue_size: searches running or waiting at once; more get 503.
        thumbnail_cache_bytes: bytes of encoded thumbnails kept in memory.

    Returns:
        A `fastapi.FastAPI`; `app.state.service` is its `Service`,
        `app.state.hosts` the Host names it answers to.

    Raises:
        ValueError / TypeError: a bad argument, named.
    """
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if config is not None and not isinstance(config, HeadConfig):
        raise TypeError(f"config must be a HeadConfig or None, got {type(config).__name__}")
    if isinstance(allow_hosts, str):
        raise TypeError(f"allow_hosts must be a list of names, got the string {allow_hosts!r}")
    hosts = allowed_hosts(host, allow_hosts)
    overrides = {}
    if config is not None:  # only the fields the caller changed, so each preset keeps its own λ, γ, ...
        default = HeadConfig()
        overrides = {f: getattr(config, f) for f in HeadConfig.__dataclass_fields__
                     if f != "k" and getattr(config, f) != getattr(default, f)}
    service = Service(index, encoder, method=method, k_max=k_max, config_overrides=overrides, warm_up=warm_up,
                      compile=compile, device=device, queue_size=queue_size,
                      thumbnail_cache_bytes=thumbnail_cache_bytes)
    k_top = service.searcher.k_max
    default_method = method

    class SearchRequest(BaseModel):
        """Body of `POST /search`. Unknown fields and wrong types are refused (422), never coerced."""

        model_config = ConfigDict(extra="forbid", strict=True)

        query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="the text query")
        k: int = Field(DEFAULT_K if DEFAULT_K <= k_top else k_top, ge=1, le=k_top, description="results per list")
        method: Literal[tuple(METHODS)] = Field(default_method, description="ranking method")  # type: ignore[valid-type]
        where: str | list[str] | None = Field(
            None, description=f"filter: 'path:GLOB', 'path:PREFIX/', 'id:3,5-9'; '&' or a list: all must hold "
                              f"(at most {MAX_WHERE} expressions of {MAX_QUERY_CHARS} characters)")

        @field_validator("where")
        @classmethod
        def _where_is_short_text(cls, v: str | list[str] | None) -> str | list[str] | None:
            exprs = [v] if isinstance(v, str) else (v or [])
            if len(exprs) > MAX_WHERE:
                raise ValueError(f"where holds {len(exprs)} expressions; at most {MAX_WHERE}")
            for e in exprs:
                if len(e) > MAX_QUERY_CHARS:
                    raise ValueError(f"a where expression is {len(e)} characters long; at most {MAX_QUERY_CHARS}")
                _unicode_text("where", e)
            return v

        @field_validator("query")
        @classmethod
        def _has_words(cls, v: str) -> str:
            _unicode_text("query", v)
            v = " ".join(v.split())  # the splitter normalises spaces too; the echo shows what ran
            if not v:
                raise ValueError("query must hold a non-space character")
            return v

    # No /docs or /redoc: FastAPI's pages load Swagger / ReDoc from a CDN, and this
    # service must work offline; the schema is still at /openapi.json.
    app = FastAPI(title="geosteer", description=__doc__.split("\n\n")[0], version=_version(),
                  docs_url=None, redoc_url=None, default_response_class=_safe_json_class())
    app.state.service = service
    app.state.hosts = hosts
    app.add_middleware(_Guard, hosts=hosts, max_body=MAX_BODY_BYTES)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own 422 body plus one readable line ("body.k: Input should be ..."); the errors echo the
        # input, which may hold lone surrogates or undecodable bytes: U+FFFD in their place
        errors = _printable(exc.errors())
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in errors)
        return _safe_json_class()(status_code=422, content={"detail": jsonable_encoder(errors), "message": message})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's handler, with a JSON writer a lone surrogate in the detail cannot break
        return _json_response(exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.get("/health", responses={200: {"model": _response_models()["health"], "description": "the service is up"}})
    def health() -> Response:
        """Liveness plus what the service serves."""
        return _safe_json_class()({
            "status": "ok",
            "images": len(index),
            "encoder": index.manifest["encoder"]["name"],
            "fingerprint": index.manifest["encoder"]["fingerprint"],
            "regions": index.manifest["regions"],
            "compiled": service.searcher.compiled,
            "methods": list(METHODS),
            "method": default_method,
            "k_max": k_top,
        })

    @app.post("/search", responses={
        200: {"model": _response_models()["search"], "description": "the cosine and the re-ranked top-k"},
        400: {"model": _response_models()["error"], "description": "the library refused the query"},
        413: {"model": _response_models()["error"], "description": f"a body over {MAX_BODY_BYTES} bytes"},
        503: {"model": _response_models()["error"], "description": "the search queue is full: retry after Retry-After"},
    })
    def search(request: SearchRequest) -> Response:
        """The cosine top-k and the re-ranked top-k of one query."""
        try:
            body = service.search(request.query, request.method, request.k, request.where)
        except Overloaded as e:
            raise HTTPException(status_code=503, detail=str(e), headers={"Retry-After": str(RETRY_AFTER_S)}) from e
        except (ValueError, TypeError) as e:  # the library names the bad argument
            raise HTTPException(status_code=400, detail=f"query {request.query!r}: {e}") from e
        return _safe_json_class()(body)

    @app.get("/image/{image_id}", response_class=Response, responses={
        200: {"content": {"image/png": {}}, "description": "the thumbnail"},
        404: {"model": _response_models()["error"], "description": "no such image, or its file is unreadable"},
    })
    def image(image_id: str, size: int = Query(THUMB_DEFAULT, ge=THUMB_MIN, le=THUMB_MAX,
                                               description=f"longest side wanted; served at the next of "
                                                           f"{THUMB_SIDES} (the largest above it)")) -> Response:
        """Thumbnail (PNG, longest side <= thumb_side(size), never upscaled) of indexed image `image_id`.

        The id is only ever an index into `index.paths`: no client text
        reaches the file system, so there is nothing to traverse.
        """
        if not _IMAGE_ID.fullmatch(image_id) or int(image_id) >= len(index):
            raise HTTPException(status_code=404, detail=f"no image {image_id!r}: ids are 0..{len(index) - 1}")
        try:
            data = service.thumbnail(int(image_id), size)
        except Exception as e:  # noqa: BLE001
            # PIL raises OSError / ValueError for most bad files, but also DecompressionBombError (an image
            # declaring 30000x30000), SyntaxError, struct.error ... from its plugins: all mean this file
            # cannot be shown. The path stays private; the log has the reason.
            _log.info("thumbnail of image %s: %s: %s", image_id, type(e).__name__, e)
            raise HTTPException(status_code=404, detail=f"image {image_id} is in the index but its file is "
                                                        f"missing, unreadable or too large to show") from e
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    def _static(name: str) -> Response:
        return Response(web_file(name), media_type=WEB_FILES[name],
                        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return _static("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in WEB_FILES or name == "index.html":
            raise HTTPException(status_code=404, detail=f"no static file {name!r}")
        return _static(name)

    return app


def _version() -> str:
    from geosteer import __version__

    return __version__


# ---------------------------------------------------------------- command


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `geosteer serve`."""
    p.add_argument("index", metavar="INDEX", help="index folder written by `geosteer index`")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default: %(default)s, this machine only; the service has no authentication)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--model", default=None,
                   help="encoder, anything geosteer.encoders.load_clip takes (default: the one named in the index's manifest)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file for an architecture name")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=tuple(METHODS),
                   help="the page's default method (default: %(default)s; requests may pick any)")
    p.add_argument("--k-max", type=int, default=DEFAULT_K_MAX, help="largest k a request may ask for (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    compiling = p.add_mutually_exclusive_group()
    compiling.add_argument("--compile", action="store_true", default=None,
                           help="compile the heads with torch.compile on a CPU too (the default on CUDA only: on a "
                                "CPU it adds a minute or more to the start and searches no faster)")
    compiling.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                           help="never compile the heads, on CUDA either")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header names NAME (repeatable; '*': any). Without it "
                        "only localhost, 127.0.0.1, [::1] and the --host address are answered (421 otherwise), "
                        "so a web page cannot reach the service through DNS rebinding")
    p.add_argument("--queue", type=int, default=QUEUE_SIZE,
                   help="searches running or waiting at once; more get 503 with Retry-After (default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: %(default)s)")


def _serve_plan(args: argparse.Namespace) -> None:
    """Check `geosteer serve`'s arguments before anything is loaded (UsageError naming the bad one)."""
    check_index_argument(args.index)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    check_positive("--k-max", args.k_max)
    check_positive("--queue", args.queue)
    try:
        allowed_hosts(args.host, args.allow_host)
    except ValueError as e:
        raise UsageError(f"--allow-host: {str(e).partition(': ')[2]}") from None
    check_positive("--threads", args.threads)
    check_device(args.device)
    # Bind once now: a taken port or an unknown host fails in a second, not after loading the model.
    try:
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((args.host, args.port))
    except OSError as e:
        raise UsageError(f"--host {args.host!r} --port {args.port}: cannot listen there ({e.strerror or e})") from None


def run_serve(args: argparse.Namespace) -> int:
    """Run a parsed `geosteer serve` until interrupted; 2 (one line on stderr) for a bad argument."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        return fail("serve", f"needs the serve extra: pip install 'geosteer[serve]' ({e})")
    from geosteer.index import Index

    t0 = time.perf_counter()
    try:
        _serve_plan(args)
        set_threads(args.threads)
        try:
            index = Index.open(args.index)
            index.first_stage  # a stored FAISS first stage opens here: a missing faiss is one line, not a traceback
        except ImportError as e:
            raise UsageError(f"INDEX {args.index!r} has a FAISS first stage (geosteer index --faiss): {e}") from None
        except ValueError as e:  # StoreError: a corrupt or foreign manifest / shard, naming the file
            raise UsageError(f"INDEX {args.index!r}: {e}") from None
        encoder = index_encoder(index, args.model, args.pretrained, args.device)
    except UsageError as e:
        return fail("serve", str(e))
    app = create_app(index, encoder, method=args.method, k_max=args.k_max, compile=args.compile, device=args.device,
                     host=args.host, allow_hosts=args.allow_host, queue_size=args.queue)
    ready = time.perf_counter() - t0
    if not _is_loopback(args.host):
        print(f"geosteer serve: warning: listening on {args.host}: anyone who can reach it can search this index "
              f"(no authentication); it answers requests addressed to {', '.join(sorted(app.state.hosts))} "
              f"(--allow-host NAME adds the name clients use)", file=sys.stderr)
    where = f"open http://{_url_host(args.host)}:{args.port}/" if args.port else "open the address uvicorn prints below"
    service = app.state.service
    print(f"geosteer serve: {len(index)} images, model {index.manifest['encoder']['name']}, regions "
          f"{index.manifest['regions']}, first stage {first_stage_name(service.searcher.first_stage)}; ready in "
          f"{ready:.1f} s (warm-up {service.warm_up_s:.1f} s, heads "
          f"{'compiled' if service.searcher.compiled else 'eager'} on {service.searcher.device}); {where}", file=sys.stderr)
    uvicorn.run(app, **server_options(args.host, args.port, args.log_level))
    return 0


def server_options(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info",
                   read_timeout_s: float = READ_TIMEOUT_S) -> dict[str, Any]:
    """The keyword arguments `geosteer serve` gives `uvicorn.run` / `uvicorn.Config` besides the app.

    The connection limits and timeouts: h11 with a deadline on reading each
    request (`read_timeout_s`, see `guarded_protocol`; uvicorn has none of
    its own), `KEEP_ALIVE_S`, `MAX_CONNECTIONS`, `MAX_HEADER_BYTES`.
    """
    return dict(host=host, port=port, log_level=log_level, http=guarded_protocol(read_timeout_s),
                timeout_keep_alive=KEEP_ALIVE_S, limit_concurrency=MAX_CONNECTIONS,
                h11_max_incomplete_event_size=MAX_HEADER_BYTES)


def guarded_protocol(read_timeout_s: float = READ_TIMEOUT_S) -> type:
    """uvicorn's h11 protocol with a deadline: each request (line, headers, body) must arrive in `read_timeout_s`.

    uvicorn's own timer (timeout_keep_alive) runs only between a response
    and the next request's first byte, and stops at that byte: a client that
    opens a connection and sends nothing, or half a header and then a byte
    now and then, holds it forever. Here a deadline starts when the
    connection opens and again when each response ends, and stops once the
    request is whole; past it the connection is closed, after a 408 if part
    of a request's head had come (a body cut short: the app sees a
    disconnect).
    One class per timeout.
    """
    return _guarded_protocol(float(read_timeout_s))


@functools.cache
def _guarded_protocol(read_timeout_s: float) -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    reading = (h11.IDLE, h11.SEND_BODY)  # the client's states before its request is whole

    class GuardedH11Protocol(H11Protocol):
        _deadline: Any = None
        _started = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._started = True
            super().data_received(data)
            if self.conn.their_state not in reading:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._started = False  # no byte of the next request yet
            self._deadline = self.loop.call_later(read_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.conn.their_state not in reading:
                return
            # half a request and none under way: say why; an idle connection just closes (a 408 there could
            # be read as the answer to a request the client is sending at that moment)
            if self._started and (self.cycle is None or self.cycle.response_complete):
                body = b'{"detail":"the request did not arrive within %g s"}' % read_timeout_s
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()

    return GuardedH11Protocol


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> int:
    """`python -m geosteer.commands.serve INDEX ...`: the same as `geosteer serve`."""
    parser = argparse.ArgumentParser(prog="geosteer serve", description=__doc__.split("\n\n")[1])
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
