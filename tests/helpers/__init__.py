"""What the tests share (tests/conftest.py turns some into fixtures): free_port,
wait_until, FakeClock, NotifySocket, start_daemon. helpers.tunnel, helpers.tmux and
helpers.ddns hold what one component's tests share."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.sim.polling import free_port, wait_until

__all__ = [
    "MINIMAL_CONFIG",
    "REPO",
    "Daemon",
    "FakeClock",
    "NotifySocket",
    "StartDaemon",
    "end_daemons",
    "free_port",
    "start_daemon",
    "wait_for_looks",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]

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


def start_daemon(
    workdir: Path,
    config_text: str = MINIMAL_CONFIG,
    *,
    env: dict[str, str] | None = None,
    config_path: Path | None = None,
    log: Path | None = None,
) -> Daemon:
    """``colab-gateway run`` as a real process, its directories under ``workdir`` (the
    ``start_daemon`` fixture ends it at teardown; ``end_daemons`` does it otherwise)."""
    config = config_path or workdir / "config.yaml"
    if config_path is None:
        config.write_text(config_text)
    state_dir, runtime_dir = workdir / "state", workdir / "run"
    log = log or workdir / "daemon.log"
    full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
    full_env.update({"TMUX_TMPDIR": str(workdir)})
    full_env.update(env or {})
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "-c",
                str(config),
                "--state-dir",
                str(state_dir),
                "--runtime-dir",
                str(runtime_dir),
            ],
            env=full_env,
            # A file, not a pipe: a chatty daemon must never block on a full pipe.
            stderr=log_file,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            # Its own process group, so teardown can end Chromium and ssh children too.
            start_new_session=True,
        )
    return Daemon(proc, config, state_dir, runtime_dir, log)


def end_daemons(daemons: list[Daemon], workdir: Path) -> None:
    """Kill what is still running of ``daemons`` and whatever they left behind."""
    for daemon in daemons:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.proc.pid, signal.SIGKILL)  # whatever it left behind
    if daemons:
        # A config with tmux enabled makes the daemon start a tmux server on this socket
        # directory; it outlives the daemon by design, so end it here.
        subprocess.run(
            ["tmux", "kill-server"],
            env={**os.environ, "TMUX_TMPDIR": str(workdir)},
            capture_output=True,
            timeout=10,
        )


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
