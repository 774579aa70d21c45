"""The bootstrap cell against what real Colab does to it: a secret pasted into Colab's
Secrets panel, apt with a broken source, a port already taken on the VM.

The cell's shell part (and, for the one-line secret, the whole Python cell) runs for real
with bash against the real endpoint and a real sshd, as in test_tunnel_endpoint.py;
`apt-get` is a stub on PATH (installing means linking the real sshd into place)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import wait_until
from helpers.tunnel import (
    ColabVM,
    RunningEndpoint,
    make_config,
    make_vm,
    pi_ssh,
    running_endpoint,
    ssh_keygen,
)

from gateway.config import Config
from gateway.tunnel.bootstrap import BootstrapParams, render_cell
from gateway.tunnel.keys import secret_name

pytestmark = pytest.mark.skipif(
    not Path("/usr/sbin/sshd").exists(), reason="needs openssh-server (make system-deps)"
)

SSHD = "/usr/sbin/sshd"
FIX = (
    "on the gateway run `colab-gateway keys --private colab` and paste the one line it "
    "prints as its new value, then run this cell again"
)
UPDATE_ERROR = (
    "E: The repository 'https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204"
    "/x86_64  InRelease' is not signed."
)


# -- helpers ---------------------------------------------------------------------------------


def _kill_everything_under(root: Path) -> None:
    """Whatever these tests started and left (sshd -f <tmp>/…, loops with GW_DIR, stubs)."""
    marker = str(root)
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid != os.getpid() and marker in "\0".join(proc.info["cmdline"] or []):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)


@pytest.fixture
def pi_key(tmp_path: Path) -> Iterator[Path]:
    yield ssh_keygen(tmp_path / "pi" / "id_ed25519")
    _kill_everything_under(tmp_path)


def vm_for(tmp_path: Path, r: RunningEndpoint, config: Config, pi_key: Path) -> ColabVM:
    vm = make_vm(tmp_path, r, config, pi_key=pi_key)
    vm.env.update(GW_SESSION="colab", GW_SECRET=secret_name("colab"))
    return vm


def ssh_port(config: Config) -> int:
    return config.session("colab").forwards["ssh"].local


def loops(gw_dir: Path) -> list[int]:
    """Pids of the tunnel loops of ``gw_dir``: process-group leaders whose last arguments
    are ``colab-gateway-tunnel-loop GW_DIR LOOP_ID``."""
    found = []
    mark = ["colab-gateway-tunnel-loop", str(gw_dir)]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        with contextlib.suppress(OSError):  # gone meanwhile
            if args[-3:-1] == mark and os.getpgid(proc.pid) == proc.pid:
                found.append(proc.pid)
    return found


def tunnel_clients(port: int) -> int:
    out = subprocess.run(
        ["pgrep", "-c", "-f", "--", f"-N .*-R 127.0.0.1:{port}:"], capture_output=True, text=True
    )
    return int(out.stdout.strip() or 0)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.Error:
        return False


def fingerprint(public_key_file: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(public_key_file)], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[1]


def assert_tunnel_serves(r: RunningEndpoint, config: Config, pi_key: Path, vm: ColabVM) -> None:
    """Up at the endpoint with the VM's host key, and the Pi logs in through it."""
    host_key = fingerprint(Path(f"{vm.hostkey}.pub"))
    r.wait_for(lambda f: f["up"] and f["hostkey_fingerprint"] == host_key)
    result = pi_ssh(ssh_port(config), r.known_hosts, pi_key, "echo", "through-the-tunnel")
    assert (result.returncode, result.stdout, result.stderr) == (0, "through-the-tunnel\n", "")


def lines(text: str) -> list[str]:
    return text.splitlines()


def python_cell(
    tmp_path: Path, r: RunningEndpoint, config: Config, pi_key: Path, vm: ColabVM, secrets: Path
) -> tuple[Path, dict[str, str]]:
    """The rendered Python cell, and the environment it runs in: a fake
    ``google.colab.userdata`` answering from the files in ``secrets``."""
    fake = tmp_path / "fakecolab" / "google" / "colab"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "userdata.py").write_text(
        "import os\n"
        "def get(name):\n"
        "    return open(os.path.join(os.environ['FAKE_SECRETS'], name)).read()\n"
    )
    params = BootstrapParams(
        "127.0.0.1",
        r.port,
        "colab",
        " ".join(r.keys.host_info().public.split()[:2]),
        {ssh_port(config): 22},
        pi_key.with_name("id_ed25519.pub").read_text().strip(),
        session="colab",
    )
    cell = tmp_path / "cell.py"
    cell.write_text(render_cell(params, "colab"))
    env = dict(vm.env, PYTHONPATH=str(tmp_path / "fakecolab"), FAKE_SECRETS=str(secrets))
    return cell, env


