"""The daemon's local HTTP ports under a flood of idle connections (issue 22, attack 8 and
"Deliver 3"): the real daemon (tunnel endpoint, headless Chromium on the simulated Colab,
/metrics) under the file limit its unit gives it, 1,000 idle connections to the view's
port and 1,000 to metrics.listen, and through it all the endpoint answers, OpenSSH logs in
and forwards, and the daemon's file descriptors stay bounded; after the view ends nothing
of it is left."""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import REPO, Daemon, StartDaemon, free_port, wait_until
from helpers.metrics import scrape, value

from gateway.sim import SimColab
from gateway.tunnel.keys import KeyStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/bin/ssh").exists(), reason="needs openssh (make system-deps)"
    ),
]

IDLE = 1000  # idle connections to each port
FLOOD_TIME_LIMIT = 60.0  # seconds for each port's flood, whatever happens
# What the unit gives the daemon (systemd's default soft limit without LimitNOFILE=).
UNIT = REPO / "systemd" / "colab-gateway.service"
SYSTEMD_DEFAULT_NOFILE = 1024
# The daemon's fds may grow by the two servers' caps (8 each) and this much besides
# (Chromium's DevTools connections, ssh's channel, the scrapes of the test).
FD_SLACK = 40


def unit_nofile() -> int:
    found = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else SYSTEMD_DEFAULT_NOFILE


@pytest.fixture
def many_sockets() -> Iterator[None]:
    """This test process holds 2,000 client sockets: raise its own limit (only its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * IDLE + 512
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"the hard file limit {hard} is below the {want} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def sim() -> Iterator[SimColab]:
    with SimColab() as sim:
        yield sim


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """The service on the Colab side of the tunnel."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def flood(port: int, held: list[socket.socket]) -> int:
    """Open IDLE idle connections to 127.0.0.1:port at once and keep them; how many
    connected within FLOOD_TIME_LIMIT (the kernel retries a SYN a full queue dropped)."""
    pending = []
    for _ in range(IDLE):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        held.append(sock)
        pending.append(sock)
    connected = 0
    deadline = time.monotonic() + FLOOD_TIME_LIMIT
    with selectors.DefaultSelector() as selector:
        for sock in pending:
            selector.register(sock, selectors.EVENT_WRITE)
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj  # type: ignore[assignment]
                selector.unregister(sock)
                pending.remove(sock)
                connected += sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return connected


def accept_queue(port: int) -> int:
    """Connections the kernel holds for the listener on ``port`` that it has not accepted
    yet (a LISTEN socket's rx_queue in /proc/net/tcp)."""
    waiting = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
            waiting += int(fields[4].partition(":")[2], 16)
    return waiting


def settle(*ports: int) -> None:
    """Give the daemon time (bounded) to take in what the flood queued on ``ports``; a
    daemon that cannot (out of file descriptors) shows it in the checks that follow."""
    deadline = time.monotonic() + FLOOD_TIME_LIMIT
    while time.monotonic() < deadline and any(accept_queue(p) for p in ports):
        time.sleep(0.2)


def banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.settimeout(10)
        got = b""
        while b"\n" not in got:
            chunk = conn.recv(256)
            if not chunk:
                break
            got += chunk
        return got


