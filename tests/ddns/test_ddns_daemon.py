"""The real daemon runs the ddns component: the systemd STATUS line and the status socket
show the published address, and the fake provider received exactly one update."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ddns_fakes import AGENT, Echo, FakeServer, Handler, Received, Reply, write_secret

from gateway.status_server import query

Serve = Callable[[Handler], FakeServer]
HOST = "home.example.net"
V4 = "81.2.69.160"


def test_daemon_publishes_and_reports(tmp_path: Path, serve: Serve, echo: Echo) -> None:
    server = serve(lambda r: Reply(200, f"good {r.query.get('myip')}"))
    secret = write_secret(tmp_path, "dyndns.password", "s3cret-pass")
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "browser": {"enabled": False},
                "tmux": {"enabled": False},
                "tunnel": {"enabled": False},
                "ddns": {
                    "provider": "dyndns2",
                    "hostname": HOST,
                    "contact": "ops@example.net",
                    "detect": {"ipv4": [echo.source("ipv4")]},
                    "dyndns2": {
                        "server": server.url,
                        "username": "pi-user",
                        "password_file": str(secret),
                    },
                },
            }
        )
    )
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(0.5)
    runtime = tmp_path / "run"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    command = [sys.executable, "-m", "gateway", "run", "-c", str(config)]
    command += ["--state-dir", str(tmp_path / "state"), "--runtime-dir", str(runtime)]
    daemon = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    statuses: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                message = notify.recv(4096).decode()
            except TimeoutError:
                continue
            statuses += [line[7:] for line in message.splitlines() if line.startswith("STATUS=")]
            if any(f"ddns {HOST}={V4}" in s for s in statuses):
                break
        assert any(f"ddns {HOST}={V4}" in s for s in statuses), statuses
        snapshot = query(runtime / "status.sock")
        ddns = snapshot["components"]["ddns"]  # type: ignore[index]
        assert ddns["health"] == "ok"
        (record,) = ddns["details"]["records"]
        assert (record["published"], record["family"]) == (V4, "ipv4")
        (request,) = server.received
        assert isinstance(request, Received)
        assert request.query == {"hostname": HOST, "myip": V4}
        assert request.headers["user-agent"] == AGENT
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            _, stderr = daemon.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, stderr = daemon.communicate()
        notify.close()
    assert daemon.returncode == 0, stderr
    assert "s3cret-pass" not in stderr
