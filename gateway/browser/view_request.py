"""How ``colab-gateway view`` asks the running daemon to show a session's page, and how
the daemon answers.

The command is another process, so it leaves a request in the runtime directory (like
``colab-gateway login``'s pause flag): the session, the loopback port it would like (0: any),
and the SHA-256 of the one-time token, never the token itself. The browser component serves
the page while the request is there and its writer lives; removing the file gives the page
back to the keep-alive.

The daemon answers in the same directory (0750: other local users can neither write nor
read there): the port it bound and the inode of its listening socket, or why it could not,
and later why the view ended. The command prints the token only after it found that very
socket listening on that port in /proc/net/tcp: a port another local user bound first
(answering ``/ping`` like the daemon would) never receives the token.
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
ANSWER_FILE = "view-answer.json"


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


# -- the daemon's answer -------------------------------------------------------------------


@dataclass(frozen=True)
class ViewAnswer:
    token_sha256: str  # which request this answers
    port: int = 0  # bound by the daemon on 127.0.0.1; 0 with an error
    inode: int = 0  # of the daemon's listening socket (/proc/net/tcp's last column)
    error: str = ""  # why the daemon cannot serve the view
    ended: str = ""  # why the view ended, once it has


def answer_path(runtime_dir: Path) -> Path:
    return runtime_dir / ANSWER_FILE


def answer(runtime_dir: Path, reply: ViewAnswer) -> None:
    atomic_write(answer_path(runtime_dir), json.dumps(asdict(reply)), mode=0o600)


def read_answer(runtime_dir: Path, request: ViewRequest) -> ViewAnswer | None:
    """The daemon's answer to ``request``; None while there is none (or one for another)."""
    try:
        raw = json.loads(answer_path(runtime_dir).read_text())
        reply = ViewAnswer(
            str(raw["token_sha256"]),
            int(raw["port"]),
            int(raw["inode"]),
            str(raw["error"]),
            str(raw["ended"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return reply if reply.token_sha256 == request.token_sha256 else None


def remove_answer(runtime_dir: Path, request: ViewRequest) -> None:
    if read_answer(runtime_dir, request) is not None:
        with contextlib.suppress(FileNotFoundError):
            answer_path(runtime_dir).unlink()


def listening_inodes(port: int, proc_net: Path = Path("/proc/net/tcp")) -> set[int]:
    """Inodes of the IPv4 sockets listening on ``port``, as the kernel lists them for
    everyone in /proc/net/tcp (an inode names one socket for as long as it lives)."""
    inodes: set[int] = set()
    with proc_net.open() as table:
        next(table, None)  # the header
        for line in table:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(int(fields[9]))
    return inodes
