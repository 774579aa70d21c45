"""A phone on the Pi: a local HTTP server taking apprise's ``json://`` posts.

The demo shows what it received (a ``gw-run`` message), the soak counts it, the end-to-end
tests wait on it. It must be started inside the Pi's network namespace (the thread that
makes it has entered it): the daemon reaches it on that loopback.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEPT = 200  # posts remembered (the newest): a 2-hour soak must not grow without bound
BODY_LIMIT = 1 << 20  # of one post; apprise's json:// sends a few KB


class Inbox:
    """``fail_first``: answer the first N posts with HTTP 500 (a service having a bad
    minute: tests of the sender's retries)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.refused = 0
        self.received = 0  # every post taken, also those no longer kept
        self.posts: list[dict[str, Any]] = []  # the newest KEPT: title, message, path...
        self._lock = threading.Lock()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", 0)), BODY_LIMIT)
                try:
                    post = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    post = {}
                if not isinstance(post, dict):
                    post = {}
                with inbox._lock:
                    refuse = inbox.refused < inbox.fail_first
                    if refuse:
                        inbox.refused += 1
                    else:
                        inbox.received += 1
                        inbox.posts = [*inbox.posts, {**post, "path": self.path}][-KEPT:]
                self.send_response(500 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/alerts"

    def titles(self) -> list[str]:
        with self._lock:
            return [str(p.get("title", "")) for p in self.posts]

    def find(self, text: str) -> dict[str, Any] | None:
        """The first kept post whose title contains ``text``."""
        with self._lock:
            return next((p for p in self.posts if text in str(p.get("title", ""))), None)

    def wait_for(self, text: str, timeout: float) -> dict[str, Any] | None:
        """The first post titled with ``text``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while (post := self.find(text)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return post

    def count(self, text: str) -> int:
        return sum(text in title for title in self.titles())

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
