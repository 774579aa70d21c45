"""The real daemon runs the ddns component: the systemd STATUS line and the status socket
show the published address, and the fake provider received exactly one update."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from helpers import NotifySocket, StartDaemon, wait_until
from helpers.ddns import AGENT, Echo, FakeServer, Handler, Received, Reply, write_secret

from gateway.status_server import query

Serve = Callable[[Handler], FakeServer]
HOST = "home.example.net"
V4 = "81.2.69.160"


def test_daemon_publishes_and_reports(
    tmp_path: Path,
    serve: Serve,
    echo: Echo,
    start_daemon: StartDaemon,
    notify_socket: NotifySocket,
) -> None:
    server = serve(lambda r: Reply(200, f"good {r.query.get('myip')}"))
    secret = write_secret(tmp_path, "dyndns.password", "s3cret-pass")
    config = json.dumps(
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
    daemon = start_daemon(config, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    wait_until(
        lambda: any(
            m.startswith("STATUS=") and f"ddns {HOST}={V4}" in m for m in notify_socket.read(0.2)
        ),
        30,
        "the published address in the STATUS line",
    )
    snapshot = query(daemon.runtime_dir / "status.sock")
    ddns = snapshot["components"]["ddns"]  # type: ignore[index]
    assert ddns["health"] == "ok"
    (record,) = ddns["details"]["records"]
    assert (record["published"], record["family"]) == (V4, "ipv4")
    (request,) = server.received
    assert isinstance(request, Received)
    assert request.query == {"hostname": HOST, "myip": V4}
    assert request.headers["user-agent"] == AGENT
    assert daemon.stop(15) == 0, daemon.output()
    assert "s3cret-pass" not in daemon.output()
