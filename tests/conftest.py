"""Fixtures shared by the tests: real sockets, real processes, isolated directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import helpers
import pytest
from helpers import MINIMAL_CONFIG, Daemon, NotifySocket, StartDaemon, checkout_guard

# -- scheduling under pytest-xdist (`make test`: -n 3 --dist loadscope) ----------------------
#
# Each test module is one unit of work: one worker runs all of its tests, one after the
# other, while the other workers run other modules. That keeps together what a module's
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
# LONGEST_FIRST: the longest modules, handed out first (longest first is what balances the
# workers), so that the deployed machine (3-5 min) overlaps the rest of the suite instead
# of running alone at its end. Measured with --durations on 2 cores: deploy 210 s, browser
# policies 66 s, browser reload 59 s, sync e2e 55 s, browser engine 40 s (alone), tunnel
# endpoint 38 s, e2e 22 s; everything else is below 21 s. The remaining modules keep their
# random order.
LONGEST_FIRST = (
    "tests/test_deploy.py",
    "tests/test_deploy_upgrade.py",
    "tests/browser/test_policies.py",
    "tests/browser/test_reload.py",
    "tests/sync/test_e2e.py",
    "tests/browser/test_engine.py",
    "tests/tunnel/test_endpoint.py",
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
        daemon = helpers.start_daemon(
            tmp_path,
            config_text,
            env=env,
            config_path=config_path,
            log=tmp_path / f"daemon-{len(started)}.log",
        )
        started.append(daemon)
        return daemon

    yield start
    helpers.end_daemons(started, tmp_path)


# -- the checkout guard (tests/helpers/checkout_guard.py) ----------------------------------
#
# Once per run, in the process that starts and ends it (the xdist controller, or the only
# process): a path that appeared in the checkout during the run fails the run.
_CHECKOUT_BEFORE = pytest.StashKey[frozenset[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        session.config.stash[_CHECKOUT_BEFORE] = checkout_guard.checkout_paths(helpers.REPO)


def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_CHECKOUT_BEFORE, None)
    if before is None:
        return
    new = checkout_guard.left_behind(before, helpers.REPO)
    if new:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (
            f"tests left {len(new)} path(s) in the checkout {helpers.REPO}: "
            + ", ".join(repr(path) for path in new[:10])
            + " (a test must write under its tmp_path; remove them, then find the test)"
        )
        if reporter is not None:
            reporter.write("\n")
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
