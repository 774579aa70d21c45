"""Upgrade in place (issue 25, Deliver 3): from the previous release to this checkout.

A module of its own, so that its machine boots and plays beside test_deploy.py's (under
`make test`'s workers) instead of after it. The machine and the VM stand-in are
test_deploy.py's fixtures, imported, and so made once more for this module alone; its first
play is the previous release's own role and wheel, as a Pi installed then had it, with the
keep-alive on against a simulated page. The test then plays this checkout's.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import test_deploy as base
from helpers.deploy import (
    AS_SERVICE,
    CACHE_DIR,
    PLAYBOOK_TIMEOUT,
    REPO,
    TMUX_SESSION,
    VENV,
    Controller,
    Machine,
    cache_lock,
    changed_tasks,
    main_pid,
    run_playbook,
    tmux_server,
)
from test_deploy import (
    STATE,
    VM,
    VM_HOSTNAME,
    Deployment,
    _pane_text,
    wait_runtime,
)

if TYPE_CHECKING:
    from gateway.sim.colab import SimColab

pytestmark = base.pytestmark
# test_deploy.py's fixtures, under their own names (pytest finds a fixture by the name of
# the module attribute holding it; set through globals() because the tests' parameters
# carry the same names): this module gets a machine and a VM stand-in of its own. Its
# `deployed` is its own (below): the previous release's first play, which test_deploy.py's
# `vm` then uses too (a fixture is looked up from the test that asks).
for _fixture in ("controller", "machine", "vm"):
    globals()[_fixture] = getattr(base, _fixture)


# ---- issue 25: upgrade in place, from the previous release to this checkout ------------

# The previous release: the last main before issue 25's work. Its own role and wheel are
# played first (what a Pi installed then has), then this checkout's.
PREVIOUS_RELEASE = "c40479d"
UPGRADE_VM_TREE = "/srv/cgw-upgrade-vm"
UPGRADE_SSH_PATH = "/usr/local/bin/cgw-upgrade-ssh"
UPGRADE_PULL_PATH = "/usr/local/lib/cgw-upgrade-pull.py"
# The VM's side of a pull: a local "ssh" that runs the rsync server it is asked for.
UPGRADE_SSH = """#!/bin/sh
while [ "$#" -gt 0 ] && [ "$1" != rsync ]; do shift; done
exec "$@"
"""
# A real pull with the installed (previous) package, as the service user.
UPGRADE_PULL = f"""import asyncio
from pathlib import Path
from gateway.sync.pull import PullPlan, pull
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import SnapshotStore

