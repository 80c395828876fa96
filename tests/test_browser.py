"""The search page in a real headless Chromium, against `geosteer serve` in a subprocess.

The service (`python -m geosteer.commands.serve`, the code `geosteer serve`
runs) listens on 127.0.0.1 and a free port, over a small GeoShapes index
with the demo model. Two drives of the page:

- `--dump-dom` with the query in the URL (`/?q=...` searches on load) and
  a virtual-time budget, which Chromium spends only once the page's
  fetches are answered: the DOM must hold the result <img>s from /image/;
- the DevTools protocol over `--remote-debugging-pipe` (no websocket
  library needed): type into the search box, press Enter, wait (bounded)
  for the results, check the images decoded and the boxes were drawn, and
  that the page requested nothing but the service itself.

Skipped when no Chromium is installed (Debian: `apt-get install -y
chromium`) or without the serve extra. Every wait is bounded; the server
is killed at the end.

`python tests/test_browser.py page.png` writes a screenshot of this test's
GeoShapes page. docs/serve.png is the README's walk-through on real photos:
`geosteer photos photos/`, `geosteer index photos/ --out my.index --model
bridge --regions segments`, `geosteer serve my.index --port 8765`, then
`chromium --headless --no-sandbox --window-size=1400,1000 --virtual-time-budget=20000
--screenshot=page.png "http://127.0.0.1:8765/?q=a+cat+above+a+cup+of+coffee&k=8"`
(cropped to 665 px high).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser")
#: Bounds of every wait (seconds).
SERVER_START_S = 90  # python + torch imports, the demo model, eager heads' warm-up: ~10 s on 2 cores
BROWSER_S = 60
RESULT_S = 30
#: The split's first query: cosine ranks its colour-swapped twin first, re-ranking fixes that.
QUERY = "a yellow circle and a blue hexagon"
K = 5


def find_browser() -> str | None:
    """A Chromium binary: $GEOSTEER_CHROMIUM, else `chromium` / `chromium-browser` on PATH."""
    env = os.environ.get("GEOSTEER_CHROMIUM")
    if env:
        return env if shutil.which(env) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_flags(profile: Path) -> list[str]:
    """Headless, a throwaway profile, and none of Chromium's own network traffic."""
    flags = [
        "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", f"--user-data-dir={profile}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Chromium refuses to sandbox as root (containers, CI)
        flags.append("--no-sandbox")
    return flags


def build_index(folder: Path) -> Path:
    """A GeoShapes binding split (24 scenes), masked regions, the demo model: `folder/index`."""
    from geosteer.encoders import load_clip
    from geosteer.geoshapes import make_split
    from geosteer.index import Index

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    split = make_split("binding", 100, num_queries=8, image_size=96)
    for i, im in enumerate(split.images()):
        im.save(images / f"scene{i:03d}.png")
    Index.build(images, folder / "index", load_clip("demo"), regions="masked", progress=False)
    return folder / "index"


@contextlib.contextmanager
def running_service(index: Path, log: Path) -> Iterator[str]:
    """`geosteer serve INDEX` on 127.0.0.1 and a free port in a subprocess; yields its base URL; kills it after."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "geosteer.commands.serve", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"geosteer serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"geosteer serve not ready after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class DevTools:
    """A minimal Chrome DevTools protocol client over `--remote-debugging-pipe`.

    Chromium reads commands from its fd 3 and writes replies and events to
    fd 4, each a JSON message ended by a NUL byte.
    """

    def __init__(self, browser: str, flags: list[str], log: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # above 10, so moving them onto 3 and 4 in the child cannot clobber each other
        cr, cw = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def onto_3_and_4() -> None:
            os.dup2(cr, 3)
            os.dup2(cw, 4)

        with open(log, "wb") as out:
            self.proc = subprocess.Popen([browser, *flags, "--remote-debugging-pipe", "about:blank"],
                                         pass_fds=(3, 4), preexec_fn=onto_3_and_4, stdout=out, stderr=subprocess.STDOUT)
        os.close(cr)
        os.close(cw)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def send(self, method: str, params: dict | None = None, *, session: bool = True, timeout: float = BROWSER_S) -> dict:
        """Send one command (to the attached page unless session=False); its result, or RuntimeError."""
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise EOFError(f"Chromium closed the pipe (exit status {self.proc.poll()})")
                self._buf += chunk
        raw, _, self._buf = self._buf.partition(b"\0")
        return json.loads(raw)

    def open_page(self, url: str, width: int = 1400, height: int = 1000) -> None:
        """A new tab attached in flat mode, network and page events on, at `url`."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                          "mobile": False})
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        """The JSON value of a JS expression in the page (promises awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> object:
        """Poll a JS expression until truthy; its value, or TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):  # the page may be between documents
                value = self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still false after {timeout} s")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        """A PNG of the page, cut to its content's height."""
        import base64

        width = self.send("Page.getLayoutMetrics")["cssContentSize"]["width"]
        # the layout's height is at least the window's; the content ends at the last element
        height = self.evaluate("Math.ceil(Math.max(...[...document.body.children].map("
                               "e => e.getBoundingClientRect().bottom)) + 8)")
        clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", session=False, timeout=10)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