# -- 1. the tunnel secret ----------------------------------------------------------------------


def test_the_one_line_secret_from_keys_private_brings_the_tunnel_up(
    tmp_path: Path, pi_key: Path
) -> None:
    """The whole Python cell, with google.colab.userdata answering what
    `colab-gateway keys --private colab` printed."""
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        printed = subprocess.run(
            [
                sys.executable, "-m", "gateway", "keys", "-c", str(_config_file(tmp_path, r)),
                "--state-dir", str(tmp_path / "state"), "--private", "colab",
            ],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert printed.count("\n") == 1 and printed.startswith("openssh-base64:")
        (secrets / "colab_gateway_colab").write_text(printed)
        cell, env = python_cell(tmp_path, r, config, pi_key, vm, secrets)
        for name in ("GW_KEY_FILE", "GW_SESSION", "GW_SECRET"):
            env.pop(name)  # the cell's own: from the rendered defaults and the secret
        done = subprocess.run(
            [sys.executable, str(cell)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        fp = r.keys.tunnel_key("colab").fingerprint
        assert (
            f"colab-gateway: tunnel key {fp} from the Colab secret 'colab_gateway_colab' "
            "(one-line form)"
        ) in lines(done.stdout)
        key_file = vm.dir / "tunnel_key"
        assert key_file.read_text() == r.keys.tunnel_private_text("colab")  # the key file
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert_tunnel_serves(r, config, pi_key, vm)


def _config_file(tmp_path: Path, r: RunningEndpoint) -> Path:
    """A config file for the CLI with the endpoint's sessions (keys come from --state-dir)."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "sessions:\n  - name: colab\n    notebook_url: https://colab.research.google.com/drive/a\n"
        f"tunnel: {{public_host: 127.0.0.1, listen: '127.0.0.1:{r.port}'}}\n"
        f"ssh: {{identity: {tmp_path / 'pi' / 'id_ed25519'}}}\n"
        "browser: {enabled: false}\ntmux: {enabled: false}\n"
    )
    return path


@pytest.mark.parametrize("lost", ["spaces", "removed"])
def test_a_key_whose_line_breaks_were_lost_is_repaired(
    tmp_path: Path, pi_key: Path, lost: str
) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        original = r.keys.tunnel_private_text("colab")
        key_file = Path(vm.env["GW_KEY_FILE"])
        pasted = original.strip().replace("\n", " " if lost == "spaces" else "")
        key_file.write_text(pasted + "\n")
        assert pasted.count("-----") == 4 and "\n" not in pasted
        done = vm.run_bootstrap()
        assert done.returncode == 0, done.stderr
        fp = r.keys.tunnel_key("colab").fingerprint
        assert (
            f"colab-gateway: tunnel key {fp} from the Colab secret 'colab_gateway_colab' "
            "(multi-line form, line breaks restored)"
        ) in lines(done.stdout)
        assert key_file.read_text() == original  # byte for byte what ssh-keygen wrote
        assert_tunnel_serves(r, config, pi_key, vm)


def test_a_key_ssh_refuses_is_named_in_one_line_with_the_fix(tmp_path: Path, pi_key: Path) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        key_file = Path(vm.env["GW_KEY_FILE"])
        # Damaged inside: the framing is right, the key is not.
        text = r.keys.tunnel_private_text("colab").splitlines()
        text[2] = text[2][:10] + "A" * (len(text[2]) - 10)
        key_file.write_text("\n".join(text[:4] + text[-1:]) + "\n")
        done = vm.run_bootstrap()
        assert done.returncode == 1
        assert len(lines(done.stderr)) == 1, done.stderr
        assert re.fullmatch(
            r"colab-gateway: ERROR: the Colab secret 'colab_gateway_colab' is not a usable SSH "
            r"private key \(ssh-keygen: [^()]+\); " + re.escape(FIX),
            done.stderr.strip(),
        ), done.stderr
        assert not (vm.dir / "sshd.pid").exists() and not loops(vm.dir)

        # Something that is no key at all.
        key_file.write_text(r.keys.tunnel_key("colab").public + "\n")
        done = vm.run_bootstrap()
        assert (done.returncode, done.stderr) == (
            1,
            "colab-gateway: ERROR: the Colab secret 'colab_gateway_colab' is not a usable SSH "
            "private key (it is neither the one line `colab-gateway keys --private` prints nor "
            f"a -----BEGIN … PRIVATE KEY----- block); {FIX}\n",
        )


def test_a_key_the_gateway_refuses_is_named_in_one_line_with_the_fix(
    tmp_path: Path, pi_key: Path
) -> None:
    """A well-formed key that is not the session's (the secret was not updated after
    `keys --rotate`): ssh loads it, the gateway refuses it."""
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        other = ssh_keygen(tmp_path / "other" / "key")
        Path(vm.env["GW_KEY_FILE"]).write_text(other.read_text())
        done = vm.run_bootstrap()
        assert done.returncode == 0, done.stderr
        assert lines(done.stdout)[-1] == (
            "colab-gateway: the gateway refused the tunnel key from the Colab secret "
            "'colab_gateway_colab': it is not the session's current key (rotated?); " + FIX
        )
        assert not r.facts()["up"]


# -- 2. apt --------------------------------------------------------------------------------------

APT_STUB = r"""#!/bin/bash
# apt-get as the tests need it: every call logged; STUB_UPDATE=ok|fail|hang,
# STUB_INSTALL=ok|fail|fail-rsync. Installing openssh-server links the real sshd to
# STUB_SSHD (and, with STUB_SYSTEM_SSHD_CONFIG, starts an sshd with it, as the package's
# postinst can); installing rsync makes an executable STUB_RSYNC.
echo "$*" >>"$STUB_LOG"
# STUB_STAT: a file whose mode (through links) is noted at each call, while apt "runs".
[ -z "${STUB_STAT:-}" ] || stat -L -c %a "$STUB_STAT" >>"$STUB_LOG.modes" 2>&1 || true
packages=()
option_value=no
for arg; do
    if [ $option_value = yes ]; then option_value=no; continue; fi
    case $arg in
        update | install) mode=$arg ;;
        -o) option_value=yes ;;
        -*) ;;
        *) [ "${mode:-}" != install ] || packages+=("$arg") ;;
    esac
