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
import re
import socket
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from geosteer import HeadConfig
from geosteer.commands.args import (
    DEFAULT_METHOD,
    METHODS,
    UsageError,
    check_device,
    check_index_argument,
    check_positive,
    fail,
    index_encoder,
    method_configs,
    set_threads,
)
from geosteer.index import Searcher, load_image

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_K = 10
DEFAULT_K_MAX = 100
#: Longest query accepted: far above any caption the splitter handles well,
#: short enough that one request cannot make the text tower chew on a book.
MAX_QUERY_CHARS = 300
#: Thumbnail sides the image endpoint accepts (pixels, longest side).
THUMB_DEFAULT, THUMB_MIN, THUMB_MAX = 256, 16, 1024
#: Thumbnails kept encoded in memory (a page of results re-requests the same ones).
THUMB_CACHE = 1024
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


def web_file(name: str) -> bytes:
    """The bytes of one of the page's static files (`WEB_FILES`)."""
    if name not in WEB_FILES:
        raise ValueError(f"name must be one of {tuple(WEB_FILES)}, got {name!r}")
    return resources.files("geosteer.commands").joinpath("web", name).read_bytes()


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
    few CPU cores only slow each other down.

    Args:
        index: an opened `geosteer.index.Index`.
        encoder: the encoder the index was built with (`load_clip(...)`).
        method: the default method (a key of `METHODS`).
        k_max: largest k a request may ask for (capped at the index size).
        config_overrides: `HeadConfig` fields applied to every method's preset.
        warm_up: run the warm-up queries now.
        compile: compile the heads: True, False, or None (on CUDA only).
        device: where the heads run (default: the index's tensors, the CPU).
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
    ) -> None:
        if len(index) < 1:
            raise ValueError("index must hold at least one image")
        self.index = index
        # the searcher refuses a method that is not one of its configs' (METHODS) and holds the default
        self.searcher = Searcher(index, encoder, method_configs(config_overrides), method=method, k_max=k_max,
                                 device=device, compile=compile)
        self.root = Path(index.root)  # once: Index.root looks at the file system
        self.lock = threading.Lock()
        # per service, so a test's many apps do not keep each other's images alive
        self.thumbnail = functools.lru_cache(maxsize=THUMB_CACHE)(self._thumbnail)
        self.warm_up_s = self.searcher.warm_up() if warm_up else 0.0

    # -- images

    def image_path(self, i: int) -> Path:
        """File of indexed image `i` (an id from the index, never a client's path)."""
        return self.root / self.index.paths[i]

    def _thumbnail(self, i: int, size: int) -> bytes:
        """PNG of image i as indexed (upright by EXIF: the pixels its boxes are in), longest side <= size.

        Shrinks only; the page scales small images up.
        """
        im = load_image(self.image_path(i))
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    # -- search

    def search(self, query: str, method: str, k: int) -> dict[str, Any]:
        """One query through the searcher: the JSON body of `POST /search` (`SearchResult.to_dict()` + server_ms)."""
        t0 = time.perf_counter()
        with self.lock:
            result = self.searcher.search([query], method, k)
        return {**result.to_dict(), "server_ms": 1e3 * (time.perf_counter() - t0)}


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

    Returns:
        A `fastapi.FastAPI`; `app.state.service` is its `Service`.
    """
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    if config is not None and not isinstance(config, HeadConfig):
        raise TypeError(f"config must be a HeadConfig or None, got {type(config).__name__}")
    overrides = {}
    if config is not None:  # only the fields the caller changed, so each preset keeps its own λ, γ, ...
        default = HeadConfig()
        overrides = {f: getattr(config, f) for f in HeadConfig.__dataclass_fields__
                     if f != "k" and getattr(config, f) != getattr(default, f)}
    service = Service(index, encoder, method=method, k_max=k_max, config_overrides=overrides, warm_up=warm_up,
                      compile=compile, device=device)
    k_top = service.searcher.k_max
    default_method = method

    class SearchRequest(BaseModel):
        """Body of `POST /search`. Unknown fields and wrong types are refused (422), never coerced."""

        model_config = ConfigDict(extra="forbid", strict=True)

        query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="the text query")
        k: int = Field(DEFAULT_K if DEFAULT_K <= k_top else k_top, ge=1, le=k_top, description="results per list")
        method: Literal[tuple(METHODS)] = Field(default_method, description="ranking method")  # type: ignore[valid-type]

        @field_validator("query")
        @classmethod
        def _has_words(cls, v: str) -> str:
            v = " ".join(v.split())  # the splitter normalises spaces too; the echo shows what ran
            if not v:
                raise ValueError("query must hold a non-space character")
            return v

    # No /docs or /redoc: FastAPI's pages load Swagger / ReDoc from a CDN, and this
    # service must work offline; the schema is still at /openapi.json.
    app = FastAPI(title="geosteer", description=__doc__.split("\n\n")[0], version=_version(),
                  docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 body plus one readable line ("body.k: Input should be ...").
        errors = exc.errors()
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
                            for e in errors)
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors), "message": message})

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness plus what the service serves."""
        return {
            "status": "ok",
            "images": len(index),
            "encoder": index.manifest["encoder"]["name"],
            "fingerprint": index.manifest["encoder"]["fingerprint"],
            "regions": index.manifest["regions"],
            "compiled": service.searcher.compiled,
            "methods": list(METHODS),
            "method": default_method,
            "k_max": k_top,
        }

    @app.post("/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        """The cosine top-k and the re-ranked top-k of one query."""
        try:
            return service.search(request.query, request.method, request.k)
        except (ValueError, TypeError) as e:  # the library names the bad argument
            raise HTTPException(status_code=400, detail=f"query {request.query!r}: {e}") from e

    @app.get("/image/{image_id}")
    def image(image_id: str, size: int = Query(THUMB_DEFAULT, ge=THUMB_MIN, le=THUMB_MAX)) -> Response:
        """Thumbnail (PNG, longest side <= size) of indexed image `image_id`.

        The id is only ever an index into `index.paths`: no client text
        reaches the file system, so there is nothing to traverse.
        """
        if not _IMAGE_ID.fullmatch(image_id) or int(image_id) >= len(index):
            raise HTTPException(status_code=404, detail=f"no image {image_id!r}: ids are 0..{len(index) - 1}")
        try:
            data = service.thumbnail(int(image_id), size)
        except (OSError, ValueError) as e:  # PIL's errors are OSError / ValueError; the path stays private
            raise HTTPException(status_code=404,
                                detail=f"image {image_id} is in the index but its file is missing or unreadable") from e
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
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: %(default)s)")


def _serve_plan(args: argparse.Namespace) -> None:
    """Check `geosteer serve`'s arguments before anything is loaded (UsageError naming the bad one)."""
    check_index_argument(args.index)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    check_positive("--k-max", args.k_max)
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
        except ValueError as e:  # StoreError: a corrupt or foreign manifest / shard, naming the file
            raise UsageError(f"INDEX {args.index!r}: {e}") from None
        encoder = index_encoder(index, args.model, args.pretrained, args.device)
    except UsageError as e:
        return fail("serve", str(e))
    app = create_app(index, encoder, method=args.method, k_max=args.k_max, compile=args.compile, device=args.device)
    ready = time.perf_counter() - t0
    if not _is_loopback(args.host):
        print(f"geosteer serve: warning: listening on {args.host}: anyone who can reach it can search this index "
              f"(no authentication)", file=sys.stderr)
    where = f"open http://{_url_host(args.host)}:{args.port}/" if args.port else "open the address uvicorn prints below"
    service = app.state.service
    print(f"geosteer serve: {len(index)} images, model {index.manifest['encoder']['name']}, regions "
          f"{index.manifest['regions']}; ready in {ready:.1f} s (warm-up {service.warm_up_s:.1f} s, heads "
          f"{'compiled' if service.searcher.compiled else 'eager'} on {service.searcher.device}); {where}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


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
