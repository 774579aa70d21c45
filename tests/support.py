"""Test support shared across test folders (fixtures live in conftest.py)."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.sim.polling import free_port, wait_until

__all__ = ["REPO", "Daemon", "FakeClock", "NotifySocket", "StartDaemon", "free_port", "wait_until"]

REPO = Path(__file__).resolve().parent.parent

# Every component off: tests switch on only what they exercise.
MINIMAL_CONFIG = """\
tunnel: {enabled: false}
browser: {enabled: false}
tmux: {enabled: false}
ddns: {provider: none}
"""


class FakeClock:
    """A clock a test moves by hand: ``clock.now += 5``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket.

    A thread drains it at once, as systemd does: a datagram socket's queue is short, and
    a sender whose messages are not read blocks.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._inbox: queue.Queue[tuple[float, str]] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.split("\n"):
                if line:
                    self._inbox.put((now, line))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()

    def _take(self, timeout: float) -> tuple[float, str] | None:
        try:
            item = self._inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self.messages.append(item)
        return item

    def read(self, duration: float) -> list[str]:
        """Everything received during the next ``duration`` seconds."""
        deadline = time.monotonic() + duration
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            item = self._take(remaining)
            if item:
                got.append(item[1])
        return got

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The first new message starting with ``prefix``; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            item = self._take(remaining)
            if item and item[1].startswith(prefix):
                return item[1]
        seen = [m for _, m in self.messages]
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {seen}")


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    config: Path
    state_dir: Path
    runtime_dir: Path
    log: Path

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text()


StartDaemon = Callable[..., Daemon]


def wait_for_looks(runner: Any, looks: int = 1, timeout: float = 30.0) -> None:
    """Return once the browser keep-alive (a gateway.sim.runner.BrowserRunner's) has taken
    ``looks`` whole looks at its page that began after this call: each look reads the page
    and does what it decided (clicks included) before it counts.

    A test that asserts the keep-alive did *not* click must first let it have its chances:
    a fixed sleep proves nothing when the worker is stalled. A look is the worker's real
    ``_visit``, counted as it starts and as it ends.
    """
    worker = runner.worker()
    counts: dict[str, int] | None = getattr(worker, "_looks_counted", None)
    if counts is None:
        counts = {"started": 0, "finished": 0}
        visit = worker._visit

        def counted(session: Any) -> None:
            counts["started"] += 1
            try:
                visit(session)
            finally:
                counts["finished"] += 1

        worker._visit = counted
        worker._looks_counted = counts
    # Looks run one after the other: the next to start is number started + 1.
    target = counts["started"] + looks
    deadline = time.monotonic() + timeout
    while counts["finished"] < target:
        assert time.monotonic() < deadline, f"{looks} look(s) at the page: not in {timeout}s"
        assert not runner.task.done(), "the browser component stopped"
        time.sleep(0.05)