done
case $mode in
    update)
        case ${STUB_UPDATE:-ok} in
            fail) echo "$STUB_UPDATE_ERROR" >&2; exit 100 ;;
            hang) exec sleep 300 ;;
        esac ;;
    install)
        if [ "${STUB_INSTALL:-ok}" = fail ]; then
            echo "E: Unable to locate package ${packages[0]}" >&2; exit 100
        fi
        if [ "${STUB_INSTALL:-ok}" = fail-rsync ] && [[ " ${packages[*]} " == *" rsync "* ]]; then
            echo "E: Unable to locate package rsync" >&2; exit 100
        fi
        for package in "${packages[@]}"; do
            case $package in
                openssh-server)
                    mkdir -p "$(dirname "$STUB_SSHD")"; ln -sf /usr/sbin/sshd "$STUB_SSHD"
                    if [ -n "${STUB_SYSTEM_SSHD_CONFIG:-}" ]; then
                        /usr/sbin/sshd -f "$STUB_SYSTEM_SSHD_CONFIG"
                        # Its pid, for the test: the pid file goes when sshd is stopped.
                        for _ in $(seq 50); do
                            [ ! -s "$STUB_SYSTEM_SSHD_PID" ] || break; sleep 0.1
                        done
                        cp "$STUB_SYSTEM_SSHD_PID" "$STUB_SYSTEM_SSHD_PID.seen"
                    fi ;;
                rsync)
                    mkdir -p "$(dirname "$STUB_RSYNC")"
                    printf '#!/bin/sh\n' >"$STUB_RSYNC"; chmod +x "$STUB_RSYNC" ;;
            esac
        done ;;
