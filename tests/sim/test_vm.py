"""The simulated Colab VM: namespaces, veth, a real sshd with fresh host keys, cleanup.

These use the real programs (ip, sshd, ssh, ssh-keygen) and need root for namespaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from helpers import wait_until

from gateway.sim import netns
from gateway.sim.vm import SimVM, cleanup_stale, simulated_vm

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[SimVM]:
    with simulated_vm(tmp_path) as vm:
        yield vm


def keyscan(vm: SimVM) -> str:
    out = vm.run(["ssh-keyscan", "-t", "ed25519", "-p", "22", "127.0.0.1"]).stdout
    return " ".join(out.split()[1:3])


def test_vm_is_a_separate_host_joined_to_the_pi_by_a_veth(vm: SimVM) -> None:
    shown = vm.run(["sh", "-c", "hostname; ip -o -4 addr show dev uplink0"]).stdout
    assert shown.splitlines()[0] == f"colab-{vm.vm_id}"
    assert f"inet {netns.VM_ADDRESS}/30" in shown
    # The machine's own namespace never sees the link or its addresses.
    host_addrs = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert netns.PI_ADDRESS not in host_addrs and netns.VM_ADDRESS not in host_addrs

    # The VM reaches a server on the Pi's end of the veth.
    with vm.network.entered_pi():
        server = socket.socket()
    with server:
        server.bind((netns.PI_ADDRESS, 0))
        server.listen()
        port = server.getsockname()[1]
        dial = vm.popen(
            ["bash", "-c", f"echo hello-from-vm >/dev/tcp/{netns.PI_ADDRESS}/{port}"], name="dial"
        )
        server.settimeout(10)
        conn, (peer, _) = server.accept()
        with conn:
            assert conn.recv(100) == b"hello-from-vm\n"
        assert peer == netns.VM_ADDRESS
        assert dial.wait(10) == 0


def test_the_pi_cannot_reach_the_vms_sshd_except_through_a_tunnel(vm: SimVM) -> None:
    with vm.network.entered_pi(), pytest.raises(OSError):
        socket.create_connection((netns.VM_ADDRESS, 22), timeout=3)
    # From inside the VM it answers, with the VM's own host key.
    assert keyscan(vm) == vm.host_key()


def test_processes_see_the_vms_own_root_and_etc_ssh(vm: SimVM) -> None:
    vm.run(["sh", "-c", "mkdir -p /root/.ssh && echo key > /root/.ssh/authorized_keys"])
    assert (vm.root_home / ".ssh" / "authorized_keys").read_text() == "key\n"
    assert not Path("/root/.ssh/authorized_keys").exists() or (
        Path("/root/.ssh/authorized_keys").read_text() != "key\n"
    )
    listed = vm.run(["ls", "/etc/ssh"]).stdout.split()
    assert sorted(listed) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sshd_config"]


def test_reset_gives_a_new_vm_with_a_new_host_key(vm: SimVM) -> None:
    old_id, old_key = vm.vm_id, vm.host_key()
    sleeper = vm.popen(["sleep", "300"], name="sleeper")
    vm.run(["sh", "-c", "echo data > /root/notes"])
    new_id = vm.reset()
    assert new_id == vm.vm_id != old_id
    assert vm.host_key() != old_key
    assert keyscan(vm) == vm.host_key()
    assert sleeper.poll() is not None, "processes of the old VM must be gone"
    assert not (vm.root_home / "notes").exists(), "the new VM's disk is fresh"
    assert vm.run(["hostname"]).stdout.strip() == f"colab-{new_id}"


def test_cell_reads_its_secret_from_the_simulated_userdata(vm: SimVM) -> None:
    cell = vm.run_cell(
        "from google.colab import userdata\n"
        "print('got', userdata.get('colab_tunnel_key'))\n"
        "try:\n    userdata.get('missing')\nexcept userdata.SecretNotFoundError:\n"
        "    print('missing is missing')\n",
        secrets={"colab_tunnel_key": "s3cret"},
    )
    assert cell.wait(20) == 0
    log = (vm.logs_dir / f"cell-{vm.generation}.log").read_text()
    assert "got s3cret" in log and "missing is missing" in log
    assert (vm.tmp / "sim-colab-secrets.json").stat().st_mode & 0o077 == 0


def _pi_sshd(vm: SimVM, tmp_path: Path, authorized: str) -> tuple[subprocess.Popen[bytes], int]:
    """A stand-in endpoint on the Pi: OpenSSH's own sshd accepting the VM's `ssh -R`."""
    pi = tmp_path / "pi"
    pi.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(pi / "hostkey")], check=True
    )
    (pi / "authorized_keys").write_text(authorized)
    with vm.network.entered_pi():
        probe = socket.socket()
        probe.bind((netns.PI_ADDRESS, 0))
        port = probe.getsockname()[1]
        probe.close()
    (pi / "sshd_config").write_text(
        f"ListenAddress {netns.PI_ADDRESS}:{port}\nHostKey {pi}/hostkey\nPidFile none\n"
        f"AuthorizedKeysFile {pi}/authorized_keys\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding remote\nStrictModes no\n"
    )
    with (pi / "sshd.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                *netns.exec_prefix(vm.network.pi_ns),
                "sh", "-c", "mount -t tmpfs pi-run /run && mkdir /run/sshd && exec \"$@\"", "pi",
                "/usr/sbin/sshd", "-D", "-e", "-f", str(pi / "sshd_config"),
            ],
            stderr=log,
        )  # fmt: skip

    def answers() -> bool:
        with vm.network.entered_pi(), contextlib.suppress(OSError):
            socket.create_connection((netns.PI_ADDRESS, port), timeout=1).close()
            return True
        return False

    try:
        wait_until(answers, 10, "the Pi's stand-in sshd")
    except AssertionError:
        proc.kill()
        raise
    return proc, port


def test_vm_dials_the_pi_with_ssh_R_and_the_pi_logs_in_through_it(
    vm: SimVM, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("tunnel", "pi"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    endpoint, port = _pi_sshd(vm, tmp_path, (keys / "tunnel.pub").read_text())
    try:
        ssh_dir = vm.root_home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "tunnel").write_bytes((keys / "tunnel").read_bytes())
        (ssh_dir / "tunnel").chmod(0o600)
        (ssh_dir / "authorized_keys").write_text((keys / "pi.pub").read_text())
        vm.run_script(
            "exec ssh -N -i /root/.ssh/tunnel -o StrictHostKeyChecking=no "
            "-o ExitOnForwardFailure=yes "
            f"-R 127.0.0.1:20022:127.0.0.1:22 -p {port} root@{netns.PI_ADDRESS}\n"
        )
        login = [
            *netns.exec_prefix(vm.network.pi_ns),
            "ssh", "-i", str(keys / "pi"), "-p", "20022", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={tmp_path}/known_hosts",
            "-o", "StrictHostKeyChecking=accept-new", "root@127.0.0.1", "hostname",
        ]  # fmt: skip
        tries: list[subprocess.CompletedProcess[str]] = []

        def logs_in() -> bool:
            tries.append(subprocess.run(login, capture_output=True, text=True, timeout=10))
            return tries[-1].returncode == 0

        with contextlib.suppress(AssertionError):
            wait_until(logs_in, 15, "ssh through the tunnel", interval=0.1)
        result = tries[-1]
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"colab-{vm.vm_id}"
        # What the Pi pinned is the VM's host key.
        assert vm.host_key() in (tmp_path / "known_hosts").read_text()

        assert len(vm.tunnel_pids()) == 1
        killed = vm.kill_tunnel()
        assert killed and not vm.tunnel_pids()
        wait_until(
            lambda: subprocess.run(login, capture_output=True, timeout=10).returncode != 0,
            10,
            "the forwarded port to stop answering after the tunnel was killed",
            interval=0.1,
        )
    finally:
        endpoint.kill()
        endpoint.wait(5)


def test_everything_is_removed_on_exit(tmp_path: Path) -> None:
    with simulated_vm(tmp_path) as vm:
        names = (vm.network.pi_ns, vm.network.vm_ns)
        vm.popen(["sleep", "300"], name="sleeper")
        pids = vm.pids()
        assert pids
    assert not any(netns.exists(n) for n in names)
    assert not any(Path(f"/proc/{p}").exists() for p in pids)


def test_namespaces_of_a_dead_harness_are_cleaned_up(tmp_path: Path) -> None:
    # A harness killed with SIGKILL cannot clean up; the next one removes its leftovers.
    orphan = subprocess.run(
        [
            sys.executable, "-c",
            "import os; from gateway.sim.vm import SimNetwork; n = SimNetwork().create(); "
            "print(n.pi_ns, n.vm_ns, flush=True); os._exit(0)",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    names = orphan.stdout.split()
    assert all(netns.exists(n) for n in names)
    removed = cleanup_stale()
    assert sorted(removed) == sorted(names)
    assert not any(netns.exists(n) for n in names)


def test_the_cell_names_the_vms_own_sshd_on_its_port_and_leaves_it_running(vm: SimVM) -> None:
    """The VM's sshd (not the cell's: its own config, no pid file) holds port 22, as one the
    user started would: the real cell, run by python3 inside the VM, says what holds the
    port and which setting moves the cell's sshd, and starts no tunnel loop."""
    from gateway.tunnel.bootstrap import BootstrapParams, render_cell
    from gateway.tunnel.keys import secret_value

    key = asyncssh.generate_private_key("ssh-ed25519")
    params = BootstrapParams(
        endpoint_host=netns.PI_ADDRESS,
        endpoint_port=10022,
        username="colab",
        endpoint_hostkey=key.export_public_key("openssh").decode().strip(),
        forwards={20022: 22},
        pi_public_key="",
        session="colab",
    )
    secret = secret_value(key.export_private_key("openssh").decode())
    cell = vm.run_cell(
        render_cell(params, "colab"),
        secrets={"colab_gateway_colab": secret},
        env={"GW_INSTALL": "0"},
    )
    assert cell.wait(60) != 0
    log = (vm.logs_dir / f"cell-{vm.generation}.log").read_text()
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1, log
    assert re.fullmatch(
        r"colab-gateway: ERROR: port 22 on this VM is taken by sshd \(pid \d+: "
        r"sshd: /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config.*\); stop it, or give the VM's "
        r"sshd another port: forwards\.ssh\.colab of session 'colab' in the gateway's config, "
        r"then run the cell `colab-gateway snippet colab` prints",
        errors[0],
    ), errors[0]
    assert "(one-line form)" in log
    assert keyscan(vm) == vm.host_key(), "the VM's own sshd is left running"
    assert not (vm.root_home / ".colab-gateway" / "tunnel.pid").exists()
    assert not vm.tunnel_pids()
