"""A DuckDNS server that echoes the request (token included) in its answer: the token must
come out on no way out - the sd_notify STATUS line, the status socket (status and watch),
``ddns --once`` output, the log, the state file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
from helpers import NotifySocket, StartDaemon
from helpers.ddns import Echo, FakeServer, Handler, Received, Reply, write_secret

Serve = Callable[[Handler], FakeServer]
TOKEN = "5f0e3c1a-9b7d-4e2f-8a6c-d1b2c3e4f5a6"
# A piece this long of the token is as good as a leak: the status cuts long answers.
PIECE = TOKEN[:8]


def echoing_error(request: Received) -> Reply:
    """Neither OK nor KO: the updater quotes the answer's first line."""
    return Reply(200, f"ERROR bad request {request.path}?{urlencode(request.query)}\n")


def echoing_ok(request: Received) -> Reply:
    """OK, and a last line the updater quotes as the provider's note."""
    echoed = f"{request.path}?{urlencode(request.query)}"
    return Reply(200, f"OK\n{request.query.get('ip', '')}\n\nUPDATED {echoed}")


def write_config(tmp_path: Path, duck: FakeServer, echo: Echo) -> Path:
    token = write_secret(tmp_path, "duckdns.token", TOKEN)
    document = {
        "browser": {"enabled": False},
        "tmux": {"enabled": False},
        "tunnel": {"enabled": False},
        "ddns": {
            "provider": "duckdns",
            "hostname": "home.duckdns.org",
            "contact": "ops@example.net",
            "detect": {"ipv4": [echo.source("ipv4")]},
            "duckdns": {"token_file": str(token), "server": duck.url},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(document))
    return path


def assert_no_token(where: str, text: str) -> None:
    assert PIECE not in text, f"the DuckDNS token leaks through {where}: {text!r}"


@pytest.mark.parametrize("answer", [echoing_error, echoing_ok], ids=["error", "ok"])
def test_ddns_once_output_never_shows_an_echoed_token(
    tmp_path: Path, serve: Serve, echo: Echo, answer: Handler
) -> None:
    duck = serve(answer)
    config = write_config(tmp_path, duck, echo)
    state_dir = ["--state-dir", str(tmp_path / "state")]
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "ddns", "--once", "-c", str(config), *state_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    (request,) = duck.received
    assert request.query["token"] == TOKEN, "the fake must have had the token to echo"
    assert "home.duckdns.org via duckdns" in done.stdout, done.stdout
    assert "<redacted>" in done.stdout, "the echoed answer is still shown, scrubbed"
    assert_no_token("ddns --once stdout", done.stdout)
    assert_no_token("ddns --once stderr", done.stderr)
    state = tmp_path / "state" / "ddns.json"
    if state.exists():
        assert_no_token("the DDNS state file", state.read_text())
    shown = subprocess.run(
        [sys.executable, "-m", "gateway", "ddns", "-c", str(config), *state_dir],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_no_token("ddns (state) output", shown.stdout + shown.stderr)


def status_request(path: Path, request: bytes) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request)
        return sock.makefile().readline()


def test_daemon_status_line_and_socket_never_show_an_echoed_token(
    tmp_path: Path,
    serve: Serve,
    echo: Echo,
    notify_socket: NotifySocket,
    start_daemon: StartDaemon,
) -> None:
    duck = serve(echoing_error)
    config = write_config(tmp_path, duck, echo)
    daemon = start_daemon(config_path=config, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY=1", timeout=20)
    # The STATUS line names the provider's answer once the first cycle failed.
    notify_socket.wait_for("STATUS=ddns degraded: DuckDNS answered", timeout=30)
    statuses = [m for _, m in notify_socket.messages if m.startswith("STATUS=")]
    assert duck.received and duck.received[0].query["token"] == TOKEN
    for line in statuses:
        assert_no_token("the sd_notify STATUS line", line)
    assert any("<redacted>" in line for line in statuses), statuses

    sock = daemon.runtime_dir / "status.sock"
    status = status_request(sock, b"status\n")
    assert "DuckDNS answered" in json.loads(status)["components"]["ddns"]["message"]
    assert_no_token("the status socket", status)
    watch = status_request(sock, b"watch\n")
    assert "DuckDNS answered" in watch
    assert_no_token("the status socket's watch stream", watch)
    runtime = str(daemon.runtime_dir)
    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--json", "--runtime-dir", runtime],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "DuckDNS answered" in cli.stdout
    assert_no_token("colab-gateway status", cli.stdout + cli.stderr)

    assert daemon.stop() == 0
    assert_no_token("the log", daemon.output())
