"""The status socket and the CLI's exit codes, against a real daemon."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from helpers import MINIMAL_CONFIG, REPO, StartDaemon


def status(runtime_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "status", "--runtime-dir", str(runtime_dir), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def wait_for_socket(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_status_healthy_degraded_and_not_running(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    sock = daemon.runtime_dir / "status.sock"
    wait_for_socket(sock)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660, "service user and group only"

    deadline = time.monotonic() + 10
    while (healthy := status(daemon.runtime_dir)).returncode != 0:
        assert time.monotonic() < deadline, healthy.stdout + healthy.stderr
        time.sleep(0.2)
    assert healthy.stdout.startswith("colab-gateway: ok")

    raw = status(daemon.runtime_dir, "--json")
    data = json.loads(raw.stdout)
    assert data["health"] == "ok"
    assert data["components"]["healer"]["health"] == "ok"
    assert daemon.stop() == 0

    gone = status(daemon.runtime_dir)
    assert gone.returncode == 3
    assert "colab-gateway is not running" in gone.stderr


def test_status_is_unhealthy_when_a_component_is_degraded(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(
        "sessions:\n  - {name: colab, notebook_url: 'https://colab.research.google.com/drive/"
        "XXXXXXXX'}\ntunnel: {enabled: false}\nbrowser: {enabled: false}\n"
        "tmux: {enabled: false}\n"
    )
    wait_for_socket(daemon.runtime_dir / "status.sock")
    deadline = time.monotonic() + 10
    while "placeholder" not in (result := status(daemon.runtime_dir)).stdout:
        assert time.monotonic() < deadline, result.stdout
        time.sleep(0.2)
    assert result.returncode == 1
    healer = next(ln for ln in result.stdout.splitlines() if ln.strip().startswith("healer"))
    assert healer.split()[:2] == ["healer", "degraded"]
    assert "session colab: notebook_url is still the example's placeholder" in healer


def test_watch_streams_changes_and_garbage_is_answered(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    path = daemon.runtime_dir / "status.sock"
    wait_for_socket(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"\x00\xffnonsense\n")
        reply = json.loads(sock.makefile().readline())
    assert reply["error"].startswith("unknown request")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(b"watch\n")
        stream = sock.makefile()
        first = json.loads(stream.readline())
        assert "spare" not in first["sessions"]
        # A reload adds a session: the watch streams the State that has it, unasked.
        daemon.config.write_text(
            MINIMAL_CONFIG + "sessions:\n  - {name: spare, notebook_url: "
            "'https://colab.research.google.com/drive/1spare'}\n"
        )
        os.kill(daemon.proc.pid, signal.SIGHUP)
        for _ in range(5):  # bounded: a heartbeat or two may come first
            update = json.loads(stream.readline())
            if "spare" in update["sessions"]:
                break
        assert "spare" in update["sessions"], update
    assert daemon.stop() == 0


def test_idle_and_oversized_clients_are_bounded_and_status_still_answers(
    start_daemon: StartDaemon,
) -> None:
    """A local client that connects and says nothing, or sends a line past the stream's
    limit, costs the daemon a bounded number of descriptors, and `status` answers again
    as soon as they time out."""
    import psutil

    from gateway.status_server import MAX_CLIENTS

    daemon = start_daemon()
    path = daemon.runtime_dir / "status.sock"
    wait_for_socket(path)
    assert status(daemon.runtime_dir).returncode in (0, 1)
    proc = psutil.Process(daemon.proc.pid)
    fds_before = proc.num_fds()
    idle = []
    try:
        for _ in range(MAX_CLIENTS * 3):  # bounded
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            idle.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as big:
            # A blocking connect: with a timeout set, a Unix socket whose accept queue is
            # full (a loaded daemon behind on its accepts) answers EAGAIN at once.
            big.connect(str(path))
            big.settimeout(10)
            with contextlib.suppress(OSError):
                big.sendall(b"x" * (256 * 1024))
        held = proc.num_fds() - fds_before
        assert held <= MAX_CLIENTS + 8, f"{held} descriptors for {len(idle)} idle clients"
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 20
    while (answer := status(daemon.runtime_dir)).returncode not in (0, 1):
        assert time.monotonic() < deadline, answer.stderr
    assert json.loads(status(daemon.runtime_dir, "--json").stdout)["components"]
    assert "Traceback" not in daemon.output()
    assert daemon.stop() == 0
