"""The daemon's State as JSON on a Unix socket, for ``colab-gateway status``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from gateway.secrets import redact
from gateway.state import State
from gateway.untrusted import quoted
from gateway.vocabulary import SyncNow

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 2.0
MAX_REQUEST = 4096
# Clients at once: every tmux pane's `colab-gateway shell` holds a watch, the CLI asks
# briefly. Anyone in the service's group reaches the socket; more than this are closed at
# once, before a read, so they cost the daemon no buffer and no task beyond the accept.
MAX_CLIENTS = 64
# A watcher that stops reading is dropped once its socket buffer stays full this long.
WRITE_TIMEOUT = 30.0

WATCH_HEARTBEAT = 10.0


class StatusServer:
    """Answers one request per connection.

    ``status`` (or an empty line) gets the snapshot as one JSON line. ``watch`` gets a JSON
    line now and another on every change of the State (at least every 10 s), until the
    client hangs up: ``colab-gateway shell`` reacts to the tunnel without polling.
    """

    def __init__(self, state: State, path: Path) -> None:
        self.state = state
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._clients = 0

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left over from a crash; nothing else may own our runtime dir
        # Owner and group only: the status names peers and paths.
        old_umask = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        version = -1
        while not writer.is_closing():
            version = self.state.version
            writer.write(_line(self.state.snapshot()))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            await self.state.wait_changed(version, WATCH_HEARTBEAT)

    def sync_now(self, session: str) -> dict[str, object]:
        """``sync SESSION``: ask the sync component for a pull now (``colab-gateway sync
        SESSION --now``)."""
        view = self.state.view()
        if not view.runs("sync"):
            return {"error": "the daemon runs no sync: set sessions[].sync.paths in the config"}
        facts = view.sessions.get(session)
        if facts is None or not facts.sync.enabled:
            synced = [n for n, s in view.sessions.items() if s.sync.enabled]
            return {
                "error": f"session {quoted(session, 60)} has no sync.paths "
                f"(sessions that sync: {', '.join(synced) or 'none'})"
            }
        self.state.post(SyncNow(session, reason="colab-gateway sync --now"))
        return {"ok": True, "requested_at": time.time()}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.transport.abort()
            return
        self._clients += 1
        try:
            await self._serve(reader, writer)
        finally:
            self._clients -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            request = line[:MAX_REQUEST].decode(errors="replace").strip() or "status"
            if request == "watch":
                # Shutdown cancels open watches. Python 3.11's stream server logs a handler
                # that ends cancelled as an error, so end it normally instead.
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch(writer)
                return
            verb, _, argument = request.partition(" ")
            if request == "status":
                reply = self.state.snapshot()
            elif verb == "sync":
                reply = self.sync_now(argument.strip())
            else:
                reply = {"error": f"unknown request {quoted(request, 40)}; try 'status'"}
            writer.write(_line(reply))
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        # ValueError: a request line longer than the stream's limit (64 KiB).
        except (asyncio.TimeoutError, ConnectionError, BrokenPipeError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _line(reply: dict[str, object]) -> bytes:
    """One JSON line, scrubbed of secrets: messages quote what peers answered, and a
    provider's answer may echo its token. Redacting the JSON text also catches a secret
    in its JSON-escaped form."""
    return redact(json.dumps(reply)).encode() + b"\n"


def query(path: Path, timeout: float = 5.0, request: str = "status") -> dict[str, object]:
    """Blocking client for the CLI: the daemon's answer (its snapshot for ``status``), or
    OSError if it is not there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(request.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = json.loads(b"".join(chunks))
    if not isinstance(data, dict):
        raise ValueError("status socket answered something other than an object")
    return data
