"""Sends pings from its own thread, so that a slow or dead ping service never holds up
the daemon: the caller only queues, and an old ping still queued gives way to a new one."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import requests

from gateway import __version__

log = logging.getLogger("gateway.heartbeat")

Kind = Literal["start", "success", "fail"]
BACKLOG = 4  # pings waiting while the service is slow; older ones are dropped


@dataclass(frozen=True)
class Ping:
    kind: Kind
    reason: str = ""  # one line, already redacted


def is_uptime_kuma(url: str) -> bool:
    return "/api/push/" in urlsplit(url).path


def request_for(url: str, ping: Ping) -> tuple[str, str, dict[str, str], bytes]:
    """Method, URL, query and body of ``ping``, for healthchecks.io or Uptime Kuma."""
    if is_uptime_kuma(url):
        # Push monitors know up and down only; "start" says up, with a message.
        status = "down" if ping.kind == "fail" else "up"
        msg = ping.reason or ("starting" if ping.kind == "start" else "OK")
        return "GET", url, {"status": status, "msg": msg}, b""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if ping.kind != "success":
        path += f"/{ping.kind}"
    return "POST", urlunsplit(parts._replace(path=path)), {}, ping.reason.encode()


class Pinger:
    def __init__(
        self, url: str, timeout: float, on_result: Callable[[Ping, str | None], None]
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.on_result = on_result  # (ping, None) or (ping, what went wrong); pinger thread
        self.host = urlsplit(url).hostname or "?"  # the rest of the URL is the secret
        self._queue: queue.Queue[Ping | None] = queue.Queue(BACKLOG)
        self._http = requests.Session()
        self._http.headers["User-Agent"] = f"colab-gateway/{__version__}"
        self._thread = threading.Thread(target=self._work, name="heartbeat", daemon=True)
        self._thread.start()

    def send(self, ping: Ping) -> None:
        """Queue ``ping``; never blocks."""
        while True:
            try:
                self._queue.put_nowait(ping)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()  # the oldest gives way: it is stale anyway

    def close(self) -> None:
        """Stop after the ping in flight, if any; never waits for it (its timeout ends it)."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            # Pings still waiting: drop them all, the stop matters more.
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._queue.put_nowait(None)

    def _work(self) -> None:
        while (ping := self._queue.get()) is not None:
            method, url, params, body = request_for(self.url, ping)
            try:
                answer = self._http.request(
                    method, url, params=params, data=body, timeout=self.timeout
                )
                problem = None if answer.ok else f"{self.host} answered HTTP {answer.status_code}"
            except requests.RequestException as exc:
                problem = f"cannot reach {self.host}: {type(exc).__name__}"
            self.on_result(ping, problem)
        self._http.close()
