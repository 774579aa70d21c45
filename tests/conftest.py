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

# -- scheduling under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) -----------------
#
# Tests that share something run in one xdist group: one worker runs the whole group, one
# test after the other, while the other worker runs everything else. Groups come from:
# - an explicit `@pytest.mark.xdist_group("name")` on a test or module;
# - a module whose tests share a fixture of module scope or wider (the keep-alive's one
#   Chromium, the end-to-end harness, the deployed machine): spread over two workers, each
#   would build its own copy of it, doubling the slowest set-up in the suite.
# What needs no group, checked for each kind of global resource: network namespaces are
# named after the owning pid (gateway/sim/vm.py) and their veth addresses exist only inside
# them; tmux always runs on a per-test TMUX_TMPDIR; servers bind port 0; temporary
# directories are per worker. The deploy test's debootstrap cache is shared, but guarded by
# a file lock (and it is a single group anyway).
#
# Groups go before single tests, and FIRST lists the longest groups, so that they overlap
# the rest of the suite instead of running alone at its end (the deployed machine takes
# 3-5 min). xdist hands the work units out in collection order (--no-loadscope-reorder).
FIRST = ("tests/test_deploy.py",)


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # pytest's own record of the item's fixtures
    if info is None:
        return False
    return any(defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the marks must be there before xdist turns them into work units.
    for item in items:
        if item.get_closest_marker("xdist_group") is None and _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(_module(item)))


class _LongestFirst:
    @pytest.hookimpl(trylast=True)  # after pytest-random-order has shuffled
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # FIRST, then the other groups (long by nature: they share a costly set-up), then
        # the single tests. A stable sort: each part keeps its (random) order.
        def rank(item: pytest.Item) -> int:
            if _module(item) in FIRST:
                return 0
            return 1 if item.get_closest_marker("xdist_group") else 2

        items.sort(key=rank)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_LongestFirst(), "colab-gateway-longest-first")


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
