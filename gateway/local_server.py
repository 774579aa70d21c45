"""A bounded threading server for the daemon's local HTTP ports (the view, /metrics).

Other local users reach these ports too, and an idle connection costs the daemon a thread
and a file descriptor: without bounds, a few hundred of them exhausted the daemon's
descriptors and the tunnel endpoint stopped answering. So each server here

- serves at most ``max_connections`` connections at once; one more is closed as soon as it
  is accepted (no thread, no read), so a flood costs an accept and a close each;
- gives each connection ``read_timeout`` per read and ``deadline`` in all (a client that
  trickles a byte at a time is cut at the deadline);
- on ``stop()`` closes the connections still open and waits for their threads;
- logs errors and refusals at most once a minute, counted, never a traceback per
  connection.

The standard library's servers (``http.server``, ``wsgiref``) do the HTTP; this mixin only
decides who gets a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import HTTPServer
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from gateway.untrusted import untrusted

log = logging.getLogger(__name__)

LOG_EVERY = 60.0  # seconds between two lines about the same kind of trouble
STOP_JOIN = 5.0  # how long stop() waits for the connections' threads


@dataclass
class RateLimitedLog:
    """One line per ``every`` seconds for a kind of trouble, with how often it happened."""

    logger: logging.Logger
    every: float = LOG_EVERY
    _last: dict[str, float] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._count[kind] = self._count.get(kind, 0) + 1
            last = self._last.get(kind)
            if last is not None and now - last < self.every:
                return
            count, self._count[kind] = self._count[kind], 0
            self._last[kind] = now
        if last is None or count <= 1:
            self.logger.warning("%s", message)
        else:
            self.logger.warning("%s (%d times in the last %.0fs)", message, count, now - last)


@dataclass
class _Connection:
    sock: socket.socket
    opened: float
    thread: threading.Thread | None = None


class BoundedMixin:
    """Put before a ``socketserver.TCPServer`` subclass (``HTTPServer``, ``WSGIServer``)."""

    name = "local server"  # for the log: "view", "metrics"
    max_connections = 16
    read_timeout = 10.0
    deadline = 60.0
    # Not SO_REUSEPORT (never): a second listener on the port would share its clients.
    allow_reuse_port = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: dict[socket.socket, _Connection] = {}
        self._open_lock = threading.Lock()
        self._closing = False
        self.trouble = RateLimitedLog(logging.getLogger(f"gateway.{self.name}"))
        self.refused = 0  # connections closed at once because the cap was reached
        super().__init__(*args, **kwargs)

    # -- socketserver's hooks --------------------------------------------------------------

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._open_lock:
            admitted = not self._closing and len(self._open) < self.max_connections
            if admitted:
                self._open[request] = _Connection(request, time.monotonic())
            else:
                self.refused += 1
        if not admitted:
            self.trouble.warning(
                "cap",
                f"{self.name}: {self.max_connections} connections open, the most it serves: "
                "closed a new one at once",
            )
        return admitted

    def process_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.read_timeout)
        thread = threading.Thread(
            target=self._serve_one,
            args=(request, client_address),
            name=f"{self.name}-connection",
            daemon=True,
        )
        with self._open_lock:
            connection = self._open.get(request)
            if connection is not None:
                connection.thread = thread
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]
            with self._open_lock:
                self._open.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        kind = type(exc).__name__ if exc is not None else "error"
        self.trouble.warning(
            kind, f"{self.name}: a connection failed: {kind}: {untrusted(str(exc), 120)}"
        )

    def service_actions(self) -> None:
        """Called by serve_forever() between two polls: cut connections past the deadline."""
        now = time.monotonic()
        with self._open_lock:
            late = [c.sock for c in self._open.values() if now - c.opened > self.deadline]
        for sock in late:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes its thread's read; it then closes

    # -- for the owner ---------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        with self._open_lock:
            return len(self._open)

    def stop(self) -> None:
        """Stop accepting, close what is open, and wait (a little) for the threads."""
        with self._open_lock:
            self._closing = True
        self.shutdown()  # type: ignore[attr-defined]
        self.server_close()  # type: ignore[attr-defined]
        with self._open_lock:
            connections = list(self._open.values())
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + STOP_JOIN
        for connection in connections:
            if connection.thread is not None:
                connection.thread.join(max(0.0, deadline - time.monotonic()))
        if left := self.open_connections:
            log.warning("%s: %d connections still open after stop", self.name, left)


class BoundedHTTPServer(BoundedMixin, HTTPServer):
    """``http.server``'s server, bounded (the view)."""


class BoundedWSGIServer(BoundedMixin, WSGIServer):
    """``wsgiref``'s server, bounded (prometheus_client's WSGI app for /metrics)."""


class QuietWSGIRequestHandler(WSGIRequestHandler):
    """Scrapes are not worth a log line each; failures reach the server's rate-limited log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def listening_inode(server: socketserver.TCPServer) -> int:
    """The inode of the server's listening socket, as /proc/net/tcp shows it."""
    return os.fstat(server.socket.fileno()).st_ino
