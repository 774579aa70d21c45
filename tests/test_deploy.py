"""Deploy with Ansible onto a real systemd machine, reached over SSH like a Pi.

A Debian 12 root made by debootstrap (cached as a tarball in CACHE_DIR between runs) boots
with systemd inside systemd-nspawn, sharing this host's network. Its sshd listens on a
free loopback port. The machine's python3 is removed before the run (as if it were too old,
like Ubuntu 20.04's 3.8, for ansible-core 2.20+): the role must bring one itself. The
playbook runs with the role's defaults for the package source (a wheel it builds from this
working tree and installs by hash) and with a virtualenv outside /opt. The tests below share
that one machine and run in file order (random order disabled for this module); the
machine is powered off and its root removed afterwards, whether they pass or fail.

Ansible runs on this side with the newest ansible-core the newest Python here (>= 3.12)
can install, in a virtualenv cached in CACHE_DIR; without such a Python, with the project
venv's own, and the module says so (test_the_newest_ansible_core_ran records which ran).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from helpers import free_port
from helpers.deploy import (
    AS_SERVICE,
    FALLBACK_WARNING,
    LOGIN_USER,
    NEWEST_CORE_PYTHON,
    REPO,
    SERVICE_USER,
    TMUX_SESSION,
    VENV,
    Controller,
    Machine,
    ansible_core_venv,
    ansible_core_version,
    cached_root_tarball,
    changed_tasks,
    main_pid,
    missing_prerequisite,
    newest_ansible_core,
    newest_python_for_ansible_core,
    prepare_root,
    recap,
    run_playbook,
    tmux_server,
    wait_active,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.timeout(2400),
    # Warnings are errors (pyproject.toml); this one only reports which ansible-core ran.
    pytest.mark.filterwarnings(f"default:{FALLBACK_WARNING}:UserWarning"),
    # One machine for all: a test that restarts a unit or re-runs the play leaves it
    # settling for the next one, and random order made that flaky (a status socket not yet
    # back, a tmux server being replaced). In file order each test's set-up is known.
    pytest.mark.random_order(disabled=True),
]


@pytest.fixture(scope="module")
def controller() -> Controller:
    newest = newest_python_for_ansible_core()
    if newest is None:
        playbook = Path(sys.executable).parent / "ansible-playbook"
        core, python = ansible_core_version(playbook)
        message = (
            f"{FALLBACK_WARNING} {core} of the project venv (Python {python}): no Python >= "
            f"{'.'.join(map(str, NEWEST_CORE_PYTHON))} here (python3.12+ on PATH or under "
            "/root/.pyenv/versions) to run ansible-core 2.20 or later"
        )
        print(message)
        warnings.warn(message, UserWarning, stacklevel=1)
        return Controller(playbook, core, python)
    version, python_path = newest
    newest_core = newest_ansible_core(python_path)
    playbook = ansible_core_venv(python_path, version, newest_core) / "bin/ansible-playbook"
    core, python = ansible_core_version(playbook)
    print(f"ansible-core {core} on Python {python} ({python_path}) runs the playbook")
    return Controller(playbook, core, python)


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    problem = missing_prerequisite()
    if problem:
        pytest.skip(problem)
    started = time.monotonic()
    tarball = cached_root_tarball()
    base = tmp_path_factory.mktemp("machine")
    root = base / "root"
    root.mkdir()
    try:
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(root), "-xpf", str(tarball)], check=True
        )
        machine = Machine(
            root=root,
            name=f"cgw-deploy-{os.getpid()}",
            ssh_port=free_port(),
            key=base / "id_ed25519",
            known_hosts=base / "known_hosts",
            log=base / "boot.log",
        )
        prepare_root(machine)
        try:
            machine.boot()
            print(f"machine up in {time.monotonic() - started:.1f}s")
            yield machine
        finally:
            machine.power_off()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---- the playbook --------------------------------------------------------------------


@dataclass
class Deployment:
    machine: Machine
    controller: Controller
    inventory: Path
    workdir: Path
    tunnel_port: int
    first_run_seconds: float
    first_play: str  # its output
    tmux_starts: int  # how often the tmux server's unit was started by the end of it

    def play(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_playbook(self.controller, self.inventory, self.workdir, *extra)


def write_inventory(machine: Machine, workdir: Path) -> tuple[Path, int]:
    """The inventory of the deploy test's machine, and the tunnel port it gives the role."""
    tunnel_port = free_port()
    inventory = workdir / "inventory.yml"
    inventory.write_text(
        json.dumps(
            {
                "colab_gateway": {
                    "hosts": {
                        "deploytest": {
                            "ansible_host": "127.0.0.1",
                            "ansible_port": machine.ssh_port,
                            "ansible_user": LOGIN_USER,
                            "ansible_ssh_private_key_file": str(machine.key),
                            "ansible_ssh_common_args": (
                                f"-F none -o UserKnownHostsFile={machine.known_hosts} "
                                "-o StrictHostKeyChecking=yes"
                            ),
                        }
                    },
                    "vars": {
                        # The package source is the role's default: a wheel it builds
                        # from this checkout on the controller.
                        "colab_gateway_venv": VENV,
                        # The role installs Chromium, its driver and Xvfb (headed mode)...
                        "colab_gateway_browser_enabled": True,
                        "colab_gateway_browser_headless": False,
                        # ...but the daemon leaves the browser off: there is no Google
                        # account here, and no network beyond the package registries.
                        "colab_gateway_config_overrides": {"browser": {"enabled": False}},
                        "colab_gateway_tunnel_listen": f"127.0.0.1:{tunnel_port}",
                        "colab_gateway_tmux_session": TMUX_SESSION,
                        "colab_gateway_sessions": [
                            {
                                "name": "colab",
                                "notebook_url": "https://colab.research.google.com/drive/deploy-test",
                                "forwards": {"ssh": {"colab": 22, "local": free_port()}},
                            }
                        ],
                    },
                }
            },
            indent=2,
        )
    )
    return inventory, tunnel_port


FirstPlay = Callable[[Path, Path], subprocess.CompletedProcess[str]]  # (inventory, workdir)


def first_deployment(
    machine: Machine, controller: Controller, workdir: Path, play: FirstPlay | None = None
) -> Deployment:
    """The first play on the fresh machine: this checkout's, unless ``play`` is given (the
    upgrade test's module plays the previous release first)."""
    assert machine.run("command -v python3 python3.11", check=False).stdout == ""
    inventory, tunnel_port = write_inventory(machine, workdir)
    started = time.monotonic()
    if play is None:
        result = run_playbook(controller, inventory, workdir)
    else:
        result = play(inventory, workdir)
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"first playbook run failed:\n{result.stdout[-6000:]}"
    print(f"first playbook run: {seconds:.1f}s, recap {recap(result.stdout)}")
    tmux_starts = unit_starts(machine, "colab-gateway-tmux.service")
    return Deployment(
        machine, controller, inventory, workdir, tunnel_port, seconds, result.stdout, tmux_starts
    )


