"""The small page ``colab-gateway view`` serves: a live screenshot of a session's page that
passes a person's clicks and keys on to the headless browser.

Served on 127.0.0.1 only (reached from a laptop through ``ssh -L``). The one-time token
from the command is exchanged, on the first load, for a random session cookie; the token
never works again, and a wrong one is refused. Every other request needs the cookie, a
Host of the loopback (no DNS rebinding) and, for actions, a custom header that a
cross-site form cannot send.

Other local users can reach the port too: the server is bounded (gateway/local_server.py:
a few connections at once, read timeouts, everything closed when the view ends), tells the
command which socket is the daemon's (view_request.ViewAnswer), and gives the page back
after ``view.idle_timeout`` without input.

The HTTP threads never touch Selenium: they queue an ``Op`` that the browser component's
own thread carries out between its looks at the page, and wait for its result.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.browser import view_request
from gateway.browser.view_request import ViewAnswer, ViewRequest, token_hash
from gateway.durations import format_duration
from gateway.local_server import BoundedHTTPServer, listening_inode

log = logging.getLogger(__name__)

COOKIE = "cgview"
OP_TIMEOUT = 20.0
ACTION_HEADER = "X-Colab-Gateway"  # forces a CORS preflight, which this server never grants
# One person's browser tab: the page, the screenshot every second, an action, plus the
# connections a browser opens ahead. More are closed at once.
MAX_CONNECTIONS = 8
READ_TIMEOUT = 10.0  # per read of a request
DEADLINE = OP_TIMEOUT + 2 * READ_TIMEOUT  # a whole connection: read, wait for the op, answer


@dataclass
class Op:
    kind: str  # screenshot | click | key | text
    args: dict[str, Any] = field(default_factory=dict)
    result: Future[Any] = field(default_factory=Future)


class _ViewHTTPServer(BoundedHTTPServer):
    name = "view"
    max_connections = MAX_CONNECTIONS
    read_timeout = READ_TIMEOUT
    deadline = DEADLINE


class ViewServer:
    def __init__(
        self,
        request: ViewRequest,
        runtime_dir: Path | None = None,
        idle_timeout: float = 600.0,
    ) -> None:
        """Binds 127.0.0.1:``request.port`` (0: a free port). ``runtime_dir``: where the
        command reads the answer (tests may leave it out)."""
        self.request = request
        self.runtime_dir = runtime_dir
        self.idle_timeout = idle_timeout
        self.ops: queue.Queue[Op] = queue.Queue()
        self.done = threading.Event()  # the person pressed "Done"
        self.clicks = 0
        self.keys = 0
        self.last_input = time.monotonic()
        self._token_used = False
        self._cookie: str | None = None
        self._lock = threading.Lock()
        server = self
        handler = type("Handler", (_Handler,), {"view": server})
        try:
            self.httpd = _ViewHTTPServer(("127.0.0.1", request.port), handler)
        except OSError as exc:
            self._answer(
                error=f"cannot listen on 127.0.0.1:{request.port}: {exc.strerror or exc}"
                + (
                    " (another program holds it: leave --port out, and the daemon picks a "
                    "free port)"
                    if request.port
                    else ""
                )
            )
            raise
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="view", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # Only now may the command print the token: the answer names this very socket.
        self._answer(port=self.port, inode=listening_inode(self.httpd))
        log.info("%s: a person may view the page on 127.0.0.1:%d", *self._where())

    def ended(self) -> bool:
        """Done was pressed, or nobody clicked or typed for ``idle_timeout``."""
        return self.done.is_set() or self.idle_for() > self.idle_timeout

    def idle_for(self) -> float:
        return time.monotonic() - self.last_input

    def stop(self) -> None:
        if self.done.is_set():
            why = "the person pressed Done"
        elif self.idle_for() > self.idle_timeout:
            why = (
                f"no click or key for {format_duration(self.idle_timeout)} (view.idle_timeout): "
                "the keep-alive has the page again; run colab-gateway view again to go on"
            )
            log.warning("%s: %s", self.request.session, why)
        else:
            why = "the view was ended"
        self.httpd.stop()
        # Whoever still waits for an op learns that the view ended.
        while True:
            try:
                op = self.ops.get_nowait()
            except queue.Empty:
                break
            op.result.set_exception(RuntimeError("the view ended"))
        if self.runtime_dir is not None and view_request.read(self.runtime_dir) == self.request:
            self._answer(port=self.port, ended=why)  # the command still waits: tell it why

    def _answer(self, **fields: Any) -> None:
        if self.runtime_dir is not None:
            try:
                view_request.answer(
                    self.runtime_dir, ViewAnswer(self.request.token_sha256, **fields)
                )
            except OSError as exc:
                log.warning("cannot answer colab-gateway view in %s: %s", self.runtime_dir, exc)

    def _where(self) -> tuple[str, int]:
        return self.request.session, self.port

    # -- what the handler asks -------------------------------------------------------------

    def exchange(self, token: str) -> str | None:
        """The session cookie for the right, unused token; None otherwise."""
        with self._lock:
            right = hmac.compare_digest(token_hash(token), self.request.token_sha256)
            if not right or self._token_used:
                return None
            self._token_used = True
            self._cookie = secrets.token_urlsafe(32)
            self.last_input = time.monotonic()
            return self._cookie

    def authorised(self, cookie: str | None) -> bool:
        with self._lock:
            return bool(self._cookie and cookie and hmac.compare_digest(cookie, self._cookie))

    def run(self, kind: str, **args: Any) -> Any:
        if kind != "screenshot":  # the page's refresh is not a person doing something
            self.last_input = time.monotonic()
        op = Op(kind, args)
        self.ops.put(op)
        return op.result.result(timeout=OP_TIMEOUT)


class _Handler(BaseHTTPRequestHandler):
    view: ViewServer
    server_version = "colab-gateway-view"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("view: " + format, *args)  # never the token: the query is not logged

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("view: %s %s", self.command, code)

    # -- checks ----------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").lower()
        port = self.view.port
        return host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}")

    def _cookie(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
        return None

    def _refuse(self, code: int, why: str) -> None:
        body = f"{code}: {why}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send(self, code: int, body: bytes, kind: str, **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_ok():
            return self._refuse(403, "open it as http://127.0.0.1:PORT/ (through ssh -L)")
        url = urlsplit(self.path)
        token = parse_qs(url.query).get("token", [""])[0]
        if url.path == "/" and token:
            cookie = self.view.exchange(token)
            if cookie is None:
                return self._refuse(
                    403, "wrong or already used token: run colab-gateway view again"
                )
            # Set the cookie and drop the token from the address bar (and the history).
            return self._send(
                303,
                b"",
                "text/plain",
                Location="/",
                Set_Cookie=f"{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/",
            )
        if not self.view.authorised(self._cookie()):
            return self._refuse(
                403, "open the address with ?token=... that colab-gateway view printed"
            )
        if url.path == "/":
            page = PAGE.replace("{{SESSION}}", self.view.request.session)
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        if url.path == "/screenshot.png":
            try:
                png = self.view.run("screenshot")
            except Exception as exc:
                return self._refuse(503, f"no screenshot: {exc}")
            return self._send(200, png, "image/png")
        return self._refuse(404, "not here")

    def do_POST(self) -> None:
        if not self._host_ok():
            return self._refuse(403, "open it as http://127.0.0.1:PORT/ (through ssh -L)")
        if not self.view.authorised(self._cookie()) or self.headers.get(ACTION_HEADER) != "1":
            return self._refuse(403, "not allowed")
        length = min(int(self.headers.get("Content-Length") or 0), 65536)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            path = urlsplit(self.path).path
            if path == "/click":
                self.view.run("click", x=float(body["x"]), y=float(body["y"]))
                self.view.clicks += 1
            elif path == "/key":
                self.view.run("key", key=str(body["key"])[:32])
                self.view.keys += 1
            elif path == "/text":
                self.view.run("text", text=str(body["text"])[:2000])
                self.view.keys += 1
            elif path == "/done":
                self.view.done.set()
            else:
                return self._refuse(404, "not here")
        except (ValueError, KeyError, TypeError) as exc:
            return self._refuse(400, f"bad request: {exc}")
        except Exception as exc:  # the browser could not do it (page navigating, ...)
            return self._refuse(503, f"the browser could not: {exc}")
        return self._send(200, b'{"ok": true}', "application/json")


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>colab-gateway view: {{SESSION}}</title>
<style>
 body { font-family: sans-serif; margin: 0; background: #202124; color: #e8eaed; }
 header { display: flex; gap: 12px; align-items: center; padding: 8px 12px; }
 header b { white-space: nowrap; }
 img { display: block; max-width: 100%; cursor: crosshair; outline: 1px solid #5f6368; }
 button, input { font-size: 14px; }
 #status { color: #9aa0a6; flex: 1; }
</style></head>
<body>
<header>
 <b>colab-gateway view: session {{SESSION}}</b>
 <span id="status">the keep-alive is paused while you are here</span>
 <input id="text" placeholder="type text, then Enter" size="28">
 <button id="done">Done: give the page back</button>
</header>
<img id="shot" alt="the headless browser's page" src="/screenshot.png">
<script>
const shot = document.getElementById('shot'), status = document.getElementById('status');
const post = (path, body) => fetch(path, {method: 'POST', headers: {'X-Colab-Gateway': '1',
  'Content-Type': 'application/json'}, body: JSON.stringify(body)}).then(r => {
  status.textContent = r.ok ? path.slice(1) + ' sent' : 'refused (' + r.status + ')'; });
let busy = false;
function refresh() {
  if (busy) return; busy = true;
  const next = new Image();
  next.onload = () => { shot.src = next.src; busy = false; };
  next.onerror = () => { status.textContent = 'no screenshot (view ended?)'; busy = false; };
  next.src = '/screenshot.png?t=' + Date.now();
}
setInterval(refresh, 1000);
shot.addEventListener('click', (e) => {
  const r = shot.getBoundingClientRect();
  const x = (e.clientX - r.left) * shot.naturalWidth / r.width;
  const y = (e.clientY - r.top) * shot.naturalHeight / r.height;
  post('/click', {x, y}).then(refresh);
});
const text = document.getElementById('text');
text.addEventListener('keydown', (e) => {
  if (e.key !== 'Enter') return;
  post('/text', {text: text.value}).then(() => post('/key', {key: 'Enter'})).then(refresh);
  text.value = '';
});
document.addEventListener('keydown', (e) => {
  if (e.target === text) return;
  const special = ['Enter', 'Tab', 'Escape', 'Backspace', 'ArrowUp', 'ArrowDown',
                   'ArrowLeft', 'ArrowRight', ' '];
  if (special.includes(e.key)) { e.preventDefault(); post('/key', {key: e.key}).then(refresh); }
  else if (e.key.length === 1) { e.preventDefault(); post('/text', {text: e.key}); }
});
document.getElementById('done').addEventListener('click', () => post('/done', {}).then(() => {
  status.textContent = 'done: the keep-alive has the page again'; }));
</script>
</body></html>
"""