esac
"""


def with_apt_stub(vm: ColabVM, tmp_path: Path, **stub: str) -> Path:
    """Make ``vm`` install through the stub apt-get: no sshd, no rsync yet."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").write_text(APT_STUB)
    (bin_dir / "apt-get").chmod(0o755)
    log = tmp_path / "apt-calls.log"
    vm.env.update(
        PATH=f"{bin_dir}:{vm.env['PATH']}",
        GW_INSTALL="1",
        GW_SSHD=str(tmp_path / "vm-sbin" / "sshd"),
        GW_RSYNC=str(tmp_path / "vm-bin" / "rsync"),
        STUB_SSHD=str(tmp_path / "vm-sbin" / "sshd"),
        STUB_RSYNC=str(tmp_path / "vm-bin" / "rsync"),
        STUB_LOG=str(log),
        STUB_UPDATE_ERROR=UPDATE_ERROR,
        **stub,
    )
    return log


APT_LINE = re.compile(r"colab-gateway: apt: installed openssh-server rsync in \d+s; (.*)")


@pytest.mark.parametrize(
    ("update", "why"),
    [("fail", f"apt-get update failed ({UPDATE_ERROR}) and was ignored"),
     ("hang", "apt-get update failed (stopped after 2s) and was ignored")],
)  # fmt: skip
def test_a_failing_apt_get_update_does_not_stop_the_bootstrap(
    tmp_path: Path, pi_key: Path, update: str, why: str
) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        calls = with_apt_stub(vm, tmp_path, STUB_UPDATE=update, GW_APT_TIMEOUT="2")
        done = vm.run_bootstrap()
        assert done.returncode == 0, done.stderr
        apt_lines = [line for line in lines(done.stdout) if "apt:" in line]
        assert len(apt_lines) == 1
        match = APT_LINE.fullmatch(apt_lines[0])
        assert match and match.group(1) == why, apt_lines
        assert [c.split()[0] for c in lines(calls.read_text())] == ["update", "install"]
        assert lines(calls.read_text())[1].endswith(" openssh-server rsync")
        if update == "fail":
            assert UPDATE_ERROR in (vm.dir / "apt.log").read_text()
        assert "sshd started" in done.stdout
        assert_tunnel_serves(r, config, pi_key, vm)

        # Installed now: apt is not run again.
        again = vm.run_bootstrap()
        assert again.returncode == 0, again.stderr
        assert "colab-gateway: apt: skipped, openssh-server and rsync are installed" in lines(
            again.stdout
        )
        assert len(lines(calls.read_text())) == 2


def test_when_apt_cannot_install_sshd_the_cell_says_so_in_one_line(
    tmp_path: Path, pi_key: Path
) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        calls = with_apt_stub(vm, tmp_path, STUB_UPDATE="fail", STUB_INSTALL="fail")
        done = vm.run_bootstrap()
        assert (done.returncode, done.stderr) == (
            1,
            "colab-gateway: ERROR: apt-get install openssh-server failed (E: Unable to locate "
            f"package openssh-server); before it, apt-get update failed ({UPDATE_ERROR}) and was "
            f"ignored; sshd is missing, see {vm.dir}/apt.log\n",
        )
        # Both packages, then sshd alone (a missing rsync must not block it).
        assert [c.split()[0] + " " + c.split()[-1] for c in lines(calls.read_text())] == [
            "update -qq",
            "install rsync",
            "install openssh-server",
        ]
        assert not (vm.dir / "sshd.pid").exists() and not loops(vm.dir)


def test_rsync_that_will_not_install_does_not_stop_the_tunnel(tmp_path: Path, pi_key: Path) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        with_apt_stub(vm, tmp_path, STUB_INSTALL="fail-rsync")
        done = vm.run_bootstrap()
        assert done.returncode == 0, done.stderr
        assert (
            "colab-gateway: apt: could not install rsync (E: Unable to locate package rsync); "
            f"the tunnel does not need it, going on (log: {vm.dir}/apt.log)"
        ) in lines(done.stdout)
        assert_tunnel_serves(r, config, pi_key, vm)


def test_an_sshd_the_package_install_started_on_the_port_is_replaced_by_the_cells(
    tmp_path: Path, pi_key: Path
) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        system = tmp_path / "system-sshd"
        system.mkdir()
        ssh_keygen(system / "hostkey")
        (system / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1:{vm.sshd_port}\nHostKey {system}/hostkey\n"
            f"PidFile {system}/sshd.pid\nUsePAM no\n"
        )
        with_apt_stub(
            vm,
            tmp_path,
            STUB_SYSTEM_SSHD_CONFIG=str(system / "sshd_config"),
            STUB_SYSTEM_SSHD_PID=str(system / "sshd.pid"),
        )
        done = vm.run_bootstrap()
        assert done.returncode == 0, done.stderr
        package_sshd = int((system / "sshd.pid.seen").read_text())
        assert (
            "colab-gateway: stopped the sshd that installing openssh-server started "
            f"(pid {package_sshd}) on port {vm.sshd_port}"
        ) in lines(done.stdout)
        assert "sshd started" in done.stdout
        wait_until(lambda: not alive(package_sshd), 15, "the package's sshd is gone")
        assert_tunnel_serves(r, config, pi_key, vm)


