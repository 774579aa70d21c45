"""What the checks look at, with every outside source replaceable (tests point them at
fixtures, real child processes and loopback servers)."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Config, LoadedConfig
from gateway.paths import Paths

SERVICE = "colab-gateway"
NETWORK_TIMEOUT = 3.0  # every connection, banner read, name lookup and detection request
DISK_WARN_MB = 500  # below this the screenshots and the Chromium profile soon fill it
DISK_FAIL_MB = 100  # below this Chromium fails to write its profile; atomic writes fail


class Unavailable(Exception):
    """This machine cannot answer the question (no systemd, say); the message says why."""


def systemd_main_pid() -> int | None:
    """The service's main pid from systemd, None when it is not running."""
    if not Path("/run/systemd/system").is_dir():
        raise Unavailable("systemd is not running on this machine")
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise Unavailable("systemctl is not installed")
    try:
        done = subprocess.run(
            [systemctl, "show", "-p", "MainPID", "--value", SERVICE],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"'systemctl show {SERVICE}' did not answer: {exc}") from None
    value = done.stdout.strip()
    if done.returncode != 0 or not value.isdigit():
        raise Unavailable(f"'systemctl show -p MainPID {SERVICE}' said {value or done.stderr!r}")
    return int(value) or None


def resolve_host(name: str, timeout: float = NETWORK_TIMEOUT) -> list[str]:
    """The addresses ``name`` resolves to (raises OSError, or TimeoutError after ``timeout``).

    getaddrinfo has no timeout of its own: it runs in a daemon thread, abandoned if slow
    (an executor's thread would be joined at exit, hanging the command after all).
    """
    answers: queue.Queue[list[str] | OSError] = queue.Queue()

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)
        except OSError as exc:
            answers.put(exc)
            return
        answers.put(sorted({str(info[4][0]) for info in infos}))

    threading.Thread(target=lookup, name=f"resolve {name}", daemon=True).start()
    try:
        answer = answers.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no answer within {timeout:.0f}s") from None
    if isinstance(answer, OSError):
        raise answer
    return answer


@dataclass
class Env:
    paths: Paths
    loaded: LoadedConfig | None = None
    search_path: str = field(default_factory=lambda: os.environ.get("PATH", os.defpath))
    proc_root: Path = Path("/proc")
    main_pid: Callable[[], int | None] = systemd_main_pid
    resolve: Callable[[str], list[str]] = resolve_host
    timeout: float = NETWORK_TIMEOUT
    disk_warn_mb: float = DISK_WARN_MB
    disk_fail_mb: float = DISK_FAIL_MB
    # Answers several checks share, asked once.
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        if self.loaded is None:
            raise RuntimeError("this check needs a valid config")  # the runner skips it before
        return self.loaded.config

    def which(self, program: str) -> str | None:
        return shutil.which(program, path=self.search_path)

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time, its result (or its exception) after that."""
        if key not in self.memo:
            try:
                self.memo[key] = (True, compute())
            except Exception as exc:
                self.memo[key] = (False, exc)
        succeeded, value = self.memo[key]
        if not succeeded:
            raise value
        return value