def ssh_forward(daemon: Daemon, tmp: Path, listen: int, local: int, echo: int) -> None:
    """OpenSSH logs into the endpoint with the session's key, forwards ``local`` to the echo
    service, and a payload makes the round trip."""
    keys = KeyStore(daemon.state_dir / "keys")
    key = tmp / "key"
    key.write_text(keys.tunnel_private_text("colab"))
    key.chmod(0o600)
    known = tmp / "known"
    known.write_text(f"[127.0.0.1]:{listen} {keys.host_info().public}\n")
    client = subprocess.Popen(
        ["ssh", "-F", "/dev/null", "-N", "-p", str(listen), "-i", str(key),
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
         "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=20",
         "-R", f"127.0.0.1:{local}:127.0.0.1:{echo}", "colab@127.0.0.1"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def round_trip() -> bool:
            assert client.poll() is None, f"ssh ended: {client.stderr and client.stderr.read()}"
            try:
                with socket.create_connection(("127.0.0.1", local), 5) as conn:
                    conn.sendall(b"through the tunnel\n")
                    conn.settimeout(5)
                    return conn.recv(64) == b"through the tunnel\n"
            except OSError:
                return False

        wait_until(round_trip, 30, "a round trip through the ssh -R forward")
    finally:
        client.kill()
        client.wait(5)
        if client.stderr:
            client.stderr.close()


def daemon_tcp(pid: int, port: int) -> list[object]:
    """The daemon's TCP sockets on ``port`` (listening or connected)."""
    return [c for c in psutil.Process(pid).net_connections("tcp") if c.laddr.port == port]


def test_a_thousand_idle_connections_to_the_view_and_metrics_leave_the_daemon_serving(
    tmp_path: Path,
    start_daemon: StartDaemon,
    sim: SimColab,
    echo_port: int,
    many_sockets: None,
) -> None:
    listen, local, metrics = free_port(), free_port(), free_port()
    daemon = start_daemon(
        f"""\
sessions:
  - name: colab
    notebook_url: '{sim.url}'
    forwards: {{ssh: {{colab: 22, local: {local}}}}}
tunnel: {{listen: '127.0.0.1:{listen}', public_host: 127.0.0.1}}
browser: {{profile_dir: '{tmp_path / "profile"}', headless: true, poll_every: 1s}}
tmux: {{enabled: false}}
ddns: {{provider: none}}
metrics: {{listen: '127.0.0.1:{metrics}'}}
"""
    )
    limit = unit_nofile()
    resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
    url = f"http://127.0.0.1:{metrics}/metrics"

    def connected() -> bool:
        with contextlib.suppress(OSError):
            return value(scrape(url), "colab_gateway_runtime_connected", session="colab") == 1
        return False

    wait_until(connected, 90, "the simulated Colab connected (on /metrics)")
    process = psutil.Process(daemon.proc.pid)
    threads_before = process.num_threads()

    view = subprocess.Popen(
        [sys.executable, "-m", "gateway", "view", "colab", "-c", str(daemon.config),
         "--runtime-dir", str(daemon.runtime_dir), "--state-dir", str(daemon.state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        assert view.stdout is not None
        lines = []
        for line in view.stdout:  # ends with the command, which a failure ends
            lines.append(line)
            if found := re.search(r"open http://127\.0\.0\.1:(\d+)/\?token=", line):
                view_port = int(found.group(1))
                break
        else:
            raise AssertionError(f"the view command printed no address: {lines}")
        fds_before = process.num_fds()

        opened = {"view": flood(view_port, held), "metrics": flood(metrics, held)}
        settle(view_port, metrics)
        fds_during = process.num_fds()
        threads_during = process.num_threads()

        assert banner(listen).startswith(b"SSH-2.0-"), "the endpoint answers with its banner"
        ssh_forward(daemon, tmp_path, listen, local, echo_port)
        assert fds_during <= fds_before + 2 * 8 + FD_SLACK, (fds_before, fds_during, opened)
        assert threads_during <= threads_before + 2 * 8 + 10, (threads_before, threads_during)
        # The idle ones are cut at their read timeout: a scrape gets through again while
        # the test still holds all its sockets.
        wait_until(lambda: "colab_gateway_up_seconds" in scrape_or_empty(url), 30, "a scrape")
    finally:
        for sock in held:
            sock.close()
        if view.poll() is None:
            view.send_signal(signal.SIGINT)  # Ctrl-C: the view ends
        out, _ = view.communicate(timeout=30)

    assert view.returncode == 0, out
    wait_until(lambda: not daemon_tcp(daemon.proc.pid, view_port), 30, "the view's sockets closed")
    wait_until(
        lambda: process.num_threads() <= threads_before + 1,
        30,
        f"the daemon's threads back to {threads_before} (+1)",
    )
    log = daemon.output()
    assert "Traceback" not in log, log[-5000:]
    trouble = [
        line for line in log.splitlines() if re.search(r"(view|metrics): .*connection", line)
    ]
    assert len(trouble) <= 8, trouble  # rate-limited: a line per kind per minute
    assert daemon.stop(20) == 0, log[-5000:]


def scrape_or_empty(url: str) -> str:
    try:
        return scrape(url)
    except OSError:
        return ""
