"""Shared machinery of the tunnel tests: a real endpoint on loopback, in its own thread,
and a simulated Colab VM (the rendered bootstrap script, a real sshd on a high port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Config, load_config_text
from gateway.tunnel.bootstrap import BootstrapParams, render_bootstrap_script
from gateway.tunnel.keys import KeyStore
from gateway.tunnel.server import Endpoint
from helpers import free_port

SSHD = "/usr/sbin/sshd"


# Only the tunnel on: browser and tmux would want sessions and programs.
TUNNEL_ONLY = "browser: {enabled: false}\ntmux: {enabled: false}\n"


def tunnel_config(text: str = "") -> Any:
    """The tunnel section of a config whose ``tunnel:`` holds ``text`` (YAML lines)."""
    return load_config_text(
        TUNNEL_ONLY + "tunnel:\n" + "".join(f"  {line}\n" for line in text.splitlines())
    ).config.tunnel


def make_config(
    tmp_path: Path,
    extra_tunnel: str = "",
    forwards: dict[str, tuple[int, int]] | None = None,
    sessions: tuple[str, ...] = ("colab",),
) -> Config:
    lines = ["sessions:"]
    for i, name in enumerate(sessions):
        fwd = forwards if (forwards and i == 0) else {"ssh": (22, free_port())}
        lines += [
            f"  - name: {name}",
            "    notebook_url: https://colab.research.google.com/drive/abc",
            "    forwards:",
        ]
        lines += [f"      {k}: {{colab: {c}, local: {loc}}}" for k, (c, loc) in fwd.items()]
    lines += ["tunnel:", f"  listen: 127.0.0.1:{free_port()}", "  public_host: 127.0.0.1"]
    lines += [f"  {line}" for line in extra_tunnel.strip().splitlines() if line.strip()]
    lines += [
        "browser: {enabled: false}",
        "tmux: {enabled: false}",
        f"ssh: {{identity: {tmp_path / 'pi' / 'id_ed25519'}}}",
    ]
    return load_config_text("\n".join(lines) + "\n").config


@dataclass
class RunningEndpoint:
    endpoint: Endpoint
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    keys: KeyStore
    known_hosts: Path
    events: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.endpoint.port

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the endpoint's loop and return its result."""

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(5)

    def facts(self, session: str = "colab") -> dict[str, Any]:
        return self.call(lambda: self.endpoint.facts(session))

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
        session: str = "colab",
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            facts = self.facts(session)
            if predicate(facts):
                return facts
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s; facts: {facts}")
            time.sleep(0.05)


@contextlib.contextmanager
def running_endpoint(
    config: Config, state_dir: Path, **endpoint_options: Any
) -> Iterator[RunningEndpoint]:
    """The endpoint on its own loop in a thread; ``endpoint_options`` go to Endpoint()."""
    keys = KeyStore(state_dir / "keys")
    keys.ensure([s.name for s in config.sessions])
    known_hosts = state_dir / "known_hosts"
    loop = asyncio.new_event_loop()
    events: list[tuple[float, str, dict[str, Any]]] = []
    holder: dict[str, Endpoint] = {}

    def on_change(session: str) -> None:
        events.append((time.monotonic(), session, holder["e"].facts(session)))

    endpoint = Endpoint(config, keys, known_hosts, on_change, **endpoint_options)
    holder["e"] = endpoint
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(endpoint.start(), loop).result(10)
    running = RunningEndpoint(endpoint, loop, thread, keys, known_hosts, events)
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(endpoint.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def ssh_keygen(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class ColabVM:
    """What the bootstrap made: a real sshd and a detached tunnel loop, in ``dir``."""

    dir: Path
    sshd_port: int
    env: dict[str, str]
    script: str
    hostkey: Path

    def run_bootstrap(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", self.script],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def loop_pid(self) -> int | None:
        try:
            pid = int((self.dir / "tunnel.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self) -> None:
        pid = self.loop_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
                os.killpg(pid, signal.SIGTERM)
            _wait_gone(pid)
        try:
            sshd = int((self.dir / "sshd.pid").read_text())
        except (FileNotFoundError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(sshd, signal.SIGTERM)
        _wait_gone(sshd)


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def make_vm(
    tmp_path: Path,
    running: RunningEndpoint,
    config: Config,
    name: str = "vm",
    session: str = "colab",
    pi_key: Path | None = None,
    extra_keys: tuple[str, ...] = (),
) -> ColabVM:
    vm_dir = tmp_path / name
    vm_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = vm_dir / "tunnel_key"
    key_file.write_text(running.keys.tunnel_private_text(session))
    key_file.chmod(0o600)
    sess = config.session(session)
    pi_pub = pi_key.with_name(pi_key.name + ".pub").read_text().strip() if pi_key else ""
    params = BootstrapParams(
        endpoint_host="127.0.0.1",
        endpoint_port=running.port,
        username=config.tunnel.username,
        endpoint_hostkey=" ".join(running.keys.host_info().public.split()[:2]),
        forwards={f.local: f.colab for f in sess.forwards.values()},
        pi_public_key="\n".join([pi_pub, *extra_keys]),
        session=session,
        sshd_port=sess.forwards["ssh"].colab,  # as bootstrap.params_for renders it
    )
    sshd_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(vm_dir),
        "GW_DIR": str(vm_dir / "gw"),
        "GW_KEY_FILE": str(key_file),
        "GW_SSHD_PORT": str(sshd_port),
        "GW_SSHD_HOSTKEY": str(vm_dir / "ssh_host_ed25519_key"),
        "GW_AUTHORIZED_KEYS": str(vm_dir / "authorized_keys"),
        "GW_SSHD_EXTRA": "StrictModes no",
        "GW_INSTALL": "0",
        "GW_BIN": str(vm_dir / "bin"),  # gw-notify, gw-run: not this machine's /usr/local/bin
        "GW_WAIT": "10",
        "GW_BACKOFF_MAX": "2",
    }
    return ColabVM(
        vm_dir / "gw",
        sshd_port,
        env,
        render_bootstrap_script(params),
        vm_dir / "ssh_host_ed25519_key",
    )


def pi_ssh(
    port: int, known_hosts: Path, identity: Path, *command: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """The Pi's own ssh through the tunnel, checking the pinned host key strictly."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(port),
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-i",
            str(identity),
            "-o",
            "ConnectTimeout=10",
            "root@localhost",
            *command,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
