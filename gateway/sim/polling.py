"""Waiting for something to become true, and finding a free port: for the simulation and
the tests (tests/helpers/__init__.py passes these on), so that each is written once."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` in the calling thread's namespace, found by binding port 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.02
) -> T:
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after
    ``timeout`` seconds. Always looks once more at the deadline, so a slow machine that
    overslept the last interval does not fail a condition that holds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