@pytest.fixture(scope="module")
def deployed(
    machine: Machine, controller: Controller, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    return first_deployment(machine, controller, tmp_path_factory.mktemp("ansible"))


def unit_starts(machine: Machine, unit: str) -> int:
    """How often systemd started the unit since the machine booted, as its journal says."""
    journal = f"sudo journalctl -b -u {unit} -o cat --no-pager | grep -c '^Starting '"
    return int(machine.run(journal, check=False).stdout.strip() or 0)


# ---- the assertions, in any order ------------------------------------------------------


def test_service_is_active(deployed: Deployment) -> None:
    assert deployed.machine.run("systemctl is-active colab-gateway").stdout.strip() == "active"
    assert deployed.machine.run("systemctl is-active colab-gateway-tmux").stdout.strip() == "active"


def test_the_first_play_starts_each_unit_once(deployed: Deployment) -> None:
    """The first play starts the tmux server once: no handler restarts it seconds after the
    start, ending the session the gateway had just created ("window closed 4.4 s after it
    was created"); and the new daemon is not reloaded right after its start either."""
    assert deployed.tmux_starts == 1, deployed.first_play[-6000:]
    handlers = [
        task for task in changed_tasks(deployed.first_play) if task.startswith("RUNNING HANDLER")
    ]
    assert "RUNNING HANDLER [colab_gateway : Reload colab-gateway]" not in handlers, handlers


def test_the_newest_ansible_core_ran(deployed: Deployment) -> None:
    """The playbook ran with the newest ansible-core the newest Python here may install:
    2.20 or later (the releases that refuse Python 3.8 targets) when a Python >= 3.12
    exists, else the project venv's, with a warning."""
    ran = deployed.controller
    core, python = ansible_core_version(ran.playbook)  # asked again of what ran
    print(f"deployed with ansible-core {core} on Python {python} ({ran.playbook})")
    assert (core, python) == (ran.core, ran.python)
    newest = newest_python_for_ansible_core()
    if newest is None:
        assert ran.playbook == Path(sys.executable).parent / "ansible-playbook"
        return
    version, python_path = newest
    assert python == ".".join(map(str, version)), (python, python_path)
    assert core == newest_ansible_core(python_path)
    assert tuple(map(int, core.split(".")[:2])) >= (2, 20), core


def test_units_verify_and_report_exposure(deployed: Deployment) -> None:
    m = deployed.machine
    # --man=no: the machine has no man pages installed to look Documentation=man:… up in
    # (tests/test_units.py verifies with that check, on this host).
    verify = m.run(
        "sudo systemd-analyze verify --man=no colab-gateway.service colab-gateway-tmux.service 2>&1"
    )
    assert verify.stdout.strip() == ""
    security = m.run("sudo systemd-analyze security --no-pager colab-gateway.service").stdout
    level = re.search(r"Overall exposure level for colab-gateway\.service: ([\d.]+)", security)
    assert level, security[-2000:]
    print(f"systemd-analyze security colab-gateway.service: {level.group(1)}")
    assert float(level.group(1)) <= 3.0, security
    tmux = m.run("sudo systemd-analyze security --no-pager colab-gateway-tmux.service").stdout
    tmux_level = re.search(r"exposure level for colab-gateway-tmux\.service: ([\d.]+)", tmux)
    assert tmux_level, tmux[-2000:]
    print(f"systemd-analyze security colab-gateway-tmux.service: {tmux_level.group(1)}")
    assert float(tmux_level.group(1)) <= 5.0, tmux


def test_the_role_brought_its_own_python(deployed: Deployment) -> None:
    """python3 was gone before the run (the fixture checks); the role installed one >= 3.10
    without a module, and made the virtualenv with it."""
    m = deployed.machine
    version = m.run("python3 -c 'import sys; print(*sys.version_info[:2])'").stdout.split()
    assert tuple(map(int, version)) >= (3, 10)
    made_by = m.run(f"cat {VENV}/colab-gateway-python.txt").stdout.split()
    assert made_by[0] == m.run("command -v python3").stdout.strip()


def test_the_unit_runs_the_configured_virtualenv(deployed: Deployment) -> None:
    m = deployed.machine
    exec_start = m.run("systemctl show -p ExecStart --value colab-gateway").stdout
    assert f"path={VENV}/bin/colab-gateway" in exec_start, exec_start
    assert m.run("test -e /opt/colab-gateway", check=False).returncode == 1
    cmdline = m.run(f"tr '\\0' ' ' < /proc/{main_pid(m)}/cmdline").stdout
    assert f"{VENV}/bin/" in cmdline, cmdline
    assert m.run("readlink /usr/local/bin/colab-gateway").stdout.strip() == (
        f"{VENV}/bin/colab-gateway"
    )


def test_the_checkouts_wheel_is_installed_by_its_hash(deployed: Deployment) -> None:
    """The default package source: a wheel built from this checkout, pinned by sha256."""
    m = deployed.machine
    pin = m.run("cat /opt/colab-gateway-dist/requirements.txt").stdout
    match = re.fullmatch(r"colab-gateway @ file://(\S+\.whl) --hash=sha256:([0-9a-f]{64})\n", pin)
    assert match, pin
    wheel, digest = match.groups()
    assert m.run(f"sha256sum {wheel}").stdout.split()[0] == digest
    direct_url = m.run(
        f"cat {VENV}/lib/python3*/site-packages/colab_gateway-*.dist-info/direct_url.json"
    ).stdout
    assert json.loads(direct_url)["url"] == f"file://{wheel}"
    # The same modules as this checkout: compare one file byte for byte.
    installed = m.run(f"cat {VENV}/lib/python3*/site-packages/gateway/browser/launch.py").stdout
    assert installed == (REPO / "gateway/browser/launch.py").read_text()


def test_the_headless_shell_is_installed_at_chromiums_version(deployed: Deployment) -> None:
    """Debian 12 has chromium-headless-shell from Chromium's own source: the default play
    (engine auto) installs it next to full Chromium, at the one version of chromium-common
    both depend on, and leaves the choice to the daemon (browser.engine: auto)."""
    import yaml

    m = deployed.machine
    listing = m.run(
        "dpkg-query -W -f '${Package} ${Version} ${db:Status-Status}\\n' "
        "chromium chromium-common chromium-driver chromium-headless-shell"
    ).stdout
    packages = {
        name: (version, status) for name, version, status in map(str.split, listing.splitlines())
    }
    assert {status for _, status in packages.values()} == {"installed"}, packages
    versions = {version for version, _ in packages.values()}
    assert len(versions) == 1, packages
    print(f"chromium and chromium-headless-shell: {versions.pop()}")
    assert m.run("test -x /usr/lib/chromium/chromium-headless-shell", check=False).returncode == 0
    config = yaml.safe_load(m.run("sudo cat /etc/colab-gateway/config.yaml").stdout)
    assert config["browser"]["engine"] == "auto"


def test_a_dedicated_user_keeps_both_sandboxes(deployed: Deployment) -> None:
    """The default service user is a system user without sudo: the tmux server keeps its
    sandbox (no_new_privs, seccomp) and both units remove its IPC objects once both stop."""
    m = deployed.machine
    uid = int(m.run(f"id -u {SERVICE_USER}").stdout)
    assert uid < 1000
    sudo = m.run(f"sudo sudo -l -U {SERVICE_USER} 2>&1", check=False).stdout
    assert "is not allowed to run sudo" in sudo, sudo
    for unit in ("colab-gateway", "colab-gateway-tmux"):
        assert m.run(f"systemctl show -p RemoveIPC --value {unit}").stdout.strip() == "yes"
    # The server's pid from tmux itself: the unit is Type=forking without a PID file
    # (tmux 3.0a on focal has no -D), so systemd's MainPID may be unknown (0) under load.
    tmux_pid, _ = tmux_server(m)
    tmux = proc_status(m, tmux_pid)
    assert tmux["NoNewPrivs"] == "1", tmux
    assert (
        m.run(
            "test -e /etc/systemd/system/colab-gateway-tmux.service.d/20-login-user.conf",
            check=False,
        ).returncode
        == 1
    )


def test_ssh_runs_in_the_sandboxed_tmux_server(deployed: Deployment) -> None:
    """A window of the hardened tmux server runs ssh: it reaches this machine's sshd (and is
    refused, having no key there) and records the host key in the user's home."""
    m = deployed.machine
    out, known = "/tmp/cgw-ssh-probe.out", f"/home/{SERVICE_USER}/cgw-probe-known-hosts"
    ssh = (
        f"ssh -F none -o BatchMode=yes -o StrictHostKeyChecking=accept-new "
        f"-o UserKnownHostsFile={known} -p {m.ssh_port} nobody@127.0.0.1 true"
    )
    window = f"{ssh} 2>{out}; echo rc=$? >>{out}"
    m.run(f"{AS_SERVICE} tmux new-window -d -t {TMUX_SESSION}: {shlex.quote(window)}")
    deadline = time.monotonic() + 30
    while "rc=" not in (text := m.run(f"sudo cat {out}", check=False).stdout):
        assert time.monotonic() < deadline, text
        time.sleep(0.5)
    assert "Permission denied (publickey)" in text and "rc=255" in text, text
    assert "ssh-ed25519" in m.run(f"sudo cat {known}").stdout


def test_status_line_matches_the_daemon(deployed: Deployment) -> None:
    m = deployed.machine
    # As the service user, with no flags: the default paths reach the service's socket.
    result = m.run(f"{AS_SERVICE} colab-gateway status --json", check=False)
    assert result.returncode in (0, 1), result.stderr  # 3 would mean "not running"
    summary = json.loads(result.stdout)["summary"]
    assert summary
    shown = m.run("systemctl status --no-pager colab-gateway", check=False).stdout
    status = re.search(r'^\s*Status: "(.*)"$', shown, re.M)
    assert status, shown
    assert status.group(1) == summary
    print(f"STATUS line: {status.group(1)}")
    human = m.run(f"{AS_SERVICE} colab-gateway status", check=False)
    assert human.stdout.startswith("colab-gateway: "), human.stdout


def test_tmux_session_exists_for_the_service_user(deployed: Deployment) -> None:
    m = deployed.machine
    owner = m.run(f"ps -o user= -p {tmux_server(m)[0]}").stdout.strip()
    assert owner == SERVICE_USER
    # `sudo -u colab-gateway tmux attach` reaches it: the default socket, no -L/-S.
    assert m.run(f"{AS_SERVICE} tmux has-session -t {TMUX_SESSION}", check=False).returncode == 0


def test_endpoint_port_listens(deployed: Deployment) -> None:
    from gateway.registry import all_specs

    if "tunnel" not in {spec.name for spec in all_specs()}:
        pytest.skip("this build has no tunnel component yet: nothing listens")
    with socket.create_connection(("127.0.0.1", deployed.tunnel_port), timeout=10) as conn:
        conn.settimeout(10)
        assert conn.recv(64).startswith(b"SSH-2.0-")


def test_restart_keeps_the_tmux_session(deployed: Deployment) -> None:
    m = deployed.machine
    before_tmux, before_pid = tmux_server(m), main_pid(m)
    m.run("sudo systemctl restart colab-gateway")
    wait_active(m, "colab-gateway")
    assert main_pid(m) != before_pid
    assert tmux_server(m) == before_tmux


def test_second_run_changes_nothing(deployed: Deployment) -> None:
    started = time.monotonic()
    result = deployed.play()
    assert result.returncode == 0, result.stdout[-6000:]
    counts = recap(result.stdout)
    print(f"second playbook run: {time.monotonic() - started:.1f}s, recap {counts}")
    assert counts["changed"] == 0, changed_tasks(result.stdout)


CONFIG_PATH = "/etc/colab-gateway/config.yaml"


@contextlib.contextmanager
def files_restored(m: Machine, *paths: str, then: Callable[[], object]) -> Iterator[None]:
    """Puts ``paths`` back after the block, byte for byte with their mode and owner, then
    calls ``then`` (the handler's reload or restart): the machine as deployed again for the
    tests after this one (in any order: test_second_run_changes_nothing), as a play of the
    inventory's own values would leave it, without that play's minute."""
    saved = "/root/cgw-saved"
    m.run(f"sudo rm -rf {saved} && sudo mkdir -m 0700 {saved}")
    for number, path in enumerate(paths):
        m.run(f"sudo cp -a {path} {saved}/{number}")
    try:
        yield
    finally:
        for number, path in enumerate(paths):
            m.run(f"sudo cp -a {saved}/{number} {path}")
        m.run(f"sudo rm -rf {saved}")
        then()


def test_changed_variable_reloads_without_a_restart(deployed: Deployment) -> None:
    """A config change reaches the daemon through the Reload handler (SIGHUP), in place."""
    m = deployed.machine
    pid = main_pid(m)
    journal = "journalctl -u colab-gateway -o cat --no-pager | grep -c 'reloading /etc'"
    reloads = int(m.run(f"sudo {journal}", check=False).stdout.strip() or 0)
    reload = partial(m.run, "sudo systemctl reload colab-gateway")
    with files_restored(m, CONFIG_PATH, then=reload):
        result = deployed.play("-e", "colab_gateway_log_level=debug")
        assert result.returncode == 0, result.stdout[-6000:]
        assert changed_tasks(result.stdout) == [
            "TASK [colab_gateway : Write the configuration]",
            "RUNNING HANDLER [colab_gateway : Reload colab-gateway]",
        ], result.stdout[-6000:]
        assert "log_level: debug" in m.run("sudo cat /etc/colab-gateway/config.yaml").stdout
        assert main_pid(m) == pid
        deadline = time.monotonic() + 30
        while int(m.run(f"sudo {journal}", check=False).stdout.strip() or 0) == reloads:
            assert time.monotonic() < deadline, "the daemon never logged the reload"
            time.sleep(0.5)


def test_a_change_to_unit_and_config_restarts_without_a_reload(deployed: Deployment) -> None:
    """A play that changes both the unit (Restart handler) and the config (Reload handler)
    restarts the daemon once: the restarted daemon reads the new config, a reload after it
    is redundant."""
    m = deployed.machine
    pid = main_pid(m)
    unit = "/etc/systemd/system/colab-gateway.service"
    with files_restored(m, unit, CONFIG_PATH, then=partial(restart_and_wait, m)):
        m.run(f"echo '# changed by hand' | sudo tee -a {unit}")
        result = deployed.play("-e", "colab_gateway_log_level=debug")
        assert result.returncode == 0, result.stdout[-6000:]
        handlers = [t for t in changed_tasks(result.stdout) if t.startswith("RUNNING HANDLER")]
        assert handlers == ["RUNNING HANDLER [colab_gateway : Restart colab-gateway]"], handlers
        wait_active(m, "colab-gateway")
        assert main_pid(m) != pid


def test_broken_config_fails_validation_and_leaves_the_service(deployed: Deployment) -> None:
    m = deployed.machine
    pid = main_pid(m)
    config_before = m.run("sudo sha256sum /etc/colab-gateway/config.yaml").stdout
    result = deployed.play("-e", "colab_gateway_tunnel_listen=127.0.0.1:99999")
    assert result.returncode != 0
    out = result.stdout
    failed_task = re.findall(r"^TASK \[colab_gateway : (.*?)\]", out.split("fatal:")[0], re.M)
    assert failed_task and failed_task[-1] == "Write the configuration", out[-4000:]
    assert "is not HOST:PORT" in out, out[-4000:]  # check-config's own message
    assert m.run("sudo sha256sum /etc/colab-gateway/config.yaml").stdout == config_before
    assert main_pid(m) == pid
    assert m.run("systemctl is-active colab-gateway").stdout.strip() == "active"


def test_another_python_makes_the_virtualenv_again(deployed: Deployment) -> None:
    """A virtualenv made by another Python (what a new colab_gateway_python_version or a
    switch between system and uv leaves behind) is made again, and the service restarts."""
    m = deployed.machine
    pid = main_pid(m)
    marker = f"{VENV}/colab-gateway-python.txt"
    m.run(f"echo /opt/cgw-python/cpython-3.10/bin/python3 3.10.0 | sudo tee {marker}")
    m.run(f"sudo touch {VENV}/left-by-the-old-python")
    result = deployed.play()
    assert result.returncode == 0, result.stdout[-6000:]
    changed = changed_tasks(result.stdout)
    assert "TASK [colab_gateway : Remove a virtualenv another Python made]" in changed, changed
    assert m.run(f"test -e {VENV}/left-by-the-old-python", check=False).returncode == 1
    assert m.run(f"cat {marker}").stdout.split()[0] == m.run("command -v python3").stdout.strip()
    wait_active(m, "colab-gateway")
    assert main_pid(m) != pid


SUID_PROBE = "/usr/local/bin/cgw-suid-id"
SNAP_DROP_IN = "/etc/systemd/system/colab-gateway.service.d/20-snap-chromium.conf"
PROBE_DROP_IN = "/etc/systemd/system/colab-gateway.service.d/90-suid-probe.conf"
# The service's main process, replaced by a shell that starts the setuid-root helper
# (a copy of id(1)) and reports the effective uid the helper ran with.
SUID_PROBE_UNIT = f"""[Service]
Type=simple
WatchdogSec=0
ExecStart=
ExecStart=/bin/sh -c '{SUID_PROBE} -u > /run/colab-gateway/euid; exec sleep infinity'
"""


def proc_status(m: Machine, pid: int | str) -> dict[str, str]:
    text = m.run(f"cat /proc/{pid}/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def restart_and_wait(m: Machine) -> int:
    m.run("sudo systemctl daemon-reload && sudo systemctl restart colab-gateway")
    wait_active(m, "colab-gateway")
    return main_pid(m)


def probe_euid(m: Machine) -> tuple[str, str]:
    """(euid of the setuid helper, NoNewPrivs of the main process that started it)."""
    unit = shlex.quote(SUID_PROBE_UNIT)
    m.run(f"sudo rm -f /run/colab-gateway/euid && printf %s {unit} | sudo tee {PROBE_DROP_IN}")
    pid = restart_and_wait(m)
    deadline = time.monotonic() + 30
    while (euid := m.run("sudo cat /run/colab-gateway/euid", check=False).stdout.strip()) == "":
        assert time.monotonic() < deadline, "the probe never wrote its euid"
        time.sleep(0.5)
    return euid, proc_status(m, pid)["NoNewPrivs"]


def exposure(m: Machine) -> float:
    out = m.run("sudo systemd-analyze security --no-pager colab-gateway.service").stdout
    level = re.search(r"Overall exposure level for colab-gateway\.service: ([\d.]+)", out)
    assert level, out[-2000:]
    return float(level.group(1))


def test_snap_mode_lets_a_setuid_helper_gain_root(deployed: Deployment) -> None:
    """snap-confine is setuid root: with the snap drop-in (files/colab-gateway-snap.conf) the
    service runs without no_new_privs, and a setuid-root program it starts gets euid 0.
    The Debian sandbox, as a control, keeps no_new_privs and the helper stays the user."""
    m = deployed.machine
    uid = m.run(f"id -u {SERVICE_USER}").stdout.strip()
    m.run(f"sudo install -o root -g root -m 4755 /usr/bin/id {SUID_PROBE}")
    assert m.run(f"{SUID_PROBE} -u").stdout.strip() == "0"  # the helper itself works
    try:
        outside = proc_status(m, "self")  # cat's own, outside the unit
        daemon = proc_status(m, main_pid(m))
        assert daemon["NoNewPrivs"] == "1"
        assert int(daemon["Seccomp_filters"]) > int(outside["Seccomp_filters"])
        debian = exposure(m)
        assert probe_euid(m) == (uid, "1")
        m.run(f"sudo rm {PROBE_DROP_IN}")

        snap_conf = (REPO / "systemd/colab-gateway-snap.conf").read_text()
        m.run(f"printf %s {shlex.quote(snap_conf)} | sudo tee {SNAP_DROP_IN} >/dev/null")
        daemon = proc_status(m, restart_and_wait(m))
        assert daemon["NoNewPrivs"] == "0", daemon
        # No filter of the unit's left (systemd-nspawn filters the whole machine: compare
        # with a process outside the unit).
        assert daemon["Seccomp_filters"] == outside["Seccomp_filters"], (daemon, outside)
        snap = exposure(m)
        assert probe_euid(m) == ("0", "0")
        print(f"systemd-analyze security colab-gateway.service: debian {debian}, snap {snap}")
    finally:
        m.run(f"sudo rm -f {PROBE_DROP_IN} {SNAP_DROP_IN} {SUID_PROBE}")
        restart_and_wait(m)


PROBE_SKIP = (
    "Type",
    "NotifyAccess",
    "ExecStart",
    "ExecReload",
    "WatchdogSec",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "KillMode",
    "User",
    "Group",
)


def sandboxed_oneshot_unit(exec_start: str) -> str:
    """A oneshot unit with colab-gateway.service's [Service] sandbox and user, running
    ``exec_start``."""
    text = (REPO / "systemd/colab-gateway.service").read_text()
    service = text.split("[Service]", 1)[1].split("[Install]", 1)[0]
    kept = [
        line
        for line in service.splitlines()
        if line and not line.startswith("#") and line.split("=", 1)[0] not in PROBE_SKIP
    ]
    return "\n".join(
        [
            "[Service]",
            "Type=oneshot",
            f"User={SERVICE_USER}",
            "StandardOutput=journal",
            "TimeoutStartSec=120",
            f"ExecStart={exec_start}",
            *kept,
            "",
        ]
    )


def chromium_probe_unit(browser: str, flags: str, marker: str) -> str:
    """The service's sandbox running Chromium (``browser``: its command and headless flag)."""
    return sandboxed_oneshot_unit(
        f"{browser} --disable-gpu --no-first-run "
        f"--disable-background-networking --disable-component-update --disable-sync {flags} "
        "--user-data-dir=/var/lib/colab-gateway/probe-profile "
        f"--dump-dom data:text/html,<p>{marker}</p>"
    )


# Full Chromium, and the headless shell the daemon runs with engine auto (always headless:
# it takes no --headless switch). The play installed both (the test above checks).
BROWSERS = {
    "chromium": "/usr/bin/chromium --headless=new",
    "headless-shell": "/usr/bin/chromium-headless-shell",
}


@pytest.mark.parametrize("browser", list(BROWSERS))
@pytest.mark.parametrize("flags", ["--no-sandbox", ""], ids=["no-sandbox", "own-sandbox"])
def test_chromium_runs_under_the_units_sandbox(
    deployed: Deployment, flags: str, browser: str
) -> None:
    """The hardening exceptions are the ones Chromium needs: it renders a page under them."""
    m = deployed.machine
    marker = f"probe-{os.getpid()}-{browser}-{len(flags)}"
    unit = f"cgw-chromium-probe-{browser}-{len(flags)}.service"
    m.run(
        f"sudo tee /etc/systemd/system/{unit} >/dev/null <<'EOF'\n"
        f"{chromium_probe_unit(BROWSERS[browser], flags, marker)}EOF\n"
    )
    m.run("sudo systemctl daemon-reload")
    started = m.run(f"sudo systemctl start {unit}", check=False, timeout=180)
    log = m.run(f"sudo journalctl -u {unit} -o cat --no-pager", check=False).stdout
    assert started.returncode == 0, log[-3000:]
    assert f"<p>{marker}</p>" in log, log[-3000:]


# ---- a hostile Colab VM, against the installed package under the unit's sandbox -------

STATE = "/var/lib/colab-gateway"
SERVICE_HOME = f"/home/{SERVICE_USER}"
# The VM's side of a pull: every rsync it serves first forges "vanished" names aimed at
# the state directory, the service's home and its own links (the daemon once acted on
# such names: deleted the host key, replaced authorized_keys, hard-linked the Chromium
# cookies into the snapshot), then becomes the real rsync server on the VM's tree.
HOSTILE_SSH = r"""#!/bin/sh
while [ "$#" -gt 0 ] && [ "$1" != rsync ]; do shift; done
for name in ../../../../keys/host_ed25519 content/outputs/state/keys/host_ed25519 \
    content/outputs/ssh/authorized_keys content/outputs/state/chromium-profile/Default/Cookies \
    content/outputs/rel/host_ed25519 "content/outputs/$(printf '\033]0;owned\007')"; do
  printf 'file has vanished: "%s"\n' "$name" >&2
done
exec "$@"
"""
# The VM's tree: links to the Pi's secrets (absolute and relative), a setuid file, a FIFO.
HOSTILE_TREE = f"""set -e
rm -rf /content; mkdir -p /content/outputs
cd /content/outputs
echo results > results.txt
ln -s {STATE} state
ln -s {SERVICE_HOME}/.ssh ssh
ln -s ../../../../keys rel
mkdir /content/special; cd /content/special
printf '#!/bin/sh\\nid\\n' > suid; chmod 4755 suid
mkfifo pipe
chmod -R a+rX /content
"""
HOSTILE_SSH_PATH = "/usr/local/bin/cgw-hostile-ssh"
HOSTILE_PULL_PATH = "/usr/local/lib/cgw-hostile-pull.py"
HOSTILE_PULL = f"""import asyncio, sys
from pathlib import Path
from typing import Any
from gateway.sync.pull import PullPlan, pull
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import SnapshotStore

store = SnapshotStore(Path("{STATE}/sync/colab"))
remote = Remote(ssh=("{HOSTILE_SSH_PATH}",))
# The second pull links against the first (--link-dest) and takes the special files too.
for paths in (["/content/outputs"], ["/content/outputs", "/content/special"]):
    plan = PullPlan(paths=paths, max_bytes=1 << 20, max_entries=1000)
    info = asyncio.run(pull(store, remote, plan))
    print("pulled", info.id, "kept_previous", list(info.kept_previous), flush=True)
"""
# Everything the service can write outside its snapshot store, and what a VM would want.
FINGERPRINT = (
    f"sudo find {STATE} {SERVICE_HOME} /etc/colab-gateway -path {STATE}/sync -prune -o "
    "-printf '%p %y %i %n %m %U %s %T@ %l\\n' | sort; "
    f"sudo find {STATE} {SERVICE_HOME} /etc/colab-gateway -path {STATE}/sync -prune -o "
    "-type f -print0 | sudo xargs -0 sha256sum | sort"
)


def test_a_hostile_pull_under_the_units_sandbox_changes_nothing_outside_the_store(
    deployed: Deployment,
) -> None:
    """Issue 22: the installed package pulls twice from a VM that forges names and plants
    links, setuid files and a FIFO, as the service user under the service's sandbox; the
    state directory, the service's home and /etc/colab-gateway are left exactly as they
    were, and the store holds no link, special file, setuid bit or hard link out of it."""
    m = deployed.machine
    unit = "cgw-hostile-pull.service"
    for text, path in ((HOSTILE_SSH, HOSTILE_SSH_PATH), (HOSTILE_PULL, HOSTILE_PULL_PATH)):
        m.run(f"printf %s {shlex.quote(text)} | sudo tee {path} >/dev/null")
    m.run(f"sudo chmod 755 {HOSTILE_SSH_PATH}")
    m.run(f"sudo sh -c {shlex.quote(HOSTILE_TREE)}")
    # What a VM is after: the cookies of the user's Google session, an authorized_keys.
    m.run(
        f"{AS_SERVICE} sh -c 'mkdir -p {STATE}/chromium-profile/Default && "
        f"echo google-session > {STATE}/chromium-profile/Default/Cookies'"
    )
    m.run(f"sudo install -d -o {SERVICE_USER} -m 700 {SERVICE_HOME}/.ssh")
    m.run(f"echo 'ssh-ed25519 AAAA the-users-key' | sudo tee {SERVICE_HOME}/.ssh/authorized_keys")
    m.run(f"sudo sh -c 'test -f {STATE}/keys/host_ed25519'")
    # The store's parent made now: creating it is the pull's one legitimate change outside.
    m.run(f"{AS_SERVICE} mkdir -p -m 700 {STATE}/sync")
    m.run(
        f"sudo tee /etc/systemd/system/{unit} >/dev/null <<'EOF'\n"
        + sandboxed_oneshot_unit(f"{VENV}/bin/python {HOSTILE_PULL_PATH}")
        + "EOF\n"
    )
    m.run("sudo systemctl daemon-reload")
    # The daemon writes its own state files as it runs: stopped, the state holds still.
    m.run("sudo systemctl stop colab-gateway")
    try:
        before = m.run(FINGERPRINT).stdout
        started = m.run(f"sudo systemctl start {unit}", check=False, timeout=180)
        # --all: journalctl would show a line holding an escape code as "[blob data]".
        log = m.run(f"sudo journalctl -u {unit} -o cat --all --no-pager", check=False).stdout
        after = m.run(FINGERPRINT).stdout
        assert after == before, f"the hostile pull changed files outside the store:\n{log[-3000:]}"
        assert started.returncode == 0, log[-3000:]
        assert log.count("pulled ") == 2, log[-3000:]
        assert "\x1b" not in log, "a VM's escape code reached the journal raw"

        store = f"{STATE}/sync/colab"
        found = m.run(
            f"sudo find {store} -mindepth 2 \\( -type p -o -type c -o -type b -o -perm /6000 \\) "
            "-printf '%p %y %m\\n'"
        ).stdout
        assert found == "", f"special or setuid files kept in the store:\n{found}"
        links = m.run(f"sudo find {store} -mindepth 2 -type l -printf '%l\\n'").stdout.split()
        assert links and all(t.startswith("/rsyncd-munged/") for t in links), links
        inside = set(m.run(f"sudo find {store} -type f -printf '%i\\n'").stdout.split())
        outside = set(
            m.run(
                f"sudo find {STATE} {SERVICE_HOME} -path {store} -prune -o -type f -printf '%i\\n'"
            ).stdout.split()
        )
        assert not inside & outside, "a file outside the store was hard-linked into it"
        print(log.strip().splitlines()[-1])
    finally:
        m.run(f"sudo rm -f /etc/systemd/system/{unit} {HOSTILE_SSH_PATH} {HOSTILE_PULL_PATH}")
        m.run("sudo systemctl daemon-reload")
        m.run(f"sudo rm -rf /content {STATE}/sync {STATE}/chromium-profile", check=False)
        m.run("sudo systemctl start colab-gateway")
        wait_active(m, "colab-gateway")


# ---- issue 24: a Chromium left holding the profile after a hard kill -----------------


def session_runtime(m: Machine) -> str:
    """The keep-alive's view of the session's runtime, from `colab-gateway status --json`."""
    result = m.run(f"{AS_SERVICE} colab-gateway status --json", check=False)
    with contextlib.suppress(ValueError):
        facts = (json.loads(result.stdout).get("sessions") or {}).get("colab") or {}
        return str((facts.get("runtime") or {}).get("state", ""))
    return ""


def wait_runtime(m: Machine, state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (seen := session_runtime(m)) != state:
        if time.monotonic() > deadline:
            status = m.run(f"{AS_SERVICE} colab-gateway status", check=False).stdout
            journal = m.run(
                "sudo journalctl -u colab-gateway -o cat --no-pager -n 60", check=False
            ).stdout
            raise AssertionError(
                f"runtime {seen!r}, not {state!r}, after {timeout:.0f}s:\n{status}\n{journal}"
            )
        time.sleep(1)


def service_pids(m: Machine) -> list[int]:
    """Every process in colab-gateway.service's cgroup (procps asks systemd's cgroup
    naming: the unit of each process)."""
    rows = m.run("ps -e -o pid=,unit=").stdout.splitlines()
    return [
        int(pid)
        for pid, _, unit in (r.strip().partition(" ") for r in rows)
        if unit.strip() == "colab-gateway.service"
    ]


def move_into_scope(m: Machine, scope: str, keep: int) -> list[int]:
    """What `snap run` does to the snap's Chromium: every process of the service but
    ``keep`` (its main process) goes into a transient scope, a cgroup of its own outside the
    service's (systemd's StartTransientUnit with PIDs). Chromium starts and ends helper
    processes all the time: one gone between the listing and the call is listed again."""
    for _ in range(10):
        pids = [pid for pid in service_pids(m) if pid != keep]
        if not pids:  # what was listed before ended meanwhile
            return []
        call = m.run(
            "sudo busctl call org.freedesktop.systemd1 /org/freedesktop/systemd1 "
            "org.freedesktop.systemd1.Manager StartTransientUnit 'ssa(sv)a(sa(sv))' "
            f"{scope} fail 1 PIDs au {len(pids)} {' '.join(map(str, pids))} 0",
            check=False,
        )
        if call.returncode == 0:
            return pids
        assert "does not exist" in call.stderr, call.stderr
    raise AssertionError(f"could not move the browser into {scope}: {call.stderr}")


def test_a_chromium_left_in_another_cgroup_is_ended_after_a_hard_kill(
    deployed: Deployment,
) -> None:
    """Issue 24, item 1: with the keep-alive on (against a simulated Colab page served by
    this side: the machine shares its network), the daemon's chromedriver and Chromium are
    moved out of the service's cgroup into a scope of their own, as `snap run` does on
    Ubuntu, and the daemon is SIGKILLed. systemd restarts it; the new daemon ends the
    browser left holding the profile and the runtime is connected again, no manual step."""
    from gateway.sim.colab import SimColab

    m = deployed.machine
    sim = SimColab(connect_delay=0.3).start()
    scope = f"cgw-left-browser-{os.getpid()}.scope"
    overrides = {
        "colab_gateway_config_overrides": {
            # Full Chromium, as the Ubuntu snap is: the headless shell starts even beside a
            # live holder of its profile.
            "browser": {"enabled": True, "headless": True, "engine": "chromium", "poll_every": "1s"}
        },
        "colab_gateway_sessions": [
            {
                "name": "colab",
                "notebook_url": sim.url,
                "forwards": {"ssh": {"colab": 22, "local": free_port()}},
            }
        ],
    }
    try:
        result = deployed.play("-e", json.dumps(overrides))
        assert result.returncode == 0, result.stdout[-6000:]
        old_main = restart_and_wait(m)
        wait_runtime(m, "connected", 180)
        left = move_into_scope(m, scope, keep=old_main)
        names = m.run(f"ps -o comm= -p {','.join(map(str, left))}", check=False).stdout.split()
        assert "chromedriver" in names and any(n.startswith("chrom") for n in names), names
        # A helper Chromium forked while the move ran is born in the service's cgroup: it
        # follows into a scope of its own. (The daemon's own short-lived children, a tmux
        # command say, may come and go.)
        for n in range(5):
            stayed = [p for p in service_pids(m) if p != old_main]
            listed = m.run(f"ps -o pid=,comm= -p {','.join(map(str, stayed))}", check=False)
            browsers = [int(r.split()[0]) for r in listed.stdout.splitlines() if "chrom" in r]
            if stayed and browsers:
                left += move_into_scope(m, f"{scope.removesuffix('.scope')}-{n}.scope", old_main)
            else:
                break
        else:
            raise AssertionError(f"Chromium keeps starting processes in the service: {listed}")
        m.run("sudo systemctl kill --kill-who=main --signal=SIGKILL colab-gateway")

        deadline = time.monotonic() + 60
        while (pid := main_pid(m)) in (0, old_main):
            assert time.monotonic() < deadline, "systemd did not restart the service"
            time.sleep(0.5)
        wait_runtime(m, "connected", 180)
        alive = m.run(f"ps -o pid= -p {','.join(map(str, left))}", check=False).stdout.split()
        assert alive == [], f"left holding the profile: {alive}"
        journal = m.run(
            f"sudo journalctl -u colab-gateway -o cat --no-pager _PID={pid}", check=False
        ).stdout
        print("\n".join(line for line in journal.splitlines() if "profile" in line))
    finally:
        sim.stop()
        m.run(f"sudo systemctl stop '{scope.removesuffix('.scope')}*.scope'", check=False)
        restored = deployed.play()
        assert restored.returncode == 0, restored.stdout[-6000:]
        restart_and_wait(m)


# ---- the login user: a plain `tmux attach` into a VM, and the laptop path (issue 24) ----

# A Colab VM stand-in inside the machine: a root process in private mount and UTS
# namespaces with its own /root, /etc/ssh and /run (as gateway/sim/vm.py isolates its VM),
# running the real bootstrap script, which starts the VM's sshd on a free loopback port
# and dials the endpoint. A transient unit holds all of it, so stopping the unit ends it.
VM_DIR = "/srv/cgw-vm"
VM_HOSTNAME = "cgw-vm-deploy"
VM_UNIT = "cgw-vm.service"
PI_SELF = "pi-self"  # the name pi's own ssh knows this machine by (the laptop's "pi")
VM_ENTER = f"""set -e
mount --make-rslave /
mount -t tmpfs -o mode=0755 vm-run /run
mkdir -m 0755 /run/sshd
mount --bind {VM_DIR}/root /root
mount --bind {VM_DIR}/etc-ssh /etc/ssh
hostname {VM_HOSTNAME}
export HOME=/root GW_PI_PUBKEY="$(cat {VM_DIR}/pubkeys)"
cd /root
exec bash {VM_DIR}/bootstrap.sh
"""


@dataclass(frozen=True)
class VM:
    machine: Machine
    sshd_port: int  # the VM's sshd, on this machine's loopback
    tunnel_port: int  # the endpoint the VM dials


def _pane_text(m: Machine) -> str:
    return m.run(f"{AS_SERVICE} tmux capture-pane -p -t {TMUX_SESSION}:", check=False).stdout


@pytest.fixture(scope="module")
def vm(deployed: Deployment) -> Iterator[VM]:
    m = deployed.machine
    sshd_port = free_port()
    # pi's own key and name for this machine: the laptop's side of the laptop path.
    m.run(
        "test -f ~/.ssh/id_ed25519 || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; "
        "grep -qf ~/.ssh/id_ed25519.pub ~/.ssh/authorized_keys "
        "|| cat ~/.ssh/id_ed25519.pub >> ~/.ssh/authorized_keys; "
        f"printf 'Host {PI_SELF}\\n    HostName 127.0.0.1\\n    Port {m.ssh_port}\\n"
        f"    User {LOGIN_USER}\\n    IdentityFile ~/.ssh/id_ed25519\\n' > ~/.ssh/config; "
        f"printf '[127.0.0.1]:{m.ssh_port} %s\\n' \"$(cut -d' ' -f1,2 "
        '/etc/ssh/ssh_host_ed25519_key.pub)" > ~/.ssh/known_hosts'
    )
    m.run(f"sudo install -d -m 0700 {VM_DIR} {VM_DIR}/root {VM_DIR}/root/.colab-gateway")
    m.run(f"sudo install -d -m 0755 {VM_DIR}/etc-ssh")
    m.run(
        f"{AS_SERVICE} colab-gateway snippet --shell --host 127.0.0.1 "
        f"--port {deployed.tunnel_port} {TMUX_SESSION} | sudo tee {VM_DIR}/bootstrap.sh >/dev/null"
    )
    m.run(
        f"{AS_SERVICE} colab-gateway keys --private {TMUX_SESSION} "
        f"| sudo tee {VM_DIR}/root/.colab-gateway/tunnel_key >/dev/null"
    )
    # The Pi's key (what the tmux pane logs in with) and pi's (what ssh-config's user has).
    m.run(
        f"set -o pipefail; {{ sudo cat /home/{SERVICE_USER}/.ssh/id_ed25519.pub && "
        f"cat ~/.ssh/id_ed25519.pub; }} | sudo tee {VM_DIR}/pubkeys >/dev/null"
    )
    m.run(
        f"sudo systemd-run --unit={VM_UNIT} -p Type=oneshot -p RemainAfterExit=yes "
        f"--setenv=GW_SSHD_PORT={sshd_port} --setenv=GW_INSTALL=0 "
        f"unshare -m -u sh -c {shlex.quote(VM_ENTER)}",
        timeout=180,
    )
    try:
        deadline = time.monotonic() + 120
        while VM_HOSTNAME not in (pane := _pane_text(m)):
            assert time.monotonic() < deadline, (
                f"the tmux pane never logged into the VM:\n{pane}\n"
                + m.run(f"sudo journalctl -u {VM_UNIT} -o cat --no-pager", check=False).stdout[
                    -3000:
                ]
            )
            time.sleep(1)
        yield VM(m, sshd_port, deployed.tunnel_port)
    finally:
        m.run(f"sudo systemctl stop {VM_UNIT}", check=False)
        m.run(f"sudo rm -rf {VM_DIR}", check=False)


def _read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What ``process`` wrote to stdout until ``marker`` appeared (or the time ran out)."""
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline and process.poll() is None:
        select.select([process.stdout], [], [], 1.0)
        chunk = process.stdout.read(65536)
        if chunk:
            seen += chunk
    return seen


def test_the_login_user_attaches_with_a_plain_tmux_attach(vm: VM) -> None:
    """Issue 24, Deliver 2: as pi, in a terminal, a plain `tmux attach` shows the pane
    logged into the VM. The client runs as the service user (a tmux client obeys its
    server: docs/tmux-attach.md), in a terminal of sudo's, not pi's own."""
    m = vm.machine
    m.run("rm -f /tmp/cgw-attach-tty")
    command = m.ssh_command("tty > /tmp/cgw-attach-tty; exec timeout 120 tmux attach")
    process = subprocess.Popen(
        [command[0], "-tt", *command[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        seen = _read_until(process, VM_HOSTNAME.encode(), 60)
        assert VM_HOSTNAME.encode() in seen, seen[-3000:]
        pi_tty = m.run("cat /tmp/cgw-attach-tty").stdout.strip().removeprefix("/dev/")
        # By command line: tmux renames its processes ("tmux: client (/tmp/…"), so
        # `ps -C tmux` finds none of them.
        rows = [r.split(None, 2) for r in m.run("ps -e -o user:32=,tty=,args=").stdout.splitlines()]
        clients = [r for r in rows if len(r) == 3 and r[2].startswith("/usr/bin/tmux attach")]
        assert clients, rows
        for user, tty, _ in clients:
            assert user == SERVICE_USER, clients
            assert tty != pi_tty, (pi_tty, clients)
        mine = m.run(f"ps -u {LOGIN_USER} -o args=").stdout.splitlines()
        assert not [a for a in mine if a.startswith(("tmux", "/usr/bin/tmux"))], mine
        # The service user's server, its socket directory private as before.
        mode = m.run(f"{AS_SERVICE} sh -c 'stat -c %a /tmp/tmux-$(id -u)'").stdout.strip()
        assert mode == "700", mode
    finally:
        process.kill()
        process.wait(timeout=30)
        assert process.stdout is not None and process.stdin is not None
        process.stdout.close()
        process.stdin.close()


def _scp_from_machine(m: Machine, remote: str, local: Path) -> subprocess.CompletedProcess[str]:
    ssh = m.ssh_command("true")
    options = ssh[1 : ssh.index(f"{LOGIN_USER}@127.0.0.1")]
    options = [("-P" if o == "-p" else o) for o in options]
    return subprocess.run(
        ["scp", *options, f"{LOGIN_USER}@127.0.0.1:{remote}", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
    )


# The daemon's own evidence writer, as the service user under the unit's UMask, with a
# page that has a screenshot to give (the browser is off in this machine).
EVIDENCE = f"""import sys
from pathlib import Path
from gateway.browser.evidence import Evidence

class Page:
    def get_screenshot_as_png(self):
        return b"\\x89PNG\\r\\n\\x1a\\n deploy-test"

print(Evidence(Path("{STATE}/screenshots"), 5).save("colab", "deploy-test", {{}}, Page()))
"""


def test_the_laptop_path_works_as_the_login_user(vm: VM, tmp_path: Path) -> None:
    """Issue 24, Deliver 3, with the default dedicated user: as pi, `colab-gateway
    ssh-config` and the KnownHostsCommand it writes log into the VM through the forward,
    and the notebook and a screenshot can be copied off the machine as pi (`scp pi:…`)."""
    m = vm.machine
    conf = m.run(f"colab-gateway ssh-config --pi {PI_SELF} {TMUX_SESSION}", check=False)
    assert conf.returncode == 0, conf.stderr
    assert "KnownHostsCommand" in conf.stdout, conf.stdout
    m.run(
        f"cat ~/.ssh/config > /tmp/cgw-laptop.conf && printf %s {shlex.quote(conf.stdout)} "
        ">> /tmp/cgw-laptop.conf"
    )
    known = m.run(f"colab-gateway ssh-config --known-hosts {TMUX_SESSION}", check=False)
    assert known.returncode == 0 and known.stdout.startswith("colab-"), known
    login = m.run(
        f"ssh -F /tmp/cgw-laptop.conf -o BatchMode=yes colab-{TMUX_SESSION} hostname",
        check=False,
        timeout=60,
    )
    assert login.stdout.strip() == VM_HOSTNAME, login

    # The notebook, as docs/install.md makes it (with the address this machine's VM dials).
    m.run(
        f"rm -f /tmp/gateway.ipynb && {AS_SERVICE} colab-gateway notebook --host 127.0.0.1 "
        f"--port {vm.tunnel_port} {TMUX_SESSION} -o /tmp/gateway.ipynb"
    )
    copied = _scp_from_machine(m, "/tmp/gateway.ipynb", tmp_path / "gateway.ipynb")
    assert copied.returncode == 0, copied.stderr
    assert json.loads((tmp_path / "gateway.ipynb").read_text())["cells"]

    m.run(f"printf %s {shlex.quote(EVIDENCE)} | sudo tee /tmp/cgw-evidence.py >/dev/null")
    saved = m.run(f"{AS_SERVICE} sh -c 'umask 077; {VENV}/bin/python /tmp/cgw-evidence.py'")
    png = saved.stdout.strip()
    assert png.startswith(f"{STATE}/screenshots/") and png.endswith(".png"), saved
    copied = _scp_from_machine(m, png, tmp_path / "shot.png")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "shot.png").read_bytes().startswith(b"\x89PNG")
    # What pi may read is exactly that: the daemon's keys stay out of reach.
    for secret in (f"{STATE}/keys/host_ed25519", f"/home/{SERVICE_USER}/.ssh/id_ed25519"):
        assert m.run(f"cat {secret}", check=False).returncode != 0, secret
