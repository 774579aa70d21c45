"""The role on arm64, the card's own architecture: an arm64 Debian 12 root (debootstrap
--arch=arm64, cached like the x86_64 one) runs under qemu-user through binfmt_misc, boots
with systemd-nspawn and takes the role's play, as a new user's Pi would.

Run by `make test-arm64` (COLAB_GATEWAY_TEST_ARM64=1), not by `make test`: the emulated
play alone takes minutes of both cores (docs/install.md, "arm64, emulated"). What emulation
changes, learnt on this machine and worked around here rather than in the role:

- qemu-user registered with flags OCPF (helpers/binfmt.py): sudo, Ansible's `become`,
  needs C.
- clone(CLONE_NEWNS) fails with EINVAL under qemu-user, so systemd-sysusers and
  systemd-tmpfiles-setup fail at boot ("at step CREDENTIALS"): run by hand after boot. The
  units' seccomp-based settings are not enforced under emulation either (NoNewPrivs and the
  capability bounding set are): the exposure figure below is systemd's reading of the unit,
  not proof of the sandbox.
- nspawn's SIGTERM arrives in the emulated systemd as the rescue signal: the machine is
  powered off from inside.
- Chromium does not run under qemu-user: the browser is off (its packages are skipped).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import binfmt, free_port
from helpers.deploy import (
    AS_SERVICE,
    LOGIN_USER,
    TMUX_SESSION,
    VENV,
    Controller,
    Machine,
    ansible_core_venv,
    ansible_core_version,
    cached_root_tarball,
    changed_tasks,
    missing_prerequisite,
    newest_ansible_core,
    newest_python_for_ansible_core,
    prepare_root,
    recap,
    run_playbook,
    wait_active,
)

GATE = "COLAB_GATEWAY_TEST_ARM64"
BOOT_TIMEOUT = 900.0  # systemd, sshd and their children all emulated
EM_AARCH64 = 183  # e_machine of an aarch64 ELF file
# What the role's wheel pulls in that is compiled: each must be there, built for aarch64.
COMPILED = ("cryptography", "cffi", "psutil", "yaml")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.timeout(3000),
    pytest.mark.random_order(disabled=True),  # one machine, in file order
    pytest.mark.skipif(
        os.environ.get(GATE) != "1", reason=f"arm64 under emulation: make test-arm64 ({GATE}=1)"
    ),
]


@dataclass
class Phases:
    """Seconds per phase, printed as they end and summed at the end (docs/install.md)."""

    started: float = field(default_factory=time.monotonic)
    seconds: dict[str, float] = field(default_factory=dict)
    _mark: float = field(default_factory=time.monotonic)

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self._mark
        self._mark = now
        print(f"arm64 phase {name}: {self.seconds[name]:.0f}s")

    def summary(self) -> str:
        parts = ", ".join(f"{name} {s:.0f}s" for name, s in self.seconds.items())
        return f"arm64 total {time.monotonic() - self.started:.0f}s: {parts}"


@dataclass
class Arm64:
    machine: Machine
    controller: Controller
    inventory: Path
    workdir: Path
    tunnel_port: int
    first_play: str
    phases: Phases

    def play(self) -> subprocess.CompletedProcess[str]:
        return run_playbook(self.controller, self.inventory, self.workdir)


def _controller() -> Controller:
    """The newest ansible-core, as in test_deploy.py; else the project venv's."""
    newest = newest_python_for_ansible_core()
    if newest is None:
        playbook = Path(sys.executable).parent / "ansible-playbook"
    else:
        version, python = newest
        playbook = ansible_core_venv(python, version, newest_ansible_core(python))
        playbook = playbook / "bin/ansible-playbook"
    return Controller(playbook, *ansible_core_version(playbook))


