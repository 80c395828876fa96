"""A bounded load test of `geosteer serve` on loopback: concurrent clients for a fixed time, latency and status counts.

    python -m bench.bench_serve_load                      # 16 clients x 10 s, writes results/serve_load_<date>.json
    python -m bench.bench_serve_load --clients 8 --seconds 3 --json out.json
    python -m bench.bench_serve_load --index my.index     # an index of yours (its own queries: --queries FILE)

The service is the real command (`python -m geosteer.commands.serve INDEX
--host 127.0.0.1 --port P`: eager heads, the default queue and limits) in
a subprocess, over a GeoShapes index built for the run (96 images of the
binding split, the demo model, grid regions; the index `geosteer serve`'s
tests use, larger) unless `--index` names one. Each client is a thread with
one keep-alive connection (`http.client`), doing what the page does, as
fast as answers come: POST /search (the split's captions in turn, k = 10,
the three methods in turn), then GET /image/<id> of each re-ranked hit
(thumbnails come from the service's cache after the first time). A 503
(the search queue full) makes the client wait its Retry-After, as a
well-behaved client does. Every loop is bounded by time and by count.

Two phases on one server: `--clients` (16: below the default queue of 32,
so every search must be answered: zero 5xx is the check) and an overload
phase with `--overload-clients` (64, twice the queue: what answers look
like past it, 503 + Retry-After rather than 500 or unbounded waits).

Recorded: per phase and request kind, count, requests/s, latency p50 / p90
/ p99 / max (ms) of the answers (200) and apart of each other status (a 503
is answered at once), status counts, 5xx count; the server's RSS before and
after; the load average before and after; the environment
(`geosteer.environment.environment`: versions, commit, date). The clients
share the 2 cores with the server, so the numbers are the whole machine's,
not the service's alone.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
METHODS = ("rerank", "relations", "cosine")
#: Bounds of every wait (seconds) and of each client's requests.
SERVER_START_S = 180
REQUEST_TIMEOUT_S = 60
MAX_REQUESTS_PER_CLIENT = 100_000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of `values`, nearest-rank on the sorted list; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(latencies_ms: Sequence[float], seconds: float) -> dict:
    """count, per second, p50 / p90 / p99 / max / mean in ms (rounded to 0.1 ms)."""
    r = lambda x: None if x is None else round(x, 1)  # noqa: E731
    return {"count": len(latencies_ms), "per_s": round(len(latencies_ms) / seconds, 1) if seconds else None,
            "p50_ms": r(percentile(latencies_ms, 50)), "p90_ms": r(percentile(latencies_ms, 90)),
            "p99_ms": r(percentile(latencies_ms, 99)), "max_ms": r(max(latencies_ms, default=None)),
            "mean_ms": r(statistics.fmean(latencies_ms)) if latencies_ms else None}


def run_load(host: str, port: int, clients: int, seconds: float, queries: Sequence[str], k: int = 10,
             thumbnails: bool = True, max_requests: int = MAX_REQUESTS_PER_CLIENT,
             on_response: Callable[[str, int, dict, bytes], None] | None = None) -> dict:
    """`clients` threads doing a page's requests (a search, then its hits' thumbnails) for `seconds`.

    Args:
        host, port: the service (loopback).
        clients: concurrent clients, each one keep-alive connection.
        seconds: how long each client keeps starting requests (each request
            also times out after `REQUEST_TIMEOUT_S`).
        queries: captions, used in turn (client c starts at c).
        k: results per search; `thumbnails`: fetch each re-ranked hit's image.
        max_requests: per client, a bound on the count too.
        on_response: called with (kind, status, headers, body) of every answer.

    Returns:
        {"clients", "seconds" (wall), "search" / "image": `summary` of the
        200s, "search_503" ...: of each other status seen, "requests_per_s"
        (all statuses), "status": {kind: {status: count}}, "5xx" (503s included),
        "5xx_not_503", "errors" (connection failures, by message),
        "retry_after" (the Retry-After values of 503s), "stuck_clients"}.
    """
    lat: dict[str, list[float]] = {"search": [], "image": []}
    status: dict[str, dict[int, int]] = {"search": {}, "image": {}}
    errors: dict[str, int] = {}
    retry_after: dict[str, int] = {}
    lock = threading.Lock()
    window = [0.0, 0.0, 0.0]  # start (all clients ready), end of requests, last answer

    def go() -> None:  # run by the last client to reach the barrier: the clock starts with all of them
        window[0] = time.monotonic()
        window[1] = window[0] + seconds

    start = threading.Barrier(clients, action=go, timeout=60)

    def record(kind: str, code: int, ms: float) -> None:
        with lock:  # answers (200) and refusals apart: a 503 takes a millisecond and would hide the queue's wait
            lat.setdefault(kind if code == 200 else f"{kind}_{code}", []).append(ms)
            status[kind][code] = status[kind].get(code, 0) + 1

    def client(c: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)

        def request(kind: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes] | None:
            nonlocal conn
            headers = {"Content-Type": "application/json"} if body is not None else {}
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    key = f"{kind}: {type(e).__name__}: {e}"[:200]
                    errors[key] = errors.get(key, 0) + 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
                return None
            record(kind, resp.status, 1e3 * (time.perf_counter() - t0))
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if on_response is not None:
                on_response(kind, resp.status, hdrs, data)
            return resp.status, hdrs, data

        start.wait()
        i = 0
        while i < max_requests and time.monotonic() < window[1]:
            query = queries[(c + i) % len(queries)]
            body = json.dumps({"query": query, "k": k, "method": METHODS[(c + i) % len(METHODS)]}).encode()
            i += 1
            out = request("search", "POST", "/search", body)
            if out is None:
                continue
            code, hdrs, data = out
            if code == 503:  # the queue is full: wait as asked, within the run's time
                wait = float(hdrs.get("retry-after", "1"))
                with lock:
                    retry_after[hdrs.get("retry-after", "")] = retry_after.get(hdrs.get("retry-after", ""), 0) + 1
                time.sleep(max(0.0, min(wait, window[1] - time.monotonic())))
                continue
            if code != 200 or not thumbnails:
                continue
            for hit in json.loads(data)["queries"][0]["reranked"]:
                if time.monotonic() >= window[1] or i >= max_requests:
                    break
                i += 1
                request("image", "GET", f"/image/{hit['id']}")
        conn.close()
        with lock:
            window[2] = max(window[2], time.monotonic())

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + REQUEST_TIMEOUT_S + 70)
    wall = max(window[2], window[1]) - window[0] if window[0] else 0.0  # from all ready to the last answer
    five = sum(n for kind in status.values() for code, n in kind.items() if code >= 500)
    return {"clients": clients, "seconds": round(wall, 2),
            **{key: summary(values, wall) for key, values in lat.items()},
            "requests_per_s": round(sum(map(len, lat.values())) / wall, 1) if wall else None,
            "status": {kind: {str(code): n for code, n in sorted(s.items())} for kind, s in status.items()},
            "5xx": five, "5xx_not_503": five - sum(s.get(503, 0) for s in status.values()),
            "errors": errors, "retry_after": retry_after,
            "stuck_clients": sum(t.is_alive() for t in threads)}


# ------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float | None:
    """Resident memory of process `pid` in MiB (Linux /proc; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def start_server(index: Path, port: int, log: Path, extra: Sequence[str] = ()) -> subprocess.Popen:
    """`geosteer serve INDEX` on 127.0.0.1:port in a subprocess, once /health answers (bounded wait)."""
    cmd = [sys.executable, "-m", "geosteer.commands.serve", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"geosteer serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"geosteer serve not ready after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


def build_index(folder: Path, num_queries: int) -> tuple[Path, list[str]]:
    """A GeoShapes binding split (3 scenes a query, 96 px) indexed with the demo model and grid regions."""
    from geosteer.encoders import load_clip
    from geosteer.geoshapes import make_split
    from geosteer.index import Index

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    split = make_split("binding", 100, num_queries=num_queries, image_size=96)
    for i, im in enumerate(split.images()):
        im.save(images / f"scene{i:03d}.png")
    Index.build(images, folder / "index", load_clip("demo"), regions="grid", progress=False)
    return folder / "index", list(split.queries)


def _environment() -> dict:
    try:
        from geosteer.environment import environment

        return environment("cpu")
    except Exception as exc:  # noqa: BLE001  (the record is informative only)
        return {"error": repr(exc)}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=Path, help="an index folder (default: a GeoShapes index built for the run)")
    ap.add_argument("--queries", type=Path, help="captions, one a line (with --index; default: GeoShapes captions)")
    ap.add_argument("--num-queries", type=int, default=32, help="GeoShapes queries (3 images each; default %(default)s)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default %(default)s)")
    ap.add_argument("--overload-clients", type=int, default=64,
                    help="clients of the overload phase (default %(default)s; 0: no such phase)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase (default %(default)s)")
    ap.add_argument("--k", type=int, default=10, help="results per search (default %(default)s)")
    ap.add_argument("--json", type=Path, help=f"output file (default {RESULTS}/serve_load_<date>.json)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.index is None:
            index, queries = build_index(tmp / "geoshapes", args.num_queries)
        else:
            index = args.index
            queries = (args.queries.read_text().splitlines() if args.queries
                       else build_index(tmp / "geoshapes", 4)[1])
        queries = [q for q in queries if q.strip()]
        port = free_port()
        t0 = time.monotonic()
        proc = start_server(index, port, tmp / "serve.log")
        try:
            start_s = time.monotonic() - t0
            health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).read())
            run_load("127.0.0.1", port, 2, 2.0, queries, k=args.k)  # warm: thumbnails, first calls
            result = {"bench": "serve_load", "index": str(index) if args.index else f"geoshapes binding "
                      f"{3 * args.num_queries} images (demo model, grid regions)", "health": health,
                      "server_start_s": round(start_s, 1), "k": args.k, "phases": {}}
            phases = [("steady", args.clients)] + ([("overload", args.overload_clients)] if args.overload_clients else [])
            for name, clients in phases:
                before = {"loadavg": _loadavg(), "rss_mib": rss_mib(proc.pid)}
                out = run_load("127.0.0.1", port, clients, args.seconds, queries, k=args.k)
                out.update(loadavg_before=before["loadavg"], loadavg_after=_loadavg(),
                           rss_mib_before=before["rss_mib"], rss_mib_after=rss_mib(proc.pid))
                result["phases"][name] = out
                s = out["search"]
                print(f"{name}: {clients} clients x {args.seconds:g} s: answered searches p50 {s['p50_ms']} ms p99 "
                      f"{s['p99_ms']} ms, {s['per_s']}/s; {out['requests_per_s']} requests/s; status {out['status']}; "
                      f"5xx {out['5xx']}; load {out['loadavg_before']} -> {out['loadavg_after']}", flush=True)
            result["environment"] = _environment()
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    path = args.json or RESULTS / f"serve_load_{datetime.datetime.now(datetime.timezone.utc).date().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    steady = result["phases"]["steady"]
    overloaded = result["phases"].get("overload", {"5xx_not_503": 0})
    return 1 if steady["5xx"] or steady["errors"] or overloaded["5xx_not_503"] else 0


if __name__ == "__main__":
    sys.exit(main())