def search_by_typing(dt: DevTools, base: str, query: str, k: int) -> dict:
    """Open the page, type `query` into the box, set k, press Enter; what the page then shows."""
    dt.open_page(f"{base}/")
    dt.wait_for("document.readyState === 'complete' && document.querySelector('#info').textContent.length > 0",
                BROWSER_S)
    dt.evaluate(f"document.querySelector('#k').value = '{k}'; document.querySelector('#q').focus(); true")
    dt.send("Input.insertText", {"text": query})
    for kind in ("keyDown", "keyUp"):
        dt.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
                                            **({"text": "\r"} if kind == "keyDown" else {})})
    dt.wait_for("document.body.dataset.status === 'done' || document.body.dataset.status === 'error'", RESULT_S)
    # the thumbnails are separate requests: wait until every one has decoded
    dt.wait_for("[...document.querySelectorAll('img.result')].every(i => i.complete && i.naturalWidth > 0)", RESULT_S)
    return dt.evaluate("""({
        status: document.body.dataset.status,
        message: document.querySelector('#status').textContent,
        typed: document.querySelector('#q').value,
        url: location.href,
        before: [...document.querySelectorAll('#before img.result')].map(i => i.getAttribute('src')),
        after: [...document.querySelectorAll('#after img.result')].map(i => i.getAttribute('src')),
        decoded: [...document.querySelectorAll('img.result')].map(i => i.naturalWidth),
        boxes: document.querySelectorAll('#after .box').length,
        parts: [...document.querySelectorAll('.part')].map(p => p.textContent),
    })""")


def post_search(base: str, query: str, k: int) -> dict:
    """The service's own answer (what the page must show)."""
    req = urllib.request.Request(f"{base}/search", data=json.dumps({"query": query, "k": k}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=RESULT_S) as r:
        return json.load(r)


# ---------------------------------------------------------------- tests

BROWSER = find_browser()
pytestmark = [
    pytest.mark.skipif(BROWSER is None, reason="no Chromium: apt-get install -y chromium (or set GEOSTEER_CHROMIUM)"),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[str]:
    pytest.importorskip("fastapi", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")
    pytest.importorskip("uvicorn", reason="geosteer serve needs the serve extra: pip install 'geosteer[serve]'")
    folder = tmp_path_factory.mktemp("browser")
    with running_service(build_index(folder), folder / "serve.log") as base:
        yield base


def test_query_in_url_shows_result_images(service, tmp_path):
    url = f"{service}/?" + urllib.parse.urlencode({"q": QUERY, "k": K})
    run = subprocess.run(
        [BROWSER, *browser_flags(tmp_path / "profile"), "--virtual-time-budget=30000", "--dump-dom", url],
        capture_output=True, text=True, timeout=BROWSER_S,
    )
    dom = run.stdout
    assert 'data-status="done"' in dom, (run.returncode, run.stderr[-2000:], dom[-2000:])
    before, after = dom.split('id="after"', 1)
    imgs = lambda html: [int(m) for m in re.findall(r'<img class="result" src="/image/(\d+)"', html)]  # noqa: E731
    assert len(imgs(before)) == len(imgs(after)) == K
    assert 'class="box"' in after and 'class="box"' not in before  # matched regions drawn after re-ranking only
    body = post_search(service, QUERY, K)["queries"][0]
    assert imgs(after) == [h["id"] for h in body["reranked"]]
    assert imgs(before) == [h["id"] for h in body["cosine"]]


def test_typing_a_query_shows_results(service, tmp_path):
    dt = DevTools(BROWSER, browser_flags(tmp_path / "profile"), tmp_path / "chromium.log")
    try:
        shown = search_by_typing(dt, service, QUERY, K)
        dt.screenshot(tmp_path / "page.png")
        requested = [e["params"]["request"]["url"] for e in dt.events if e.get("method") == "Network.requestWillBeSent"]
    finally:
        dt.close()
    assert shown["status"] == "done", shown["message"]
    assert shown["typed"] == QUERY and "q=a+yellow+circle" in shown["url"]
    assert len(shown["before"]) == len(shown["after"]) == K
    assert all(src.startswith("/image/") for src in shown["before"] + shown["after"])
    assert all(w > 0 for w in shown["decoded"])
    # one box per matched (part, region) pair the service returned (a scene with one region matches one part)
    assert shown["boxes"] == sum(len(h["matches"]) for h in post_search(service, QUERY, K)["queries"][0]["reranked"]) >= K
    assert shown["parts"] == ["part 1: a yellow circle", "part 2: a blue hexagon"]
    # offline: the page fetched the service and nothing else
    assert requested and all(u.startswith(service + "/") for u in requested), requested
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_bad_query_shows_the_message(service, tmp_path):
    dt = DevTools(BROWSER, browser_flags(tmp_path / "profile"), tmp_path / "chromium.log")
    try:
        dt.open_page(f"{service}/?" + urllib.parse.urlencode({"q": "x" * 301}))
        dt.wait_for("document.body.dataset.status === 'error'", RESULT_S)
        message = dt.evaluate("document.querySelector('#status').textContent")
    finally:
        dt.close()
    assert message.startswith("query:") and "300" in message


def main(argv: list[str]) -> int:
    """`python tests/test_browser.py OUT.png`: a screenshot of the page with real results."""
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out = Path(argv[0])
    if BROWSER is None:
        print("no Chromium found", file=sys.stderr)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with running_service(build_index(folder), folder / "serve.log") as base:
            dt = DevTools(BROWSER, browser_flags(folder / "profile"), folder / "chromium.log")
            try:
                shown = search_by_typing(dt, base, QUERY, 8)
                if shown["status"] != "done":
                    raise RuntimeError(shown["message"])
                dt.screenshot(out)
            finally:
                dt.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
