"""Fixtures shared by the tests: real sockets, real processes, isolated directories."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MINIMAL_CONFIG, REPO, Daemon, NotifySocket, StartDaemon

# -- scheduling under pytest-xdist (`make test`: -n 2 --dist loadscope) ----------------------
#
# Each test module is one unit of work: one worker runs all of its tests, one after the
# other, while the other worker runs other modules. That keeps together what a module's
# tests share: a module-scoped fixture (the keep-alive's one Chromium, the end-to-end
# harness, the deployed machine), which two workers would each build again. Nothing else
# needs to be kept apart, checked for each kind of global resource: network namespaces are
# named after the owning pid (gateway/sim/vm.py) and their veth addresses exist only inside
# them; tmux always runs on a per-test TMUX_TMPDIR; ports come from the kernel (bind to
# port 0), none is fixed; temporary directories are per worker; the deploy test's
# debootstrap cache is guarded by a file lock.
# (Not --dist loadgroup with xdist_group marks: with pytest 9.2 it silently stops grouping,
# pytest-xdist issue #1386.)
#
# LONGEST_FIRST: the longest modules, handed out first (longest first is what balances two
# workers), so that the deployed machine (3-5 min) overlaps the rest of the suite instead
# of running alone at its end. Measured with --durations on 2 cores: deploy 210 s, browser
# policies 66 s, browser reload 59 s, tunnel endpoint 38 s, e2e 22 s; everything else is
# below 21 s. The remaining modules keep their random order.
LONGEST_FIRST = (
    "tests/test_deploy.py",
    "tests/test_browser_policies.py",
    "tests/test_browser_reload.py",
    "tests/test_tunnel_endpoint.py",
    "tests/test_e2e.py",
)


@pytest.hookimpl(trylast=True)  # after pytest-random-order has shuffled
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module's tests keep their (random) order


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        yield notify
    finally:
        notify.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[StartDaemon]:
    """Start ``colab-gateway run`` as a real process; killed at teardown if still alive."""
    started: list[Daemon] = []

    def start(
        config_text: str = MINIMAL_CONFIG,
        env: dict[str, str] | None = None,
        config_path: Path | None = None,
    ) -> Daemon:
        config = config_path or tmp_path / "config.yaml"
        if config_path is None:
            config.write_text(config_text)
        state_dir, runtime_dir = tmp_path / "state", tmp_path / "run"
        log = tmp_path / f"daemon-{len(started)}.log"
        full_env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",)}
        full_env.update({"TMUX_TMPDIR": str(tmp_path)})
        full_env.update(env or {})
        with log.open("w") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "run",
                    "-c",
                    str(config),
                    "--state-dir",
                    str(state_dir),
                    "--runtime-dir",
                    str(runtime_dir),
                ],
                env=full_env,
                # A file, not a pipe: a chatty daemon must never block on a full pipe.
                stderr=log_file,
                stdout=subprocess.DEVNULL,
                text=True,
                cwd=REPO,
                # Its own process group, so teardown can end Chromium and ssh children too.
                start_new_session=True,
            )
        daemon = Daemon(proc, config, state_dir, runtime_dir, log)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.proc.pid, signal.SIGKILL)  # whatever it left behind
    if started:
        # A config with tmux enabled makes the daemon start a tmux server on this socket
        # directory; it outlives the daemon by design, so end it here.
        subprocess.run(
            ["tmux", "kill-server"],
            env={**os.environ, "TMUX_TMPDIR": str(tmp_path)},
            capture_output=True,
            timeout=10,
        )