# -- 3. the port -----------------------------------------------------------------------------


LISTENER = "import socket,sys,time;s=socket.socket();s.bind(('127.0.0.1',int(sys.argv[1])));s.listen();print(1,flush=True);time.sleep(300)"  # noqa: E501


def test_a_port_held_by_another_program_is_named_and_no_loop_is_left(
    tmp_path: Path, pi_key: Path
) -> None:
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        assert vm.run_bootstrap().returncode == 0
        r.wait_for(lambda f: f["up"])
        [first_loop] = loops(vm.dir)
        # The cell's sshd is gone (the VM's processes were killed) and the user's own
        # service now listens on its port.
        os.kill(int((vm.dir / "sshd.pid").read_text()), signal.SIGTERM)
        wait_until(lambda: _port_free(vm.sshd_port), 15, "the port is free")
        listener = subprocess.Popen(
            [sys.executable, "-c", LISTENER, str(vm.sshd_port), str(tmp_path)],
            stdout=subprocess.PIPE,
        )
        try:
            assert listener.stdout is not None and listener.stdout.readline() == b"1\n"
            done = vm.run_bootstrap()
            command = f"{sys.executable} -c {LISTENER} {vm.sshd_port} {tmp_path}"
            assert (done.returncode, done.stderr) == (
                1,
                f"colab-gateway: ERROR: port {vm.sshd_port} on this VM is taken by "
                f"{Path(sys.executable).name[:15]} (pid {listener.pid}: {command[:100]}…); stop "
                "it, or give the VM's sshd another port: forwards.ssh.colab of session 'colab' "
                "in the gateway's config, then run the cell `colab-gateway snippet colab` "
                f"prints (stopped the tunnel loop of an earlier run, pid {first_loop})\n",
            )
            # No dead loop: nothing redials into the other program's port.
            wait_until(lambda: not alive(first_loop), 15, "the old loop is gone")
            assert loops(vm.dir) == []
            wait_until(lambda: tunnel_clients(ssh_port(config)) == 0, 15, "its ssh is gone")
            r.wait_for(lambda f: not f["up"])
            assert listener.poll() is None, "the other program is left alone"
        finally:
            listener.kill()
            listener.wait(5)
            assert listener.stdout is not None
            listener.stdout.close()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_cells_own_sshd_is_reused_and_exactly_one_loop_remains(
    tmp_path: Path, pi_key: Path
) -> None:
    config = make_config(tmp_path)
    port = ssh_port(config)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        first = vm.run_bootstrap()
        assert first.returncode == 0, first.stderr
        assert_tunnel_serves(r, config, pi_key, vm)
        sshd = int((vm.dir / "sshd.pid").read_text())
        [loop] = loops(vm.dir)

        # Run all again: same sshd (reloaded), the loop that is up is kept, no reconnect.
        second = vm.run_bootstrap()
        assert second.returncode == 0, second.stderr
        assert (
            f"colab-gateway: sshd reloaded (pid {sshd}, started by an earlier run of this cell) "
            f"on 127.0.0.1:{vm.sshd_port}"
        ) in second.stdout
        assert (
            f"colab-gateway: tunnel loop already running (pid {loop}) and up with these "
            "settings: kept"
        ) in lines(second.stdout)
        assert loops(vm.dir) == [loop] and tunnel_clients(port) == 1
        assert r.facts()["connections"] == 1

        # The pid files are gone and a setting changed: the sshd on the port is still
        # recognised as the cell's own, and the old loop is replaced, not joined by a second.
        (vm.dir / "sshd.pid").unlink()
        (vm.dir / "tunnel.pid").unlink()
        vm.env["GW_BACKOFF_MAX"] = "3"
        third = vm.run_bootstrap()
        assert third.returncode == 0, third.stderr
        assert (
            f"colab-gateway: sshd reloaded (pid {sshd}, started by an earlier run of this cell) "
            f"on 127.0.0.1:{vm.sshd_port}"
        ) in third.stdout
        assert f"(replaced the loop of an earlier run, pid {loop})" in third.stdout
        assert not alive(loop)
        [new_loop] = loops(vm.dir)
        assert new_loop != loop and int((vm.dir / "tunnel.pid").read_text()) == new_loop
        assert int((vm.dir / "sshd.pid").read_text()) == sshd
        assert_tunnel_serves(r, config, pi_key, vm)
        wait_until(lambda: tunnel_clients(port) == 1, 15, "one tunnel client")
        r.wait_for(lambda f: f["connections"] == 1)
        assert loops(vm.dir) == [new_loop]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace (unshare -m)")
