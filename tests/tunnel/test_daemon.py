"""The tunnel component inside the real daemon: tunnel events reach `colab-gateway status`
(the status socket's watch stream, which also carries the STATUS line) within 1 s."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import StartDaemon, free_port, wait_until

from gateway.tunnel.keys import KeyStore

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/sshd").exists(), reason="needs openssh (make system-deps)"
)


def test_tunnel_events_reach_the_status_within_a_second(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    listen, local = free_port(), free_port()
    daemon = start_daemon(
        "sessions:\n  - name: colab\n    notebook_url: https://colab.research.google.com/drive/a\n"
        f"    forwards:\n      ssh: {{colab: 22, local: {local}}}\n"
        f"tunnel:\n  listen: 127.0.0.1:{listen}\n  public_host: home.example.net\n"
        "browser: {enabled: false}\ntmux: {enabled: false}\n"
    )
    state, run = daemon.state_dir, daemon.runtime_dir
    snapshots: list[tuple[float, dict]] = []
    client: subprocess.Popen[bytes] | None = None
    try:
        sock_path = run / "status.sock"
        wait_until(sock_path.exists, 20, "the status socket")
        wait_until(lambda: (state / "keys" / "tunnel-colab.pub").exists(), 20, "the tunnel key")
        watcher = socket.socket(socket.AF_UNIX)
        watcher.connect(str(sock_path))
        watcher.sendall(b"watch\n")

        def read() -> None:
            with watcher, watcher.makefile("r") as lines:
                for line in lines:
                    snapshots.append((time.monotonic(), json.loads(line)))

        threading.Thread(target=read, daemon=True).start()
        waiting = wait_until(
            lambda: [
                s
                for _, s in snapshots
                if "tunnel" in s["components"] and s["components"]["tunnel"]["health"] == "degraded"
            ],
            20,
            "the tunnel's first report",
        )[-1]
        message = waiting["components"]["tunnel"]["message"]
        assert f"waiting for Colab to dial in on 127.0.0.1:{listen}" in message
        assert "public home.example.net" in message and "colab_gateway_colab" in message

        keys = KeyStore(state / "keys")
        key = tmp_path / "key"
        key.write_text(keys.tunnel_private_text("colab"))
        key.chmod(0o600)
        known = tmp_path / "known"
        known.write_text(f"[127.0.0.1]:{listen} {keys.host_info().public}\n")
        client = subprocess.Popen(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-N",
                "-p",
                str(listen),
                "-i",
                str(key),
                "-o",
                "BatchMode=yes",
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                f"127.0.0.1:{local}:localhost:22",
                "colab@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def bound() -> float | None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), 1):
                return time.monotonic()
            return None

        t_bound = wait_until(bound, 20, "the forwarded port")
        t_up, up = wait_until(
            lambda: next(
                ((t, s) for t, s in snapshots if s["sessions"]["colab"]["tunnel"]["up"]), None
            ),
            5,
            "tunnel up in the status",
        )
        assert t_up - t_bound < 1.0
        assert "colab: tunnel up" in up["summary"]
        assert up["sessions"]["colab"]["tunnel"]["forwards"] == [local]
        assert up["sessions"]["colab"]["tunnel"]["peer"].startswith("127.0.0.1:")
        assert up["components"]["tunnel"]["health"] == "ok"

        seen = len(snapshots)
        t_kill = time.monotonic()
        client.send_signal(signal.SIGKILL)
        t_down, down = wait_until(
            lambda: next(
                ((t, s) for t, s in snapshots[seen:] if not s["sessions"]["colab"]["tunnel"]["up"]),
                None,
            ),
            5,
            "tunnel down in the status",
        )
        assert t_down - t_kill < 1.0
        assert "colab: tunnel down" in down["summary"]
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "status",
                "-c",
                str(daemon.config),
                "--runtime-dir",
                str(run),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "session colab: tunnel down" in cli.stdout
    finally:
        if client is not None:
            client.kill()
            client.wait(5)
    assert daemon.stop(15) == 0, daemon.output()
    with socket.socket() as s:  # the daemon freed the endpoint's port
        s.bind(("127.0.0.1", listen))
