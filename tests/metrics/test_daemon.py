"""/metrics of the real daemon (`colab-gateway run`), scraped and parsed with
prometheus-client's parser: every metric is there with its labels, and the values move
when DDNS publishes, the tunnel carries bytes and the tunnel drops. (The simulated Colab
disconnecting is in tests/metrics/test_e2e.py: it needs Chromium and network namespaces.)"""

from __future__ import annotations

import json
import signal
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import StartDaemon, free_port, wait_until
from helpers.ddns import Echo, FakeServer, Reply, echo, serve, write_secret
from helpers.metrics import EXPECTED, family_names, samples, scrape, value

from gateway.tunnel.keys import KeyStore

__all__ = ["echo", "serve"]  # fixtures

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/ssh").exists(), reason="needs openssh (make system-deps)"
)
V4 = "81.2.69.160"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A TCP echo server standing in for the service on the Colab side of the tunnel."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_metrics_of_the_running_daemon_follow_ddns_and_the_tunnel(
    tmp_path: Path,
    start_daemon: StartDaemon,
    serve: object,
    echo: Echo,
    echo_server: int,
) -> None:
    provider: FakeServer = serve(lambda r: Reply(200, f"good {r.query.get('myip')}"))  # type: ignore[operator]
    listen, local, port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    config = {
        "sessions": [
            {
                "name": "colab",
                "notebook_url": "https://colab.research.google.com/drive/a",
                "forwards": {"ssh": {"colab": 22, "local": local}},
            }
        ],
        "tunnel": {"listen": f"127.0.0.1:{listen}", "public_host": "home.example.net"},
        "browser": {"enabled": False},
        "tmux": {"enabled": False},
        "ddns": {
            "provider": "dyndns2",
            "hostname": "home.example.net",
            "contact": "ops@example.net",
            "detect": {"ipv4": [echo.source("ipv4")]},
            "dyndns2": {
                "server": provider.url,
                "username": "pi-user",
                "password_file": str(write_secret(tmp_path, "pw", "s3cret-pass")),
            },
        },
        "metrics": {"listen": f"127.0.0.1:{port}"},
    }
    daemon = start_daemon(json.dumps(config))

    def scraped() -> str | None:
        try:
            return scrape(url)
        except OSError:
            return None

    first = wait_until(scraped, 30, "the daemon's /metrics")
    assert family_names(first) >= set(EXPECTED)
    got = samples(first)
    for name, labels in EXPECTED.items():
        for key in got.get(name, {}):
            assert tuple(sorted(k for k, _ in key)) == tuple(sorted(labels)), (name, key)
    components = {dict(k)["component"] for k in got["colab_gateway_component_health"]}
    assert components >= {"tunnel", "ddns", "healer", "metrics"}
    assert value(got, "colab_gateway_up_seconds") is not None
    assert value(got, "colab_gateway_tunnel_up", session="colab") == 0

    # DDNS publishes: the timestamp of the accepted address appears.
    published = wait_until(
        lambda: value(scrape(url), "colab_gateway_ddns_published_timestamp_seconds", family="ipv4"),
        30,
        "ddns_published_timestamp_seconds{family=ipv4}",
    )
    assert published > 1.6e9
    assert len(provider.received) == 1

    # The tunnel comes up and carries bytes both ways.
    keys = KeyStore(daemon.state_dir / "keys")
    key = tmp_path / "key"
    key.write_text(keys.tunnel_private_text("colab"))
    key.chmod(0o600)
    known = tmp_path / "known"
    known.write_text(f"[127.0.0.1]:{listen} {keys.host_info().public}\n")
    client = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-N", "-p", str(listen), "-i", str(key),
         "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}",
         "-o", "StrictHostKeyChecking=yes", "-o", "ExitOnForwardFailure=yes",
         "-R", f"127.0.0.1:{local}:127.0.0.1:{echo_server}", "colab@127.0.0.1"],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(
            lambda: value(scrape(url), "colab_gateway_tunnel_up", session="colab") == 1,
            20,
            "tunnel_up 1",
        )
        payload = b"x" * 5000
        with socket.create_connection(("127.0.0.1", local), 5) as conn:
            conn.sendall(payload)
            echoed = b""
            while len(echoed) < len(payload):
                chunk = conn.recv(65536)
                assert chunk, "the echo through the tunnel ended early"
                echoed += chunk

        def moved() -> bool:
            got = samples(scrape(url))
            out = value(got, "colab_gateway_tunnel_bytes_total", session="colab", direction="out")
            back = value(got, "colab_gateway_tunnel_bytes_total", session="colab", direction="in")
            return (out or 0) >= len(payload) and (back or 0) >= len(payload)

        wait_until(moved, 10, "tunnel_bytes_total in and out >= the payload")

        # The tunnel drops.
        client.send_signal(signal.SIGKILL)
        wait_until(
            lambda: value(scrape(url), "colab_gateway_tunnel_up", session="colab") == 0,
            20,
            "tunnel_up 0 after the drop",
        )
    finally:
        client.kill()
        client.wait(5)
    assert daemon.stop(15) == 0, daemon.output()
    with socket.socket() as s:  # nothing listens on the metrics port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # scrapes left TIME_WAITs
        s.bind(("127.0.0.1", port))


def test_a_reload_moves_the_metrics_to_the_new_address(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    first, second = free_port(), free_port()
    base = "tunnel: {enabled: false}\nbrowser: {enabled: false}\ntmux: {enabled: false}\n"
    daemon = start_daemon(base + f"metrics: {{listen: '127.0.0.1:{first}'}}\n")

    def serves(port: int) -> bool:
        try:
            return "colab_gateway_up_seconds" in scrape(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            return False

    wait_until(lambda: serves(first), 30, "metrics on the first port")
    daemon.config.write_text(base + f"metrics: {{listen: '127.0.0.1:{second}'}}\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: serves(second), 30, "metrics on the second port after the reload")
    wait_until(lambda: not serves(first), 10, "the first port closed")
    assert daemon.stop(15) == 0, daemon.output()
