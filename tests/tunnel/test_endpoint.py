"""The tunnel endpoint with the real programs: OpenSSH's ssh as the Colab side, a real
sshd started by the rendered bootstrap script as the Colab VM's sshd, and the Pi's own ssh
through the tunnel checking the pinned host key strictly."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from helpers import free_port, wait_until
from helpers.tunnel import (
    ColabVM,
    RunningEndpoint,
    make_config,
    make_vm,
    pi_ssh,
    running_endpoint,
    ssh_keygen,
)

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/sshd").exists(), reason="needs openssh-server (make system-deps)"
)


@pytest.fixture
def pi_key(tmp_path: Path) -> Path:
    return ssh_keygen(tmp_path / "pi" / "id_ed25519")


@pytest.fixture
def vms() -> Iterator[list[ColabVM]]:
    started: list[ColabVM] = []
    yield started
    for vm in started:
        vm.stop()


class Client:
    """OpenSSH's ssh logging into the endpoint with the session's tunnel key."""

    def __init__(self, tmp_path: Path, r: RunningEndpoint, session: str = "colab") -> None:
        self.key = tmp_path / f"client-{session}"
        self.key.write_text(r.keys.tunnel_private_text(session))
        self.key.chmod(0o600)
        self.known_hosts = tmp_path / "client-known-hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{r.port} {r.keys.host_info().public}\n")
        self.r = r

    def args(self, *extra: str, user: str = "colab") -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.r.port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            *extra,
            f"{user}@127.0.0.1",
        ]

    def run(
        self,
        *extra: str,
        command: tuple[str, ...] = (),
        user: str = "colab",
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*extra, user=user) + list(command),
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    @contextlib.contextmanager
    def forward(
        self, *remotes: str, extra: tuple[str, ...] = ()
    ) -> Iterator[subprocess.Popen[str]]:
        args = self.args(
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            *extra,
            *[a for remote in remotes for a in ("-R", remote)],
        )
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait(5)
            if proc.stderr:
                proc.stderr.close()


def ssh_local(config, name: str = "ssh", session: str = "colab") -> int:
    return config.session(session).forwards[name].local


def echo_server() -> tuple[socket.socket, int]:
    """A TCP server on loopback answering each line with itself (the Colab side's app)."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _echo(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def roundtrip(port: int, payload: bytes = b"ping\n", host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


# -- the whole loop ------------------------------------------------------------------------------


def test_bootstrap_brings_the_tunnel_up_and_the_pi_logs_in_with_a_pinned_key(
    tmp_path: Path, pi_key: Path, vms: list[ColabVM]
) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "laptop",
                "-f",
                str(tmp_path / "laptop"),
            ],
            check=True,
        )
        laptop = (tmp_path / "laptop.pub").read_text().strip()
        vm = make_vm(tmp_path, r, config, pi_key=pi_key, extra_keys=(laptop,))
        vms.append(vm)
        done = vm.run_bootstrap()
        assert done.returncode == 0, done.stderr
        assert "sshd started" in done.stdout
        pi_pub = pi_key.with_name(pi_key.name + ".pub").read_text().strip()
        authorized = (vm.dir.parent / "authorized_keys").read_text().splitlines()
        assert authorized == [pi_pub, laptop], "the Pi's key, then ssh.authorized_keys"
        assert "connected to the gateway, which pinned SHA256:" in done.stdout
        facts = r.wait_for(lambda f: f["up"])
        assert facts["forwards"] == [ssh_local(config)]
        assert facts["connections"] == 1
        fingerprint = subprocess.run(
            ["ssh-keygen", "-lf", f"{vm.hostkey}.pub"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        assert facts["hostkey_fingerprint"] == fingerprint
        port = ssh_local(config)
        assert r.known_hosts.read_text().splitlines() == [
            f"[localhost]:{port} " + " ".join(Path(f"{vm.hostkey}.pub").read_text().split()[:2])
        ]
        result = pi_ssh(port, r.known_hosts, pi_key, "echo", "through-the-tunnel")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "through-the-tunnel\n"
        assert result.stderr == ""

        # Running the cell again (Run all twice) keeps the one loop.
        first_loop = vm.loop_pid()
        again = vm.run_bootstrap()
        assert again.returncode == 0, again.stderr
        assert "tunnel loop already running" in again.stdout
        assert "sshd reloaded" in again.stdout
        assert vm.loop_pid() == first_loop
        loops = subprocess.run(
            ["pgrep", "-c", "-f", "--", f"-N .*-R 127.0.0.1:{port}:"],
            capture_output=True,
            text=True,
        )
        assert loops.stdout.strip() == "1"
        assert r.facts()["connections"] == 1


def test_the_whole_cell_runs_with_the_secret_from_colab_userdata(
    tmp_path: Path, pi_key: Path, vms: list[ColabVM]
) -> None:
    """The Python cell itself, with google.colab.userdata answering from a dict."""
    from gateway.tunnel.bootstrap import BootstrapParams, render_cell

    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = make_vm(tmp_path, r, config, pi_key=pi_key)
        vms.append(vm)
        fake = tmp_path / "fakecolab" / "google" / "colab"
        fake.mkdir(parents=True)
        (fake.parent / "__init__.py").write_text("")
        (fake / "__init__.py").write_text("")
        (fake / "userdata.py").write_text(
            "import os\n"
            "def get(name):\n"
            "    if name != 'colab_gateway_colab':\n"
            "        raise KeyError(name)\n"
            "    return open(os.environ['FAKE_SECRET']).read()\n"
        )
        secret = tmp_path / "secret"
        secret.write_text(r.keys.tunnel_private_text("colab"))
        params = BootstrapParams(
            "127.0.0.1",
            r.port,
            "colab",
            " ".join(r.keys.host_info().public.split()[:2]),
            {ssh_local(config): 22},
            pi_key.with_name("id_ed25519.pub").read_text().strip(),
        )
        cell = tmp_path / "cell.py"
        cell.write_text(render_cell(params, "colab"))
        env = dict(vm.env, PYTHONPATH=str(tmp_path / "fakecolab"), FAKE_SECRET=str(secret))
        env.pop("GW_KEY_FILE")
        done = subprocess.run(
            [sys.executable, str(cell)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert "pinned" in done.stdout
        assert oct((vm.dir / "tunnel_key").stat().st_mode & 0o777) == "0o600"
        r.wait_for(lambda f: f["up"])
        assert pi_ssh(ssh_local(config), r.known_hosts, pi_key, "true").returncode == 0

        # Without the secret and without the opt-in inline key, the cell says what to do.
        env["FAKE_SECRET"] = str(tmp_path / "missing")
        failed = subprocess.run(
            [sys.executable, str(cell)], env=env, capture_output=True, text=True, timeout=60
        )
        assert failed.returncode != 0
        assert "cannot read the Colab secret 'colab_gateway_colab'" in failed.stderr
        assert "colab-gateway keys --private colab" in failed.stderr


def test_a_new_vm_with_a_new_host_key_is_pinned_without_any_warning(
    tmp_path: Path, pi_key: Path, vms: list[ColabVM]
) -> None:
    config = make_config(tmp_path)
    port = ssh_local(config)
    with running_endpoint(config, tmp_path / "state") as r:
        old = make_vm(tmp_path, r, config, name="vm-old", pi_key=pi_key)
        vms.append(old)
        assert old.run_bootstrap().returncode == 0
        r.wait_for(lambda f: f["up"])
        assert pi_ssh(port, r.known_hosts, pi_key, "true").returncode == 0
        old.stop()
        r.wait_for(lambda f: not f["up"])

        new = make_vm(tmp_path, r, config, name="vm-new", pi_key=pi_key)
        vms.append(new)
        assert new.run_bootstrap().returncode == 0
        new_fp = subprocess.run(
            ["ssh-keygen", "-lf", f"{new.hostkey}.pub"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        r.wait_for(lambda f: f["up"] and f["hostkey_fingerprint"] == new_fp)
        result = pi_ssh(port, r.known_hosts, pi_key, "cat", str(new.env["GW_DIR"]) + "/sshd.pid")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # no "REMOTE HOST IDENTIFICATION HAS CHANGED", no prompt
        assert result.stdout.strip() == (new.dir / "sshd.pid").read_text().strip()
        lines = [line for line in r.known_hosts.read_text().splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith(f"[localhost]:{port} ssh-ed25519 ")

        # And the old VM's key no longer passes: the check is strict, not switched off.
        (r.known_hosts).write_text(
            f"[localhost]:{port} "
            + " ".join(Path(f"{old.hostkey}.pub").read_text().split()[:2])
            + "\n"
        )
        mismatch = pi_ssh(port, r.known_hosts, pi_key, "true")
        assert mismatch.returncode == 255
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in mismatch.stderr


# -- only the tunnel: every other request is refused --------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[Client, RunningEndpoint]]:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        yield Client(tmp_path, r), r


def test_refuses_password_auth(client, caplog) -> None:
    c, _ = client
    result = c.run(
        "-o", "PreferredAuthentications=password", "-o", "BatchMode=no", command=("true",)
    )
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_refuses_keyboard_interactive_auth(client) -> None:
    c, _ = client
    result = c.run("-o", "PreferredAuthentications=keyboard-interactive", command=("true",))
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_refuses_another_username_with_the_right_key(client) -> None:
    c, _ = client
    result = c.run(command=("register-hostkey",), user="root")
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_refuses_a_key_that_is_not_a_session_key(client, tmp_path: Path) -> None:
    c, _ = client
    c.key = ssh_keygen(tmp_path / "stranger")
    result = c.run(command=("true",))
    assert result.returncode == 255
    assert "Permission denied (publickey)" in result.stderr


def test_refuses_a_shell(client, caplog) -> None:
    c, _ = client
    with caplog.at_level(logging.WARNING, "gateway.tunnel"):
        result = c.run("-T")
    assert result.returncode == 255
    assert "shell request failed" in result.stderr
    assert "refused a shell from session colab" in caplog.text


def test_refuses_a_pty(client) -> None:
    c, _ = client
    result = c.run("-tt", command=("register-hostkey",))
    assert "PTY allocation request failed" in result.stderr


def test_refuses_other_commands(client, caplog) -> None:
    c, _ = client
    with caplog.at_level(logging.WARNING, "gateway.tunnel"):
        result = c.run(command=("id",))
    assert result.returncode == 255
    assert "exec request failed" in result.stderr
    assert "refused the command 'id'" in caplog.text


def test_refuses_subsystems(client, caplog) -> None:
    c, _ = client
    with caplog.at_level(logging.WARNING, "gateway.tunnel"):
        result = c.run("-s", command=("sftp",))
    assert result.returncode == 255
    assert "subsystem request failed" in result.stderr
    assert "refused the subsystem 'sftp'" in caplog.text


def test_refuses_x11_forwarding(client) -> None:
    c, _ = client
    env = dict(os.environ, DISPLAY=":99")
    result = c.run("-X", command=("register-hostkey",), env=env)
    assert "X11 forwarding request failed" in result.stderr


def test_refuses_agent_forwarding(client, tmp_path: Path, caplog) -> None:
    # OpenSSH asks for agent forwarding without wanting a reply: look at the server side.
    c, _ = client
    agent_sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(agent_sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if agent_sock.exists():
                break
            time.sleep(0.02)
        asyncssh.set_debug_level(1)
        with caplog.at_level(logging.DEBUG, "asyncssh"):
            result = c.run(
                "-A",
                command=("register-hostkey",),
                env=dict(os.environ, SSH_AUTH_SOCK=str(agent_sock)),
            )
            deadline = time.monotonic() + 5
            while "Agent forwarding" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        asyncssh.set_debug_level(1)
        agent.kill()
        agent.wait(5)
    assert "register-hostkey refused" in result.stderr  # the session itself went ahead
    assert "Agent forwarding failed" in caplog.text
    assert "Agent forwarding enabled" not in caplog.text


def test_refuses_stdio_forwarding_w(client, caplog) -> None:
    c, _ = client
    with caplog.at_level(logging.WARNING, "gateway.tunnel"):
        result = c.run("-W", "localhost:22")
    assert result.returncode == 255
    assert "stdio forwarding failed" in result.stderr
    assert "refused a local forward (-L/-D/-W) to 'localhost' port 22" in caplog.text


def test_refuses_local_forwarding_l(client, caplog) -> None:
    c, _ = client
    srv, target = echo_server()
    local = free_port()
    try:
        with (
            caplog.at_level(logging.WARNING, "gateway.tunnel"),
            c.forward(extra=("-L", f"127.0.0.1:{local}:127.0.0.1:{target}")),
        ):
            _wait_listening(local)
            with contextlib.suppress(ConnectionResetError):
                assert roundtrip(local) == b""  # the channel is refused, the socket closed
            _wait_log(caplog, f"to '127.0.0.1' port {target}")
    finally:
        srv.close()


def test_refuses_dynamic_forwarding_d(client, caplog) -> None:
    c, _ = client
    local = free_port()
    with (
        caplog.at_level(logging.WARNING, "gateway.tunnel"),
        c.forward(extra=("-D", f"127.0.0.1:{local}")),
    ):
        _wait_listening(local)
        with socket.create_connection(("127.0.0.1", local), timeout=5) as s:
            s.sendall(b"\x05\x01\x00")  # SOCKS5, no auth
            assert s.recv(2) == b"\x05\x00"
            s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x16")  # CONNECT 127.0.0.1:22
            reply = s.recv(10)
            assert reply[:2] != b"\x05\x00"  # not "succeeded"
        _wait_log(caplog, "refused a local forward (-L/-D/-W) to '127.0.0.1' port 22")


def test_refuses_tun_forwarding(client, caplog) -> None:
    c, _ = client
    with caplog.at_level(logging.WARNING, "gateway.tunnel"):
        result = c.run("-w", "any", "-o", "ExitOnForwardFailure=yes", "-N")
    assert result.returncode == 255
    assert "Tunnel forwarding failed" in result.stderr
    assert "refused tun forwarding" in caplog.text


def test_refuses_unix_socket_forwarding_both_ways(client, tmp_path: Path, caplog) -> None:
    c, _ = client
    with caplog.at_level(logging.WARNING, "gateway.tunnel"):
        remote = c.run(
            "-o", "ExitOnForwardFailure=yes", "-N", "-R", f"{tmp_path}/remote.sock:localhost:22"
        )
        assert remote.returncode == 255
        assert "remote port forwarding failed for listen path" in remote.stderr
        local_sock = tmp_path / "local.sock"
        with c.forward(extra=("-L", f"{local_sock}:{tmp_path}/remote.sock")):
            deadline = time.monotonic() + 10
            while not local_sock.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(local_sock))
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(10) == b""
            _wait_log(caplog, "refused a Unix socket forward")
    assert "refused a remote Unix socket forward" in caplog.text
    assert "refused a Unix socket forward" in caplog.text


def test_refuses_a_remote_forward_of_an_unconfigured_port(client, caplog) -> None:
    c, r = client
    other = free_port()
    with caplog.at_level(logging.WARNING, "gateway.tunnel"):
        result = c.run(
            "-o", "ExitOnForwardFailure=yes", "-N", "-R", f"127.0.0.1:{other}:localhost:22"
        )
    assert result.returncode == 255
    assert f"remote port forwarding failed for listen port {other}" in result.stderr
    assert f"refused a remote forward of '127.0.0.1' port {other}" in caplog.text
    assert r.facts()["forwards"] == []


def test_forwards_are_bound_on_loopback_whatever_address_is_asked(client) -> None:
    c, r = client
    config = r.endpoint.config
    port = ssh_local(config)
    srv, target = echo_server()
    try:
        with c.forward(f"0.0.0.0:{port}:127.0.0.1:{target}"):
            r.wait_for(lambda f: f["up"])
            assert roundtrip(port) == b"ping\n"
            # Not on another local address: the listener is 127.0.0.1 only.
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.2", port), timeout=2).close()
            bound = subprocess.run(
                ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
            ).stdout
            assert [line.split()[3] for line in bound.splitlines()] == [f"127.0.0.1:{port}"]
    finally:
        srv.close()


def test_register_hostkey_rejects_bad_keys_and_oversized_commands(client) -> None:
    c, r = client
    bad = c.run(command=("register-hostkey", "ssh-ed25519", "AAAAnotakey"))
    assert bad.returncode == 1
    assert "register-hostkey refused: not a valid ssh-ed25519 public key" in bad.stderr
    dsa = c.run(command=("register-hostkey", "ssh-dss", "AAAAB3NzaC1kc3M"))
    assert "host key type 'ssh-dss' is not accepted" in dsa.stderr
    huge = c.run(command=("register-hostkey", "ssh-ed25519", "A" * 5000))
    assert "longer than 4096 bytes" in huge.stderr
    assert not r.known_hosts.exists()


# -- stale tunnels and keepalives ---------------------------------------------------------------


def test_a_new_connection_takes_over_a_port_held_by_a_frozen_one_within_a_second(
    tmp_path: Path, pi_key: Path, vms: list[ColabVM]
) -> None:
    config = make_config(tmp_path)
    port = ssh_local(config)
    with running_endpoint(config, tmp_path / "state") as r:
        old = make_vm(tmp_path, r, config, name="vm-old", pi_key=pi_key)
        vms.append(old)
        assert old.run_bootstrap().returncode == 0
        first = r.wait_for(lambda f: f["up"])
        os.killpg(old.loop_pid(), signal.SIGSTOP)  # the VM vanished; its TCP connection did not

        new = make_vm(tmp_path, r, config, name="vm-new", pi_key=pi_key)
        vms.append(new)
        assert new.run_bootstrap().returncode == 0
        new_fp = subprocess.run(
            ["ssh-keygen", "-lf", f"{new.hostkey}.pub"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        # From the new VM's host-key registration (its first connection) to the port bound
        # by its second connection, the one with -R.
        registered = next(t for t, _, f in r.events if f["hostkey_fingerprint"] == new_fp)
        facts = r.wait_for(lambda f: f["up"] and f["peer"] != first["peer"], timeout=5)
        bound = next(
            t for t, _, f in r.events if t >= registered and f["up"] and f["peer"] == facts["peer"]
        )
        assert bound - registered < 1.0, f"took {bound - registered:.2f}s"
        result = pi_ssh(port, r.known_hosts, pi_key, "cat", str(new.dir / "sshd.pid"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (new.dir / "sshd.pid").read_text().strip()
        assert r.facts()["connections"] == 1


def test_keepalives_free_the_ports_of_a_vanished_client(tmp_path: Path) -> None:
    config = make_config(tmp_path, "keepalive_interval: 1s\nkeepalive_count_max: 2")
    with running_endpoint(config, tmp_path / "state") as r:
        c = Client(tmp_path, r)
        port = ssh_local(config)
        with c.forward(f"127.0.0.1:{port}:127.0.0.1:9") as proc:
            r.wait_for(lambda f: f["up"])
            proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            r.wait_for(lambda f: not f["up"] and f["connections"] == 0, timeout=10)
            took = time.monotonic() - stopped
            assert 1.5 < took < 6, took  # two missed probes a second apart, not at once
            with socket.socket() as s:  # the port is free again
                s.bind(("127.0.0.1", port))


# -- hardening ------------------------------------------------------------------------------------


def _connect_from(source: str, port: int) -> socket.socket:
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def _is_refused(s: socket.socket) -> bool:
    """Refused connections are closed before any SSH banner; admitted ones get a banner."""
    try:
        data = s.recv(256)
    except (ConnectionResetError, TimeoutError):
        return True
    return not data.startswith(b"SSH-2.0-")


def _refused_from(source: str, port: int) -> bool:
    with _connect_from(source, port) as s:
        return _is_refused(s)


def test_caps_unauthenticated_connections_in_total_and_per_source(tmp_path: Path, caplog) -> None:
    config = make_config(
        tmp_path,
        "max_unauthenticated: 5\nrandom_drop_start: 5\nmax_unauthenticated_per_source: 3\n"
        "exempt_networks: [127.0.0.0/8]",
    )
    with (
        running_endpoint(config, tmp_path / "state") as r,
        caplog.at_level(logging.WARNING, "gateway.tunnel"),
    ):
        held = [_connect_from("127.0.0.2", r.port) for _ in range(3)]
        assert not any(_is_refused(s) for s in held)
        assert _refused_from("127.0.0.2", r.port)
        others = [_connect_from(f"127.0.0.{i}", r.port) for i in (3, 4)]
        assert not any(_is_refused(s) for s in others)
        assert _refused_from("127.0.0.5", r.port)
        assert "max_unauthenticated_per_source=3" in caplog.text
        assert "max_unauthenticated=5" in caplog.text
        # A logged-in client does not count: the tunnel gets in while the caps are full.
        c = Client(tmp_path, r)
        with c.forward(f"127.0.0.1:{ssh_local(config)}:127.0.0.1:9"):
            pass
        for s in held + others:
            s.close()
        # Closing frees the places again.
        deadline = time.monotonic() + 5
        while r.call(lambda: r.endpoint.guard.unauthenticated) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _refused_from("127.0.0.2", r.port)


def test_a_source_that_does_not_log_in_is_penalised_with_growing_penalties(
    tmp_path: Path, caplog
) -> None:
    config = make_config(
        tmp_path, "penalty_min: 1s\npenalty_max: 4s\nexempt_networks: [127.0.0.9/32]"
    )
    with (
        running_endpoint(config, tmp_path / "state") as r,
        caplog.at_level(logging.WARNING, "gateway.tunnel"),
    ):
        c = Client(tmp_path, r)
        stranger = ssh_keygen(tmp_path / "stranger")
        c.key = stranger
        failed = subprocess.run(
            [*c.args("-b", "127.0.0.7"), "true"], capture_output=True, text=True, timeout=20
        )
        assert "Permission denied" in failed.stderr
        _wait_log(caplog, "127.0.0.7: no login")
        assert _refused_from("127.0.0.7", r.port)
        assert not _refused_from("127.0.0.8", r.port)  # others are unaffected
        # The exempt network is never penalised.
        subprocess.run([*c.args("-b", "127.0.0.9"), "true"], capture_output=True, timeout=20)
        assert not _refused_from("127.0.0.9", r.port)
        # After the first penalty (1 s), another failure earns a longer one (2 s).
        time.sleep(1.2)
        s = _connect_from("127.0.0.7", r.port)
        assert not _is_refused(s)
        s.close()
        _wait_log(caplog, "refusing this source for 2s (repeat 2)")
        assert _refused_from("127.0.0.7", r.port)


def test_login_timeout_closes_and_penalises(tmp_path: Path, caplog) -> None:
    config = make_config(tmp_path, "login_timeout: 1s\nexempt_networks: []")
    with (
        running_endpoint(config, tmp_path / "state") as r,
        caplog.at_level(logging.WARNING, "gateway.tunnel"),
    ):
        with _connect_from("127.0.0.3", r.port) as s:
            assert s.recv(256).startswith(b"SSH-2.0-")
            start = time.monotonic()
            while s.recv(4096):
                pass
        assert 0.8 < time.monotonic() - start < 4
        _wait_log(caplog, "127.0.0.3: no login")
        assert _refused_from("127.0.0.3", r.port)


def test_garbage_and_truncated_packets_do_not_disturb_a_live_tunnel(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    port = ssh_local(config)
    srv, target = echo_server()
    try:
        with running_endpoint(config, tmp_path / "state") as r:
            c = Client(tmp_path, r)
            with c.forward(f"127.0.0.1:{port}:127.0.0.1:{target}"):
                r.wait_for(lambda f: f["up"])
                assert roundtrip(port) == b"ping\n"
                attacks = [
                    os.urandom(4096),  # no banner at all
                    b"SSH-2.0-x\r\n" + os.urandom(2048),  # a banner, then noise
                    b"SSH-2.0-x\r\n\x00\x00\x01",  # a packet length cut short
                    b"SSH-2.0-x\r\n\xff\xff\xff\xf0\x08\x14" + b"\x00" * 32,  # absurd length
                    b"SSH-2.0-x\r\n\x00\x00\x00\x2c\x06\x14" + b"\x00" * 20,  # KEXINIT cut off
                    b"\r\n" * 2000,  # endless pre-banner lines
                ]
                for payload in attacks:
                    with (
                        socket.create_connection(("127.0.0.1", r.port), timeout=5) as s,
                        contextlib.suppress(OSError),
                    ):
                        s.sendall(payload)
                        s.shutdown(socket.SHUT_WR)
                        s.recv(4096)
                    assert roundtrip(port, os.urandom(100_000)) != b""
                assert r.facts()["up"]
                data = os.urandom(1_000_000)
                assert roundtrip(port, data) == data
                # And a new login still works.
                ok = c.run(
                    command=(
                        "register-hostkey",
                        "ssh-ed25519",
                        "AAAAC3NzaC1lZDI1NTE5AAAAIHZQ3bAfZrRf0y2aR7Q2b2kP0m1tY9d6hG4uJk5R3l2x",
                    )
                )
                assert ok.returncode in (0, 1), ok.stderr
                assert "refused" not in ok.stderr or "not a valid" in ok.stderr
    finally:
        srv.close()


def test_ssh_audit_reports_no_failure_and_openssh_9_2_still_connects(tmp_path: Path) -> None:
    # No exempt network: ssh-audit's DHEat rate test then meets the penalties, as a scanner
    # on the internet would.
    config = make_config(tmp_path, "exempt_networks: []")
    with running_endpoint(config, tmp_path / "state") as r:
        audit = Path(sys.executable).with_name("ssh-audit")
        result = subprocess.run(
            [str(audit), "-n", "-p", str(r.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "[fail]" not in result.stdout, result.stdout
        assert result.returncode in (0, 2), result.stdout  # 2: warnings (no post-quantum kex)
        assert "(key) ssh-ed25519" in result.stdout
        assert "DHEat" not in result.stdout, result.stdout
        assert "OpenSSH_9.2" in subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr
        hello = Client(tmp_path, r).run("-b", "127.0.0.2", command=("register-hostkey",))
        assert "usage: register-hostkey" in hello.stderr  # logged in, default algorithms


def test_rotating_a_key_drops_its_connections_and_refuses_it(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    (tmp_path / "config.yaml").write_text("")  # the CLI needs a config path; see below
    with running_endpoint(config, tmp_path / "state") as r:
        c = Client(tmp_path, r)
        with c.forward(f"127.0.0.1:{ssh_local(config)}:127.0.0.1:9") as proc:
            r.wait_for(lambda f: f["up"])
            old_fp = r.keys.tunnel_key("colab").fingerprint
            new = r.keys.rotate("colab")
            assert new.fingerprint != old_fp
            r.call(r.endpoint.drop_rotated)
            r.wait_for(lambda f: not f["up"] and f["connections"] == 0, timeout=5)
            assert proc.wait(5) == 255
        again = c.run(command=("register-hostkey",))
        assert "Permission denied (publickey)" in again.stderr
        c.key.write_text(r.keys.tunnel_private_text("colab"))
        assert "usage: register-hostkey" in c.run(command=("register-hostkey",)).stderr


def _wait_listening(port: int) -> None:
    def listens() -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        return False

    wait_until(listens, 10, f"a listener on port {port}")


def _wait_log(caplog, text: str, timeout: float = 5.0) -> None:
    try:
        wait_until(lambda: text in caplog.text, timeout, f"{text!r} in the log")
    except AssertionError:
        raise AssertionError(f"{text!r} not logged; log:\n{caplog.text}") from None


# -- strangers cannot starve the client that matters ---------------------------------------------

STRANGER_ATTEMPTS = 200  # bounded: the random early drop makes filling the cap take a few more


def _hold_the_cap(r: RunningEndpoint, cap: int) -> list[socket.socket]:
    """Silent strangers from 127.0.0.2, .3, … (3 each) until ``cap`` of them wait at once."""
    held: list[socket.socket] = []
    for attempt in range(STRANGER_ATTEMPTS):
        s = _connect_from(f"127.0.0.{2 + attempt // 3}", r.port)  # 3 per source, its cap
        if _is_refused(s):  # dropped before the banner
            s.close()
        else:
            held.append(s)
        if len(held) == cap:
            return held
    raise AssertionError(f"only {len(held)} of {cap} strangers held after {STRANGER_ATTEMPTS}")


def test_a_client_that_logged_in_before_gets_in_within_2s_while_strangers_hold_the_cap(
    tmp_path: Path,
) -> None:
    # Loopback is exempt from penalties by default, so the strangers stay on; a long login
    # timeout keeps them waiting for the whole test.
    config = make_config(tmp_path, "max_unauthenticated: 6\nlogin_timeout: 60s")
    forward = f"127.0.0.1:{ssh_local(config)}:127.0.0.1:9"
    with running_endpoint(config, tmp_path / "state") as r:
        c = Client(tmp_path, r)
        with c.forward(forward):
            r.wait_for(lambda f: f["up"])
    # A restart in between: the endpoint remembers who logged in (state directory).
    with running_endpoint(config, tmp_path / "state") as r:
        held = _hold_the_cap(r, 6)
        try:
            assert _refused_from("127.0.0.250", r.port), "a new stranger is refused at the cap"
            c = Client(tmp_path, r)
            start = time.monotonic()
            with c.forward(forward) as proc:
                facts = r.wait_for(lambda f: f["up"] or proc.poll() is not None, timeout=2.0)
                took = time.monotonic() - start
                assert facts["up"], proc.stderr.read() if proc.stderr else ""
            print(f"logged in again in {took:.2f} s with {len(held)} strangers holding the cap")
            assert took < 2.0
            assert all(not _is_closed(s) for s in held), "the strangers still wait"
        finally:
            for s in held:
                s.close()


def _is_closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


# -- peer-supplied text in the log ---------------------------------------------------------------

FORGED = "\n2026-12-01 09:00:00 INFO gateway.tunnel: session colab: Colab logged in"


def test_a_forward_destination_with_a_newline_is_logged_escaped_on_one_line(
    tmp_path: Path, caplog
) -> None:
    config = make_config(tmp_path)
    with (
        running_endpoint(config, tmp_path / "state") as r,
        caplog.at_level(logging.INFO, "gateway.tunnel"),
    ):
        key = asyncssh.import_private_key(r.keys.tunnel_private_text("colab"))

        async def attack() -> None:
            async with asyncssh.connect(
                "127.0.0.1",
                r.port,
                username="colab",
                client_keys=[key],
                known_hosts=None,
            ) as conn:
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.create_connection(asyncssh.SSHTCPSession, "evil" + FORGED, 80)
                with pytest.raises(asyncssh.ChannelListenError):
                    await conn.forward_remote_port("evil" + FORGED, 1, "localhost", 9)
                conn.disconnect(asyncssh.DISC_PROTOCOL_ERROR, "bye" + FORGED)

        with contextlib.suppress(asyncssh.Error, OSError):
            asyncio.run(attack())
        _wait_log(caplog, "closed (")
    forged = [rec.getMessage() for rec in caplog.records if "Colab logged in" in rec.getMessage()]
    injected = [m for m in forged if "evil" in m or "bye" in m]
    assert len(injected) >= 2, caplog.text  # the -L destination and the disconnect reason
    for message in injected:
        assert "\n" not in message, message
        assert "\\n2026-12-01" in message, message
    # Only the real login line is a line of its own.
    assert [m for m in forged if m.startswith("session colab: Colab logged in")] == [
        m for m in forged if "evil" not in m and "bye" not in m
    ]


# -- post-quantum key exchange -------------------------------------------------------------------

MLKEM = "mlkem768x25519-sha256"
SNTRUP = "sntrup761x25519-sha512@openssh.com"


def _negotiated_kex(result: subprocess.CompletedProcess[str]) -> str:
    for line in result.stderr.splitlines():
        if "kex: algorithm: " in line:
            return line.split("kex: algorithm: ", 1)[1].strip()
    raise AssertionError(f"no kex line in ssh -vv output:\n{result.stderr}")


def _ssh_kex_list(ssh: str) -> list[str]:
    return subprocess.run([ssh, "-Q", "kex"], capture_output=True, text=True).stdout.split()


def test_a_hybrid_post_quantum_kex_is_offered_first_and_curve25519_still_works(
    tmp_path: Path,
) -> None:
    from asyncssh.crypto import mlkem_available

    assert mlkem_available, "asyncssh lost ML-KEM (cryptography too old?): see docs/tunnel.md"
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        key = asyncssh.import_private_key(r.keys.tunnel_private_text("colab"))

        async def login(kex: str) -> None:
            async with asyncssh.connect(
                "127.0.0.1",
                r.port,
                username="colab",
                client_keys=[key],
                known_hosts=None,
                kex_algs=[kex],
            ):
                pass

        asyncio.run(login(MLKEM))  # a client that knows nothing else gets in
        c = Client(tmp_path, r)
        # The system's OpenSSH 9.2 has no ML-KEM: it takes its own first choice we offer.
        default = c.run("-vv", command=("register-hostkey",))
        assert "usage: register-hostkey" in default.stderr
        expected = SNTRUP if SNTRUP in _ssh_kex_list("ssh") and _liboqs() else "curve25519-sha256"
        assert _negotiated_kex(default) == expected
        # Colab's OpenSSH 8.9 and focal's 8.2 offer curve25519-sha256 first.
        forced = c.run("-vv", "-oKexAlgorithms=curve25519-sha256", command=("register-hostkey",))
        assert "usage: register-hostkey" in forced.stderr
        assert _negotiated_kex(forced) == "curve25519-sha256"


def _liboqs() -> bool:
    return bool(ctypes.util.find_library("oqs") or ctypes.util.find_library("liboqs"))


def _pq_ssh() -> str | None:
    """An OpenSSH client with ML-KEM (9.9+): $GATEWAY_TEST_PQ_SSH, else the system's."""
    for candidate in (os.environ.get("GATEWAY_TEST_PQ_SSH"), "ssh"):
        if candidate and MLKEM in _ssh_kex_list(candidate):
            return candidate
    return None


def test_an_openssh_9_9_client_negotiates_mlkem768x25519(tmp_path: Path) -> None:
    ssh = _pq_ssh()
    if ssh is None:
        pytest.skip(
            "no OpenSSH >= 9.9 client here (Debian 12 has 9.2); set GATEWAY_TEST_PQ_SSH to one"
        )
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        c = Client(tmp_path, r)
        result = subprocess.run(
            [ssh, *c.args("-vv")[1:], "register-hostkey"],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
        assert "usage: register-hostkey" in result.stderr, result.stderr
        assert _negotiated_kex(result) == MLKEM


def test_sntrup761_is_offered_only_with_liboqs() -> None:
    """asyncssh does sntrup761x25519 only through liboqs (not in Debian 12, not on PyPI
    without a download at build time). Fails when that changes, so docs/tunnel.md is updated."""
    from asyncssh.crypto import sntrup_available

    from gateway.tunnel.server import kex_algorithms

    assert sntrup_available == _liboqs()
    assert (SNTRUP in kex_algorithms()) == sntrup_available
    assert kex_algorithms()[0] == MLKEM
    assert "curve25519-sha256" in kex_algorithms()


def test_the_vm_host_key_is_pinned_when_the_colab_ssh_port_is_not_22(
    tmp_path: Path, pi_key: Path, vms: list[ColabVM]
) -> None:
    """docs/tunnel.md tells a user whose VM port 22 is taken to change forwards.ssh.colab:
    the Pi must still pin the VM's key for the ssh forward, or tmux cannot log in."""
    local = free_port()
    config = make_config(tmp_path, forwards={"ssh": (2222, local)})
    with running_endpoint(config, tmp_path / "state") as r:
        vm = make_vm(tmp_path, r, config, pi_key=pi_key)
        vms.append(vm)
        done = vm.run_bootstrap()
        assert done.returncode == 0, done.stderr
        r.wait_for(lambda f: f["up"] and f["hostkey_fingerprint"])
        assert r.known_hosts.read_text().splitlines() == [
            f"[localhost]:{local} " + " ".join(Path(f"{vm.hostkey}.pub").read_text().split()[:2])
        ]
        result = pi_ssh(local, r.known_hosts, pi_key, "echo", "pinned")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "pinned\n"
