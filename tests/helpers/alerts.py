"""A local HTTP server that takes apprise's ``json://`` posts, as a phone service would.

It can answer the first N posts with HTTP 500 (a service having a bad minute).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Inbox:
    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.posts: list[dict[str, Any]] = []  # accepted messages (title, message, ...)
        self.refused = 0
        self._lock = threading.Lock()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with inbox._lock:
                    refuse = inbox.refused < inbox.fail_first
                    if refuse:
                        inbox.refused += 1
                    else:
                        inbox.posts.append({**body, "path": self.path})
                self.send_response(500 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/alerts"

    def titles(self) -> list[str]:
        with self._lock:
            return [str(p.get("title", "")) for p in self.posts]

    def wait_for(self, text: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first accepted post whose title contains ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for post in self.posts:
                    if text in str(post.get("title", "")):
                        return post
            time.sleep(0.05)
        raise AssertionError(f"no post titled with {text!r} in {timeout}s; got {self.titles()}")

    def count(self, text: str) -> int:
        return sum(text in t for t in self.titles())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
