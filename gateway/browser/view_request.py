"""How ``colab-gateway view`` asks the running daemon to show a session's page.

The command is another process, so it leaves a request in the runtime directory (like
``colab-gateway login``'s pause flag): the session, the loopback port, and the SHA-256 of
the one-time token, never the token itself. The browser component serves the page while
the request is there and its writer lives; removing the file gives the page back to the
keep-alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.atomic import atomic_write

REQUEST_FILE = "view-request.json"


@dataclass(frozen=True)
class ViewRequest:
    session: str
    port: int
    token_sha256: str
    pid: int
    created: float


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def path(runtime_dir: Path) -> Path:
    return runtime_dir / REQUEST_FILE


def write(runtime_dir: Path, session: str, port: int, token: str) -> ViewRequest:
    request = ViewRequest(session, port, token_hash(token), os.getpid(), time.time())
    atomic_write(path(runtime_dir), json.dumps(asdict(request)), mode=0o600)
    return request


def read(runtime_dir: Path) -> ViewRequest | None:
    """The pending request, if its writer still runs (a killed command leaves no view)."""
    try:
        raw = json.loads(path(runtime_dir).read_text())
        request = ViewRequest(
            str(raw["session"]),
            int(raw["port"]),
            str(raw["token_sha256"]),
            int(raw["pid"]),
            float(raw["created"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(request.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's: the runtime directory is the service user's anyway
    return request


def remove(runtime_dir: Path, request: ViewRequest | None = None) -> None:
    """Remove the request (only ``request``, if given: not a newer one)."""
    if request is not None and read(runtime_dir) != request:
        return
    with contextlib.suppress(FileNotFoundError):
        path(runtime_dir).unlink()