store = SnapshotStore(Path("{STATE}/sync/{TMUX_SESSION}"))
plan = PullPlan(paths=["{UPGRADE_VM_TREE}/outputs"], max_bytes=1 << 20, max_entries=100)
info = asyncio.run(pull(store, Remote(ssh=("{UPGRADE_SSH_PATH}",)), plan))
print("pulled", info.id, flush=True)
"""
PROFILE_COOKIE = f"{STATE}/chromium-profile/Default/cgw-upgrade-cookie"


@dataclass(frozen=True)
class Release:
    tree: Path  # the release's source, its role included
    wheel: Path


def previous_release(controller: Controller) -> Release:
    """The previous release's source and wheel, made once per commit in CACHE_DIR: `git
    archive` of the commit, and `pip wheel` of it with the controller's Python, as the
    role builds a checkout's (tasks/wheel-build.yml)."""
    commit = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "rev-parse",
            "--verify",
            "--quiet",
            f"{PREVIOUS_RELEASE}^{{commit}}",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not commit:
        pytest.skip(
            f"this clone lacks commit {PREVIOUS_RELEASE}, the previous release the upgrade "
            "starts from (a shallow clone? git fetch --unshallow)"
        )
    home = CACHE_DIR / f"release-{commit[:12]}"
    python = controller.playbook.parent / "python"
    with cache_lock():
        wheels = sorted((home / "wheel").glob("colab_gateway-*.whl"))
        if (home / "complete").exists() and wheels:
            return Release(home / "src", wheels[0])
        shutil.rmtree(home, ignore_errors=True)
        (home / "src").mkdir(parents=True)
        try:
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", "--format=tar", commit],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-C", str(home / "src"), "-xf", "-"], input=archive, check=True)
            subprocess.run(
                [
                    *(str(python), "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"),
                    *("--no-deps", "--wheel-dir", str(home / "wheel"), str(home / "src")),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
                env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
            )
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(home, ignore_errors=True)
            pytest.fail(f"building release {commit[:12]} failed: {exc}\n{exc.stderr!s:.3000}")
        (home / "complete").touch()
        return Release(home / "src", next((home / "wheel").glob("colab_gateway-*.whl")))


def play_release(
    controller: Controller, inventory: Path, workdir: Path, release: Release, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The release's own playbook and role, with its wheel."""
    return run_playbook(
        controller,
        inventory,
        workdir,
        *("-e", f"colab_gateway_wheel={release.wheel}"),
        *extra,
        tree=release.tree,
    )


def keepalive_on(inventory: Path, sim_url: str) -> str:
    """Extra variables that turn the keep-alive on against the simulated page: the
    inventory's session with the page's address and the same forwards, which the VM
    stand-in's bootstrap asks for."""
    sessions = json.loads(inventory.read_text())["colab_gateway"]["vars"]["colab_gateway_sessions"]
    return json.dumps(
        {
            "colab_gateway_config_overrides": {
                "browser": {"enabled": True, "headless": True, "poll_every": "1s"}
            },
            "colab_gateway_sessions": [{**sessions[0], "notebook_url": sim_url}],
        }
    )


@pytest.fixture(scope="module")
def sim_page() -> Iterator[SimColab]:
    """The simulated notebook page, served from this side (the machine shares its network)."""
    from gateway.sim.colab import SimColab

    sim = SimColab(connect_delay=0.3).start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def deployed(
    machine: Machine,
    controller: Controller,
    sim_page: SimColab,
    tmp_path_factory: pytest.TempPathFactory,
) -> Deployment:
    """The previous release's play on the fresh machine, with the keep-alive on."""
    release = previous_release(controller)
    return base.first_deployment(
        machine,
        controller,
        tmp_path_factory.mktemp("ansible"),
        lambda inventory, workdir: play_release(
            controller, inventory, workdir, release, "-e", keepalive_on(inventory, sim_page.url)
        ),
    )


class EndpointProbe:
    """Asks the tunnel endpoint for its SSH banner every 0.1 s in a thread, and keeps the
    longest time it did not answer (a measurement, printed, never asserted)."""

    def __init__(self, port: int) -> None:
        import threading

        self.port = port
        self.stop = threading.Event()
        self.longest_down = 0.0
        self.probes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EndpointProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=30)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.settimeout(1)
                return conn.recv(8).startswith(b"SSH-")
        except OSError:
            return False

    def _run(self) -> None:
        down_since: float | None = None
        deadline = time.monotonic() + PLAYBOOK_TIMEOUT
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.probes += 1
            now = time.monotonic()
            if self._answers():
                if down_since is not None:
                    self.longest_down = max(self.longest_down, now - down_since)
                down_since = None
            elif down_since is None:
                down_since = now
            self.stop.wait(0.1)
        if down_since is not None:
            self.longest_down = max(self.longest_down, time.monotonic() - down_since)


def upgrade_kept(m: Machine) -> dict[str, str]:
    """What an upgrade must keep: the keys' fingerprints, the pinned host keys, the profile's
    cookie, the snapshots (ids and file hashes), the tmux server and session."""
    fingerprints = m.run(
        f"sudo sh -c 'for k in {STATE}/keys/*; do case $k in *.pub) continue;; esac; "
        'printf "%s " $k; ssh-keygen -l -f $k; done\''
    ).stdout
    pid, created = tmux_server(m)
    return {
        "key fingerprints": fingerprints,
        "pinned host keys": m.run(f"sudo sha256sum {STATE}/known_hosts").stdout,
        "profile cookie": m.run(f"sudo sha256sum {PROFILE_COOKIE}").stdout,
        "snapshots": m.run(
            f"sudo sh -c 'cd {STATE}/sync/{TMUX_SESSION} && ls -1 && "
            'find . -type f ! -name "*.json" -print0 | sort -z | xargs -0 sha256sum\''
        ).stdout,
        "tmux server pid": pid,
        "tmux session created": created,
        "tmux unit invocation": m.run(
            "systemctl show -p InvocationID --value colab-gateway-tmux"
        ).stdout.strip(),
    }


def wait_pane_in_vm(m: Machine, timeout: float) -> None:
    """Until the pane's last line is the VM's prompt (its scrollback may hold an older one)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in _pane_text(m).splitlines() if line.strip()]
        if lines and VM_HOSTNAME in lines[-1]:
            return
        assert time.monotonic() < deadline, "the pane is not in the VM:\n" + "\n".join(lines)
        time.sleep(1)


def test_an_upgrade_in_place_keeps_keys_profile_snapshots_and_the_tmux_session(
    deployed: Deployment, vm: VM, sim_page: SimColab
) -> None:
    """Issue 25, Deliver 3: the previous release (its role and its wheel, the module's first
    play) runs with the keep-alive on against a simulated page, the VM stand-in connected
    and its pane logged in, a cookie in the profile and a snapshot made by a real pull. Then
    this checkout's role and wheel are played: the gateway restarts exactly once, the tmux
    server is not restarted (same pid, same session), the keys, the pinned host keys, the
    cookie and the snapshots are the same, and the runtime is connected again. The module's
    only test: its machine is thrown away after it."""
    m = deployed.machine
    release = previous_release(deployed.controller)
    overrides = keepalive_on(deployed.inventory, sim_page.url)
    wait_runtime(m, "connected", 180)
    wait_pane_in_vm(m, 120)
    installed = m.run(f"cat {VENV}/lib/python3*/site-packages/gateway/__init__.py").stdout
    assert installed == (release.tree / "gateway/__init__.py").read_text()

    m.run(
        f"{AS_SERVICE} sh -c 'mkdir -p {STATE}/chromium-profile/Default && "
        f"head -c 4096 /dev/urandom > {PROFILE_COOKIE}'"
    )
    for text, path in ((UPGRADE_SSH, UPGRADE_SSH_PATH), (UPGRADE_PULL, UPGRADE_PULL_PATH)):
        m.run(f"printf %s {shlex.quote(text)} | sudo tee {path} >/dev/null")
    m.run(f"sudo chmod 755 {UPGRADE_SSH_PATH}")
    m.run(
        f"sudo sh -c 'rm -rf {UPGRADE_VM_TREE} && mkdir -p {UPGRADE_VM_TREE}/outputs && "
        f"head -c 100000 /dev/urandom > {UPGRADE_VM_TREE}/outputs/model.bin && "
        f"echo results > {UPGRADE_VM_TREE}/outputs/results.txt && "
        f"chmod -R a+rX {UPGRADE_VM_TREE}'"
    )
    pulled = m.run(f"{AS_SERVICE} {VENV}/bin/python {UPGRADE_PULL_PATH}").stdout
    assert pulled.startswith("pulled "), pulled

    before = upgrade_kept(m)
    pid_before = main_pid(m)
    restarts_before = m.run("systemctl show -p NRestarts --value colab-gateway").stdout
    cursor = m.run("sudo journalctl -u colab-gateway -n 0 --show-cursor --no-pager").stdout
    cursor = cursor.strip().rpartition("cursor: ")[2]

    started = time.monotonic()
    with EndpointProbe(deployed.tunnel_port) as probe:
        new = deployed.play("-e", overrides)
        play_seconds = time.monotonic() - started
        wait_runtime(m, "connected", 180)
        connected_seconds = time.monotonic() - started
    assert new.returncode == 0, f"the upgrade's play failed:\n{new.stdout[-6000:]}"
    print(
        f"upgrade play: {play_seconds:.1f}s, runtime connected again "
        f"{connected_seconds:.1f}s after it began; the tunnel endpoint did not answer for "
        f"{probe.longest_down:.1f}s at most ({probe.probes} probes); changed: "
        f"{changed_tasks(new.stdout)}"
    )
    assert "TASK [colab_gateway : Install the wheel by its hash]" in changed_tasks(new.stdout)
    installed = m.run(f"cat {VENV}/lib/python3*/site-packages/gateway/__init__.py").stdout
    assert installed == (REPO / "gateway/__init__.py").read_text()

    # Exactly one restart of the gateway: one stop, one start, none by systemd itself.
    journal = m.run(
        f"sudo journalctl -u colab-gateway --after-cursor={shlex.quote(cursor)} -o cat --no-pager"
    ).stdout
    starts = [line for line in journal.splitlines() if line.startswith("gateway: started (")]
    stops = [line for line in journal.splitlines() if line == "gateway: stopping"]
    assert (len(stops), len(starts)) == (1, 1), journal[-4000:]
    assert main_pid(m) != pid_before
    assert m.run("systemctl show -p NRestarts --value colab-gateway").stdout == restarts_before

    wait_pane_in_vm(m, 120)
    after = upgrade_kept(m)
    assert after == before
    # The new daemon recorded the state's layout (gateway/state_format.py): today's.
    recorded = json.loads(m.run(f"sudo cat {STATE}/format").stdout)
    assert recorded["version"] == 1, recorded
