"""Real programs for the tmux keeper's tests: tmux on an isolated socket, sshd, the daemon.

Every wait is bounded; every process started here is stopped by its fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from helpers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
READY_MARK = "REMOTE-SHELL-READY"


def short_dir(prefix: str) -> Path:
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def descendants(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def runs_child(pid: int, name: str) -> bool:
    """Whether a descendant of ``pid`` runs the program ``name``."""
    for child in descendants(pid):
        with suppress(psutil.Error):
            if psutil.Process(child).name() == name:
                return True
    return False


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- tmux -------------------------------------------------------------------------------------


def tmux(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, timeout=10, env=env, check=check
    )


def keeper_windows(tmux_session: str = "colab") -> dict[str, str]:
    """window id -> @colab-gateway owner, for every window of the keeper's session."""
    out = tmux(
        "list-windows",
        "-t",
        f"={tmux_session}",
        "-F",
        "#{window_id}\t#{@colab-gateway}",
        check=False,
    )
    if out.returncode != 0:
        return {}
    return dict(line.split("\t", 1) for line in out.stdout.splitlines())


def keeper_window(session: str = "colab", tmux_session: str = "colab") -> str | None:
    for window_id, owner in keeper_windows(tmux_session).items():
        if owner == session:
            return window_id
    return None


def capture(target: str) -> str:
    out = tmux("capture-pane", "-p", "-J", "-t", target, check=False)
    return out.stdout if out.returncode == 0 else ""


def wait_for_text(target_of: Callable[[], str | None], text: str, timeout: float) -> str:
    def look() -> str | None:
        target = target_of()
        if target is None:
            return None
        screen = capture(target)
        return screen if text in screen else None

    return str(wait_until(look, timeout, f"{text!r} on the tmux pane"))


@pytest.fixture
def tmux_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated default tmux socket (TMUX_TMPDIR), killed afterwards."""
    tmpdir = short_dir("cg-tmux-")
    monkeypatch.setenv("TMUX_TMPDIR", str(tmpdir))
    monkeypatch.delenv("TMUX", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    yield tmpdir
    tmux("kill-server", check=False)
    shutil.rmtree(tmpdir, ignore_errors=True)


# -- ssh ----------------------------------------------------------------------------------------


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        timeout=20,
    )
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """A real OpenSSH server on 127.0.0.1, standing in for the Colab VM's (or the Pi's)."""

    def __init__(
        self, directory: Path, authorized: list[str], port: int | None = None, extra: str = ""
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.port = port or free_port()
        self.host_key_public = keygen(directory / "host_key")
        (directory / "authorized_keys").write_text("\n".join(authorized) + "\n")
        (directory / "sshd_config").write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {directory / 'host_key'}\n"
            f"PidFile {directory / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel ERROR\n" + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir

    def start(self) -> None:
        with open(self.dir / "sshd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited: {(self.dir / 'sshd.log').read_text()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 10, f"sshd on port {self.port}")

    def stop(self) -> None:
        """Kill the listener and every connection it serves, as a vanished VM would."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def known_hosts_line(self, name: str | None = None) -> str:
        key_type, key = self.host_key_public.split()[:2]
        return f"{name or f'[localhost]:{self.port}'} {key_type} {key}"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to log in as root, as the Colab VM's does")


# -- the daemon ---------------------------------------------------------------------------------


class Daemon:
    """``colab-gateway run`` (plus the test's tunnel switch) in its own process group."""

    def __init__(
        self,
        base: Path,
        identity: Path,
        ssh_port: int,
        tmux_enabled: bool = True,
        extra_sessions: tuple[str, ...] = (),
    ) -> None:
        self.base = base
        self.config = base / "config.yaml"
        self.state_dir = base / "state"
        self.runtime_dir = base / "run"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log = base / "daemon.log"
        self.identity = identity
        self.ssh_port = ssh_port
        self.tmux_enabled = tmux_enabled
        self.write_config(extra_sessions)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, extra_sessions: tuple[str, ...] = ()) -> None:
        """Sessions colab (on ssh_port) and ``extra_sessions`` (on the ports after it)."""
        sessions = [
            f"  - name: {name}\n"
            "    notebook_url: https://colab.research.google.com/drive/test\n"
            f"    forwards: {{ssh: {{colab: 22, local: {self.ssh_port + index}}}}}\n"
            for index, name in enumerate(("colab", *extra_sessions))
        ]
        self.config.write_text(
            "sessions:\n" + "".join(sessions) + "tunnel: {enabled: false}\n"
            "browser: {enabled: false}\n"
            f"tmux: {{enabled: {str(self.tmux_enabled).lower()}, session: colab}}\n"
            f"ssh: {{identity: {self.identity}, server_alive_interval: 5s}}\n"
        )

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    def path_args(self) -> list[str]:
        return [
            "-c",
            str(self.config),
            "--state-dir",
            str(self.state_dir),
            "--runtime-dir",
            str(self.runtime_dir),
        ]

    def start(self) -> None:
        # Not under systemd, whatever runs the tests: the keeper may start tmux at once.
        env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "tests" / "helpers" / "tunnel_switch_daemon.py"),
                    *self.path_args(),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                cwd=self.base,
                env=env,
            )
        wait_until(self._switch_ready, 15, "the daemon's tunnel switch")

    def _switch_ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
        return (self.runtime_dir / "tunnel-switch.sock").exists()

    def tunnel(self, up: bool, session: str = "colab") -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.runtime_dir / "tunnel-switch.sock"))
            sock.sendall(f"{'up' if up else 'down'} {session}\n".encode())
            assert sock.recv(16) == b"ok\n"

    def status(self) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.runtime_dir / "status.sock"))
            sock.sendall(b"status\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return dict(json.loads(data))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon; SIGKILL hits its whole process group, as a crash would."""
        if self.proc is None:
            return
        if sig == signal.SIGKILL:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
            raise AssertionError("the daemon did not stop within 15s of SIGTERM") from None
        self.proc = None
