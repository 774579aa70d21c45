"""A simulated Colab notebook page, served on 127.0.0.1, driven from Python.

The page (``notebook.html``) reproduces the structures of Colab that the keep-alive
touches: ``colab-connect-button`` with a shadowRoot ``#connect`` whose ``tooltiptext`` tells
the connection state, ``md-dialog[open]`` with ``[slot=primaryAction]`` buttons,
``colab-recaptcha-dialog`` with nested shadow roots, cells with ``colab-run-button``, a
``beforeunload`` guard and a redirect to a sign-in page. The scenario lives here, in the
server; the page follows it by long-polling ``/api/state`` and posts back every click, key
and render it sees (with its own clock) to ``/api/event``. Tests assert what the PAGE
recorded, not what the automation believes it did.

API::

    sim = SimColab(connect_delay=0.3, gpu=True, variant="")
    sim.start()                 # binds 127.0.0.1 on a free port
    sim.url                     # the notebook's address (http://127.0.0.1:PORT/notebook)
    sim.url_of("no_editor")     # the same notebook in another markup variant
    # scenario controls (each takes effect on the page within ~50 ms)
    sim.disconnect(dialog=True) # the runtime drops; with the "Runtime disconnected" dialog
    sim.show_dialog("still_there")          # or "runtime_disconnected", "gpu_limit", ...
    sim.show_recaptcha(times=1)             # times=None: comes back after every dismissal
    sim.hide_recaptcha()                    # a person answered it
    sim.set_gpu_limit(True)     # connecting with GPU shows the usage-limit dialog
    sim.set_too_many_sessions(True)
    sim.set_run_anyway(True)    # running a cell first asks "Run anyway"
    sim.set_leave_guard(True)   # unloading the page raises a "Leave site?" prompt
    sim.reset_vm()              # Colab swaps the VM under a connected runtime
    sim.sign_out() / sim.sign_in()
    sim.fail_loads(n)           # the next n page loads get an answer that is not HTTP
    sim.hang_page()             # the page's JavaScript spins forever (once)
    # what happened
    sim.events(type="click")    # list of dicts as the page posted them; "t" = page ms epoch
    sim.wait_for(lambda s: ..., timeout=5)  # bounded wait on the event list / state
    sim.runtime, sim.vm_id, sim.gpu, sim.runs
    # hooks the demo sets (called in a server thread)
    sim.on_connect = lambda vm_id: ...
    sim.on_run_cell = lambda kind: ...      # "first" | "all"
    sim.on_reset = lambda: ...
    sim.stop()

Markup variants (``variant=`` or ``?variant=a,b`` on the URL; the query wins), for the
markup drift real Colab goes through (see ``VARIANTS``): ``no_editor`` (cells whose editor
is a CodeMirror-style ``.cm-content``), ``monaco`` (Monaco's structure: a container
``div.inputarea`` holding a 1-pixel ``textarea.inputarea``), ``no_run_button``,
``renamed_connect`` (``colab-runtime-button``), ``dialog_buttons`` (``gm-text-button``),
``dialog_element`` (``colab-dialog``). Every variant still works for a person: keys and
clicks in a cell run it.

Event types the page posts: ``load`` (url, ua, variant), ``click`` (target: connect |
dialog | recaptcha | run_button, button, cell, trusted), ``key`` (key, ctrl, cell),
``pointer`` (trusted clicks),
``shown`` (what: disconnected | connected | dialog | recaptcha | vm_id), ``beforeunload``.
The server adds ``action`` events for what it did with them (``connect_while_connected``
flags a click on Connect while already connected, which real Colab answers by opening the
resources panel).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

_DIALOGS: dict[str, dict[str, Any]] = {
    "runtime_disconnected": {
        "title": "Runtime disconnected",
        "text": "Your runtime has been disconnected due to inactivity or reaching its maximum "
        "duration.",
        "buttons": [
            {"text": "Close", "slot": "secondaryAction", "action": "close"},
            {"text": "Reconnect", "slot": "primaryAction", "action": "connect"},
        ],
    },
    "still_there": {
        "title": "Are you still there?",
        "text": "Your runtime will be disconnected soon unless you confirm you are still here.",
        "buttons": [{"text": "Yes, I'm here", "slot": "primaryAction", "action": "close"}],
    },
    "gpu_limit": {
        "title": "Cannot connect to GPU backend",
        "text": "You cannot currently connect to a GPU due to usage limits in Colab.",
        "buttons": [
            {"text": "Close", "slot": "secondaryAction", "action": "close"},
            {"text": "Connect without GPU", "slot": "primaryAction", "action": "connect_cpu"},
        ],
    },
    "too_many_sessions": {
        "title": "Too many sessions",
        "text": "You have too many active sessions. Terminate other sessions to continue.",
        "buttons": [
            {"text": "Cancel", "slot": "secondaryAction", "action": "close"},
            {"text": "Manage sessions", "slot": "primaryAction", "action": "close"},
        ],
    },
    # a dialog the keep-alive does not know: it stays open (until the next reload)
    "notice": {
        "title": "Colab has a new feature",
        "text": "Try the new editor settings.",
        "buttons": [
            {"text": "Later", "slot": "secondaryAction", "action": "close"},
            {"text": "OK", "slot": "primaryAction", "action": "close"},
        ],
    },
    "run_anyway": {
        "title": "Warning: This notebook was not authored by Google",
        "text": "This notebook is requesting access to your runtime. Review the code.",
        "buttons": [
            {"text": "Cancel", "slot": "secondaryAction", "action": "close"},
            {"text": "Run anyway", "slot": "primaryAction", "action": "run_pending"},
        ],
    },
}

# Each variant changes one structure the keep-alive depends on, the way Colab's releases do.
VARIANTS: dict[str, str] = {
    "no_editor": "cells have a CodeMirror-style .cm-content editor, no textarea",
    "monaco": "cells have Monaco's markup: div.inputarea > ... > textarea.inputarea (1 px)",
    "no_run_button": "cells have no colab-run-button",
    "renamed_connect": "the toolbar's connect button is colab-runtime-button",
    "dialog_buttons": "dialog buttons are gm-text-button",
    "dialog_element": "dialogs are colab-dialog[open], not md-dialog",
}

_CELL_CODE = ("#@title Bootstrap: start the tunnel", 'print("second cell")')


def _cell_html(index: int, code: str, features: frozenset[str]) -> str:
    run = "" if "no_run_button" in features else "<colab-run-button></colab-run-button>"
    if "no_editor" in features:
        editor = (
            f'<div class="editor"><div class="cm-content" contenteditable="true">{code}</div></div>'
        )
    elif "monaco" in features:
        editor = (
            '<div class="codecell-input-output"><div class="inputarea horizontal layout code">'
            '<div class="editor flex monaco"><div class="monaco-editor">'
            '<div class="overflow-guard">'
            '<textarea class="inputarea monaco-mouse-cursor-text" wrap="off" autocorrect="off" '
            'aria-label="Editor content"></textarea>'
            f'<div class="view-lines"><div class="view-line">{code}</div></div>'
            "</div></div></div></div></div>"
        )
    else:
        editor = f'<div class="editor"><textarea class="inputarea">{code}</textarea></div>'
    return f'  <div class="cell code" data-index="{index}">\n    {run}\n    {editor}\n  </div>'


def parse_variant(text: str) -> frozenset[str]:
    """``"a,b"`` → its features; an unknown name is an error naming the known ones."""
    features = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(features - set(VARIANTS))
    if unknown:
        raise ValueError(
            f"unknown sim page variant {', '.join(unknown)!s}; known: {', '.join(VARIANTS)}"
        )
    return features


def render_page(template: bytes, features: frozenset[str]) -> bytes:
    renamed = "renamed_connect" in features
    connect_tag = "colab-runtime-button" if renamed else "colab-connect-button"
    page = {
        "name": ",".join(sorted(features)),
        "connect_tag": connect_tag,
        "dialog_tag": "colab-dialog" if "dialog_element" in features else "md-dialog",
        "dialog_button_tag": "gm-text-button" if "dialog_buttons" in features else "md-text-button",
    }
    cells = "\n".join(_cell_html(i, code, features) for i, code in enumerate(_CELL_CODE))
    text = template.decode()
    text = text.replace("<!--CONNECT-->", f"<{connect_tag}></{connect_tag}>")
    text = text.replace("<!--CELLS-->", cells)
    text = text.replace("/*VARIANT*/{}", json.dumps(page))
    return text.encode()


SIGN_IN_PAGE = b"""<!DOCTYPE html><html><head><meta charset="utf-8">
<title>Sign in - Google Accounts</title></head>
<body><h1>Sign in</h1><p>Sign in to continue to Colaboratory</p>
<div id="sign-in-overlay"><input type="email" placeholder="Email or phone"></div>
<script>fetch('/api/event', {method: 'POST', body: JSON.stringify({type: 'load',
 url: location.href, t: Date.now()})});</script></body></html>"""


class SimColab:
    def __init__(
        self,
        *,
        connect_delay: float = 0.3,
        gpu: bool = False,
        run_time: float = 1.0,
        variant: str = "",
    ):
        self.connect_delay = connect_delay
        self.variant = parse_variant(variant)
        self.gpu_wanted = gpu
        self.run_time = run_time
        self.on_connect: Callable[[str], None] | None = None
        self.on_run_cell: Callable[[str], None] | None = None
        self.on_reset: Callable[[], None] | None = None
        self._cond = threading.Condition()
        self._version = 0
        self._vm_counter = itertools.count(1)
        self._dialog_ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self._timers: list[threading.Timer] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._failing_loads = 0
        self._hang = False
        self.runs: list[str] = []
        # the scenario the page renders
        self.runtime = "fresh"  # fresh | connecting | connected | disconnected
        self.gpu = False
        self.vm_id: str | None = None
        self._new_vm_on_connect = True
        self.busy = False
        self.running: str | None = None
        self.dialog: dict[str, Any] | None = None
        self.recaptcha = False
        self._recaptcha_left: int | None = 0
        self._recaptcha_generation = 0
        self.gpu_limit = False
        self.too_many_sessions = False
        self.run_anyway = False
        self._run_anyway_accepted = False
        self._pending_run: str | None = None
        self.leave_guard = False
        self.signed_out = False
        self._page = resources.files("gateway.sim").joinpath("notebook.html").read_bytes()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> SimColab:
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sim-colab", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            for timer in self._timers:
                timer.cancel()
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimColab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "SimColab.start() first"
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/notebook"

    def url_of(self, variant: str) -> str:
        """The notebook in markup ``variant`` (comma-separated names of ``VARIANTS``)."""
        parse_variant(variant)
        return f"{self.url}?variant={variant}"

    def page_for(self, query: str) -> bytes:
        """The page for a request's query string (``?variant=`` wins over ``self.variant``)."""
        asked = parse_qs(query).get("variant")
        features = parse_variant(asked[0]) if asked else self.variant
        return render_page(self._page, features)

    # -- scenario controls --------------------------------------------------------------------

    def disconnect(self, *, dialog: bool = True, new_vm: bool = True) -> None:
        """The runtime drops (idle timeout); Colab shows "Runtime disconnected"."""
        with self._changing():
            self.runtime = "disconnected"
            self.busy = False
            self.running = None
            self._new_vm_on_connect = new_vm
            self.dialog = self._dialog("runtime_disconnected") if dialog else None
            self._record({"type": "action", "action": "disconnect"})

    def show_dialog(self, kind: str) -> None:
        with self._changing():
            self.dialog = self._dialog(kind)

    def close_dialog(self) -> None:
        with self._changing():
            self.dialog = None

    def show_recaptcha(self, times: int | None = 1) -> None:
        """Show the prompt; it comes back ``times - 1`` more times (None: forever)."""
        with self._changing():
            self.recaptcha = True
            self._recaptcha_left = None if times is None else times - 1

    def hide_recaptcha(self) -> None:
        """A person answered the prompt: it goes away and stays away."""
        with self._changing():
            self.recaptcha = False
            self._recaptcha_left = 0
            self._recaptcha_generation += 1

    def set_gpu_limit(self, on: bool = True) -> None:
        with self._changing():
            self.gpu_limit = on

    def set_too_many_sessions(self, on: bool = True) -> None:
        with self._changing():
            self.too_many_sessions = on

    def set_run_anyway(self, on: bool = True) -> None:
        with self._changing():
            self.run_anyway = on
            self._run_anyway_accepted = False

    def set_leave_guard(self, on: bool = True) -> None:
        with self._changing():
            self.leave_guard = on

    def set_busy(self, on: bool = True) -> None:
        with self._changing():
            self.busy = on

    def reset_vm(self) -> None:
        """Colab replaces the VM under a connected runtime (files and processes are gone)."""
        with self._changing():
            self.vm_id = self._next_vm()
            self.running = None
            self.busy = False
            self._record({"type": "action", "action": "reset_vm", "vm_id": self.vm_id})
        self._hook(self.on_reset)

    def sign_out(self) -> None:
        with self._changing():
            self.signed_out = True
            self._record({"type": "action", "action": "sign_out"})

    def sign_in(self) -> None:
        with self._changing():
            self.signed_out = False

    def hang_page(self) -> None:
        """The page's JavaScript spins forever once (a hung renderer)."""
        with self._changing():
            self._hang = True

    def fail_loads(self, count: int) -> None:
        with self._cond:
            self._failing_loads = count

    # -- what happened ------------------------------------------------------------------------

    def events(self, type: str | None = None, **match: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [
                dict(e)
                for e in self._events
                if (type is None or e.get("type") == type)
                and all(e.get(k) == v for k, v in match.items())
            ]

    def count(self, type: str | None = None, **match: Any) -> int:
        return len(self.events(type, **match))

    def wait_for(
        self, predicate: Callable[[SimColab], Any], timeout: float = 10.0, what: str = ""
    ) -> Any:
        """Wait (bounded) until ``predicate(self)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"sim: {what or 'condition'} not met within {timeout}s; "
                        f"runtime={self.runtime} dialog={self.dialog and self.dialog['kind']} "
                        f"last events={self._events[-8:]}"
                    )
                self._cond.wait(min(left, 0.2))

    # -- internals ----------------------------------------------------------------------------

    class _Changing:
        def __init__(self, sim: SimColab) -> None:
            self.sim = sim

        def __enter__(self) -> None:
            self.sim._cond.acquire()

        def __exit__(self, *exc: object) -> None:
            self.sim._version += 1
            self.sim._cond.notify_all()
            self.sim._cond.release()

    def _changing(self) -> SimColab._Changing:
        return SimColab._Changing(self)

    def _next_vm(self) -> str:
        return f"sim-vm-{next(self._vm_counter)}"

    def _dialog(self, kind: str) -> dict[str, Any]:
        if kind not in _DIALOGS:
            raise ValueError(f"unknown dialog {kind!r}; known: {', '.join(_DIALOGS)}")
        return {"id": next(self._dialog_ids), "kind": kind, **_DIALOGS[kind]}

    def _record(self, event: dict[str, Any]) -> None:
        event.setdefault("server_t", time.time())
        self._events.append(event)
        self._cond.notify_all()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        timer = threading.Timer(delay, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _hook(self, hook: Callable[..., None] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            log.exception("sim hook %r failed", hook)

    def state_json(self) -> dict[str, Any]:
        return {
            "v": self._version,
            "runtime": self.runtime,
            "gpu": self.gpu,
            "vm_id": self.vm_id if self.runtime in ("connected",) else None,
            "busy": self.busy or self.running is not None,
            "running": self.running,
            "dialog": self.dialog,
            "recaptcha": self.recaptcha,
            "leave_guard": self.leave_guard,
            "signed_out": self.signed_out,
            "hang": self._hang,
        }

    def _wait_state(self, since: int, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._version == since and self._server is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            state = self.state_json()
            self._hang = False  # one page hangs, not the next one
            return state

    def _page_event(self, event: dict[str, Any]) -> None:
        with self._cond:
            self._record(event)

    def _page_action(self, body: dict[str, Any]) -> None:
        action = body.get("action")
        after: list[Callable[[], None]] = []
        with self._changing():
            if action == "connect":
                after += self._connect(gpu=self.gpu_wanted)
            elif action == "dialog":
                if self.dialog is None or self.dialog["id"] != body.get("dialog_id"):
                    self._record({"type": "action", "action": "stale_dialog_click"})
                    return
                choice = body.get("button")
                kind = self.dialog["kind"]
                self.dialog = None
                self._record({"type": "action", "action": f"dialog_{kind}_{choice}"})
                if choice == "connect":
                    after += self._connect(gpu=self.gpu_wanted)
                elif choice == "connect_cpu":
                    after += self._connect(gpu=False)
                elif choice == "run_pending" and self._pending_run:
                    self._run_anyway_accepted = True
                    after += self._run(self._pending_run)
            elif action == "recaptcha_dismiss":
                self.recaptcha = False
                self._record({"type": "action", "action": "recaptcha_dismissed"})
                left = self._recaptcha_left
                if left is None or left > 0:
                    self._recaptcha_left = None if left is None else left - 1
                    generation = self._recaptcha_generation
                    self._later(0.3, lambda: self._reshow_recaptcha(generation))
            elif action == "run":
                kind = str(body.get("kind"))
                if self.runtime != "connected":
                    self._record({"type": "action", "action": "run_while_disconnected"})
                elif self.run_anyway and not self._run_anyway_accepted:
                    self._pending_run = kind
                    self.dialog = self._dialog("run_anyway")
                else:
                    after += self._run(kind)
        for fn in after:
            fn()

    def _reshow_recaptcha(self, generation: int) -> None:
        with self._changing():
            if generation == self._recaptcha_generation:
                self.recaptcha = True

    def _connect(self, gpu: bool) -> list[Callable[[], None]]:
        if self.runtime in ("connected", "connecting"):
            self._record({"type": "action", "action": f"connect_while_{self.runtime}"})
            return []
        if self.too_many_sessions:
            self.dialog = self._dialog("too_many_sessions")
            return []
        if gpu and self.gpu_limit:
            self.dialog = self._dialog("gpu_limit")
            return []
        self.runtime = "connecting"
        self._record({"type": "action", "action": "connecting"})
        self._later(self.connect_delay, lambda: self._connected(gpu))
        return []

    def _connected(self, gpu: bool) -> None:
        with self._changing():
            if self.runtime != "connecting":
                return
            self.runtime = "connected"
            self.gpu = gpu
            if self._new_vm_on_connect or self.vm_id is None:
                self.vm_id = self._next_vm()
            self._new_vm_on_connect = False
            vm_id = self.vm_id
            self._record({"type": "action", "action": "connected", "vm_id": vm_id, "gpu": gpu})
        self._hook(self.on_connect, vm_id)

    def _run(self, kind: str) -> list[Callable[[], None]]:
        self.running = kind
        self.runs.append(kind)
        self._record({"type": "action", "action": "run", "kind": kind})
        self._later(self.run_time, self._run_done)
        return [lambda: self._hook(self.on_run_cell, kind)]

    def _run_done(self) -> None:
        with self._changing():
            self.running = None

    def _take_failing_load(self) -> bool:
        with self._cond:
            if self._failing_loads > 0:
                self._failing_loads -= 1
                return True
            return False


def _make_handler(sim: SimColab) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("sim: " + format, *args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the page went away (reload, browser killed)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/api/state":
                since = int(parse_qs(url.query).get("v", ["-1"])[0])
                self._send(200, json.dumps(sim._wait_state(since)).encode())
            elif url.path in ("/notebook", "/"):
                if sim._take_failing_load():
                    # Not HTTP at all: Chromium shows its own error page (an empty answer
                    # would be retried by Chromium's network stack by itself).
                    self.close_connection = True
                    self.wfile.write(b"this is not HTTP\r\n\r\n")
                    return
                if sim.signed_out:
                    self.send_response(302)
                    self.send_header("Location", "/ServiceLogin?continue=/notebook")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    page = sim.page_for(url.query)
                except ValueError as exc:
                    self._send(400, json.dumps({"error": str(exc)}).encode())
                    return
                self._send(200, page, "text/html; charset=utf-8")
            elif url.path == "/ServiceLogin":
                self._send(200, SIGN_IN_PAGE, "text/html; charset=utf-8")
            elif url.path == "/favicon.ico":
                self._send(204, b"")
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, b'{"error": "bad json"}')
                return
            if not isinstance(body, dict):
                self._send(400, b'{"error": "expected an object"}')
                return
            if self.path == "/api/event":
                sim._page_event(body)
            elif self.path == "/api/action":
                sim._page_event({"type": "action_request", **body})
                sim._page_action(body)
            else:
                self._send(404, b'{"error": "not found"}')
                return
            self._send(200, b"{}")

    return Handler