def test_a_loop_of_the_same_dir_in_another_mount_namespace_is_never_stopped(
    tmp_path: Path, pi_key: Path
) -> None:
    """Machines that share one pid space (containers side by side, the simulated VMs) each
    have their own /root/.colab-gateway: a cell must not take the other's loop for its own."""
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        # The other machine's loop, by its command line exactly like one of ours.
        argv = ["unshare", "--mount", "--", "setsid", "bash", "-c", "sleep 120 & wait"]
        other = subprocess.Popen([*argv, "colab-gateway-tunnel-loop", str(vm.dir), "other"])
        try:
            wait_until(lambda: other.pid in loops(vm.dir), 10, "the other machine's loop")
            done = vm.run_bootstrap()
            assert done.returncode == 0, done.stderr
            assert_tunnel_serves(r, config, pi_key, vm)
            assert "replaced the loop" not in done.stdout
            assert other.poll() is None, "the cell stopped another machine's loop"
            assert len(loops(vm.dir)) == 2  # ours and the other machine's
        finally:
            os.killpg(other.pid, signal.SIGKILL)  # bash and its sleep
            other.wait()


# -- 3. the key file: written fresh, whatever was at its name (issue 22, attack 10) -------------


@pytest.mark.parametrize("planted", ["a 0644 file", "symlinks"])
def test_the_cell_writes_the_key_fresh_whatever_was_at_its_name(
    tmp_path: Path, pi_key: Path, planted: str
) -> None:
    """Fails on b2ceba6: the cell opened the key's name with O_TRUNC, so a 0644 file left
    there stayed 0644 (the key readable by all while apt ran) and a symlink was followed
    (the key written into its target); the shell part's ``tunnel_key.new`` likewise."""
    config = make_config(tmp_path)
    with running_endpoint(config, tmp_path / "state") as r:
        vm = vm_for(tmp_path, r, config, pi_key)
        calls = with_apt_stub(vm, tmp_path)
        gw = vm.dir
        gw.mkdir(mode=0o755)
        gw.chmod(0o755)
        elsewhere = [tmp_path / "elsewhere-1", tmp_path / "elsewhere-2"]
        if planted == "a 0644 file":
            (gw / "tunnel_key").write_text("old\n")
            (gw / "tunnel_key").chmod(0o644)
        else:
            for target, name in zip(elsewhere, ["tunnel_key", "tunnel_key.new"], strict=True):
                target.write_text("old\n")
                target.chmod(0o644)
                (gw / name).symlink_to(target)
        vm.env["STUB_STAT"] = str(gw / "tunnel_key")
        secrets = tmp_path / "secrets"
        secrets.mkdir()
        (secrets / "colab_gateway_colab").write_text(r.keys.tunnel_private_text("colab"))
        cell, env = python_cell(tmp_path, r, config, pi_key, vm, secrets)
        for name in ("GW_KEY_FILE", "GW_SESSION", "GW_SECRET"):
            env.pop(name)
        done = subprocess.run(
            [sys.executable, str(cell)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        # While apt ran (the slow part of a first run), the key was 0600 already.
        modes = Path(f"{calls}.modes").read_text().split()
        assert modes and set(modes) == {"600"}, modes
        key_file = gw / "tunnel_key"
        assert not key_file.is_symlink()
        assert key_file.read_text() == r.keys.tunnel_private_text("colab")
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert gw.stat().st_mode & 0o777 == 0o700
        for target in elsewhere if planted == "symlinks" else []:
            assert target.read_text() == "old\n", f"{target} was written through a symlink"
            assert target.stat().st_mode & 0o777 == 0o644
        assert not list(gw.glob("tunnel_key.*")) or planted == "symlinks"
        assert_tunnel_serves(r, config, pi_key, vm)
