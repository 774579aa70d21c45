"""Local HTTP servers that speak the DDNS providers' protocols, a movable clock, config helpers.

Each fake records every request it received (method, path, query, headers, body) so tests
assert what went over the wire, not only what the updater believes.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway.config import Config, load_config

AGENT = "colab-gateway/0.1.0 ops@example.net"


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def basic_auth(self) -> tuple[str, str] | None:
        value = self.headers.get("authorization", "")
        if not value.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password


@dataclass
class Reply:
    status: int = 200
    body: str | bytes = ""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    delay: float = 0.0  # seconds to stall before answering (bounded by the server's release)


Handler = Callable[[Received], Reply]


class FakeServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[Received] = []
        self.release = threading.Event()  # set at teardown: stalled answers end at once
        fake = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once

            def _serve(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                received = Received(
                    self.command,
                    split.path,
                    dict(parse_qsl(split.query, keep_blank_values=True)),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                fake.received.append(received)
                reply = fake.handler(received)
                if reply.delay:
                    fake.release.wait(reply.delay)
                body = reply.body.encode() if isinstance(reply.body, str) else reply.body
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], FakeServer]]:
    servers: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        server = FakeServer(handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Echo:
    """An echo service whose answer the test changes; 404 for families it has no answer for."""

    def __init__(self, serve: Callable[[Handler], FakeServer], v4: str | None, v6: str | None):
        self.answers = {"/v4": v4, "/v6": v6}
        self.server = serve(self._reply)

    def _reply(self, request: Received) -> Reply:
        answer = self.answers.get(request.path)
        return Reply(200, answer + "\n") if answer else Reply(404, "not found")

    def source(self, family: str) -> str:
        return f"{self.server.url}/{'v4' if family == 'ipv4' else 'v6'}"


@pytest.fixture
def echo(serve: Callable[[Handler], FakeServer]) -> Echo:
    return Echo(serve, "81.2.69.160", "2a02:8070:1::7")


def write_secret(tmp_path: Path, name: str, value: str) -> Path:
    path = tmp_path / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def make_config(tmp_path: Path, ddns: dict[str, Any], name: str = "config.yaml") -> Config:
    """A real config file, loaded the way the daemon loads it."""
    document = {"browser": {"enabled": False}, "tmux": {"enabled": False}, "ddns": ddns}
    path = tmp_path / name
    path.write_text(json.dumps(document))  # JSON is YAML
    return load_config(path).config


class Clock:
    """Wall and monotonic time the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 1000.0
        self.synced = True

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_updater(config: Config, state_dir: Path, clock: Clock, rng: float = 0.0) -> Any:
    from gateway.ddns.store import Store
    from gateway.ddns.updater import Updater

    return Updater(
        config.ddns,
        Store(state_dir / "ddns.json"),
        clock=clock.time,
        monotonic=clock.monotonic,
        clock_synced=lambda: clock.synced,
        rng=lambda: rng,
    )