def _inventory(machine: Machine, path: Path, tunnel_port: int) -> None:
    host = {
        "ansible_host": "127.0.0.1",
        "ansible_port": machine.ssh_port,
        "ansible_user": LOGIN_USER,
        "ansible_ssh_private_key_file": str(machine.key),
        "ansible_ssh_common_args": (
            f"-F none -o UserKnownHostsFile={machine.known_hosts} -o StrictHostKeyChecking=yes"
        ),
    }
    variables = {
        "colab_gateway_venv": VENV,
        "colab_gateway_browser_enabled": False,  # Chromium does not run under qemu-user
        "colab_gateway_tunnel_listen": f"127.0.0.1:{tunnel_port}",
        "colab_gateway_tmux_session": TMUX_SESSION,
        "colab_gateway_sessions": [
            {
                "name": "colab",
                "notebook_url": "https://colab.research.google.com/drive/deploy-test",
                "forwards": {"ssh": {"colab": 22, "local": free_port()}},
            }
        ],
    }
    inventory = {"colab_gateway": {"hosts": {"deploytest": host}, "vars": variables}}
    path.write_text(json.dumps(inventory, indent=2))


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm64]:
    problem = missing_prerequisite() or binfmt.why_not()
    if problem:
        pytest.skip(problem)
    phases = Phases()
    base = tmp_path_factory.mktemp("arm64")
    with binfmt.aarch64_emulation():
        tarball = cached_root_tarball("arm64")
        phases.done("root (debootstrap, or the cached tarball)")
        root = base / "root"
        root.mkdir()
        machine = Machine(
            root=root,
            name=f"cgw-arm64-{os.getpid()}",
            ssh_port=free_port(),
            key=base / "id_ed25519",
            known_hosts=base / "known_hosts",
            log=base / "boot.log",
            boot_timeout=BOOT_TIMEOUT,
            power_off_inside=True,
        )
        try:
            subprocess.run(
                ["tar", "--numeric-owner", "-C", str(root), "-xpf", str(tarball)], check=True
            )
            # Debian 12's own python3 stays: the x86_64 test covers the role bringing one.
            prepare_root(machine, keep_python=True)
            phases.done("unpack and prepare")
            machine.boot()
            # What boot could not do under qemu-user (clone(CLONE_NEWNS) fails): the
            # system users and the boot-time tmpfiles, except /run/nologin, which only
            # systemd-user-sessions (done by now) would remove again.
            machine.run("sudo systemd-sysusers", check=False, timeout=300)
            tmpfiles = "systemd-tmpfiles --create --remove --boot --exclude-prefix=/run/nologin"
            machine.run(f"sudo {tmpfiles}", check=False, timeout=300)
            arch = machine.run("uname -m").stdout.strip()
            assert arch == "aarch64", f"the machine runs {arch!r}, not emulated aarch64"
            phases.done("boot")
            workdir = base / "ansible"
            workdir.mkdir()
            tunnel_port = free_port()
            inventory = workdir / "inventory.yml"
            _inventory(machine, inventory, tunnel_port)
            controller = _controller()
            result = run_playbook(controller, inventory, workdir)
            assert result.returncode == 0, f"the arm64 play failed:\n{result.stdout[-6000:]}"
            print(f"arm64 first play: recap {recap(result.stdout)}")
            phases.done("first play")
            yield Arm64(machine, controller, inventory, workdir, tunnel_port, result.stdout, phases)
        finally:
            machine.power_off()
            phases.done("power off")
            print(phases.summary())
            subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


def test_the_service_and_the_tmux_server_are_active(arm64: Arm64) -> None:
    wait_active(arm64.machine, "colab-gateway-tmux", timeout=300)
    wait_active(arm64.machine, "colab-gateway", timeout=300)


def test_the_first_play_started_the_tmux_server_once(arm64: Arm64) -> None:
    journal = "sudo journalctl -b -u colab-gateway-tmux -o cat --no-pager | grep -c '^Starting '"
    assert arm64.machine.run(journal, check=False).stdout.strip() == "1"


def test_the_endpoint_answers_with_its_banner(arm64: Arm64) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            with socket.create_connection(("127.0.0.1", arm64.tunnel_port), timeout=30) as conn:
                conn.settimeout(60)
                assert conn.recv(64).startswith(b"SSH-2.0-")
                return
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the endpoint never listened"
            time.sleep(1)


def test_status_answers(arm64: Arm64) -> None:
    status = arm64.machine.run(f"{AS_SERVICE} colab-gateway status", check=False, timeout=300)
    assert status.stdout.startswith("colab-gateway: "), status.stdout + status.stderr
    print(f"arm64 status: {status.stdout.strip()}")


def _elf_machine(path: Path) -> int:
    with open(path, "rb") as file:
        header = file.read(20)
    assert header[:4] == b"\x7fELF", path
    return int.from_bytes(header[18:20], "little")


def test_every_compiled_module_in_the_venv_is_aarch64(arm64: Arm64) -> None:
    """Read from this side, in the machine's root: no x86_64 (or pure-Python fallback)
    module slipped in from the controller or a cache."""
    venv = arm64.machine.root / VENV.lstrip("/")
    modules = sorted(venv.rglob("*.so"))
    wrong = [str(m.relative_to(venv)) for m in modules if _elf_machine(m) != EM_AARCH64]
    assert not wrong, wrong
    names = " ".join(str(m.relative_to(venv)) for m in modules)
    missing = [name for name in COMPILED if name not in names]
    assert not missing, f"no compiled module of {missing} in {VENV}: {names}"
    print(f"arm64 venv: {len(modules)} compiled modules, all aarch64")


def test_systemd_analyze_security_figure(arm64: Arm64) -> None:
    security = arm64.machine.run(
        "sudo systemd-analyze security --no-pager colab-gateway.service", timeout=300
    ).stdout
    level = security.rsplit("Overall exposure level for colab-gateway.service:", 1)
    assert len(level) == 2, security[-2000:]
    figure = float(level[1].split()[0])
    print(f"arm64 systemd-analyze security colab-gateway.service: {figure}")
    assert figure <= 3.0, security  # the unit's reading, as on x86_64


def test_a_second_play_changes_nothing(arm64: Arm64) -> None:
    started = time.monotonic()
    result = arm64.play()
    assert result.returncode == 0, result.stdout[-6000:]
    counts = recap(result.stdout)
    print(f"arm64 second play: {time.monotonic() - started:.0f}s, recap {counts}")
    assert counts["changed"] == 0, changed_tasks(result.stdout)
    arm64.phases.done("checks and second play")
