"""Processes left holding the browser profile (gateway/browser/profile_holders.py), with
real Chromium, chromedriver and Xvfb: what a hard kill of the daemon leaves behind is ended
before the next start and on stop; the browser of a running `colab-gateway login` and the
processes of another user are never ended, and the status says in words what holds the
profile instead of Selenium's SessionNotCreatedException."""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import wait_until

from gateway.browser import launch, login
from gateway.browser.keepalive import restart_reason
from gateway.browser.profile_holders import (
    SINGLETONS,
    ProfileInUse,
    find_holders,
    lock_owner,
    remove_stale_singletons,
)
from gateway.config import BrowserConfig
from gateway.sim import SimColab
from gateway.sim.runner import BrowserRunner

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/lib/chromium/chromium"
HOLDERS_LOG = "gateway.browser.profile_holders"


def chromium_args(profile: Path | None) -> list[str]:
    args = [CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run"]
    return [*args, f"--user-data-dir={profile}", "about:blank"] if profile else args


def holds_lock(profile: Path, pid: int) -> bool:
    return lock_owner(profile) == (socket.gethostname(), pid)


def end(proc: subprocess.Popen[Any]) -> None:
    """Teardown: the process and everything in its session."""
    launch.kill_session(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[Any]]]:
    """Start a process in a session of its own (as one left in another cgroup would be,
    re-parented away from the daemon); ended at teardown whatever the test did."""
    started: list[subprocess.Popen[Any]] = []

    def start(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        end(proc)


@pytest.fixture
def sim() -> Iterator[SimColab]:
    with SimColab(gpu=True) as page:
        yield page


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="profile-holders-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody() -> Callable[[], None]:
    nobody = pwd.getpwnam("nobody")

    def demote() -> None:
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    return demote


def test_launch_ends_a_chromium_left_holding_the_profile_and_connects(
    tmp_path: Path,
    sim: SimColab,
    processes: Callable[..., subprocess.Popen[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    profile = tmp_path / "profile"
    left = processes(chromium_args(profile))
    wait_until(lambda: holds_lock(profile, left.pid), 60, "the left-over Chromium's lock")
    caplog.set_level(logging.WARNING, logger=HOLDERS_LOG)
    runner = BrowserRunner(tmp_path, sim, profile_dir=str(profile), engine="chromium")
    try:
        runner.wait_state("connected", timeout=90)
        assert left.wait(timeout=10) is not None  # ended (it was never ours to end)
        browser = runner.worker().browser
        assert browser is not None
        # the lock is the new Chromium's: the stale one was removed, not inherited
        assert holds_lock(profile, browser.main_pid() or -1)
    finally:
        runner.stop()
    assert f"ended pid {left.pid} (chromium) and " in caplog.text
    assert "removed the stale SingletonLock, SingletonSocket, SingletonCookie" in caplog.text


# What a daemon killed hard (SIGKILL: no exit hook runs) leaves: its chromedriver and the
# Chromium it started, in the driver's session, re-parented to init.
HARD_KILLED = """
import sys, time
from pathlib import Path
from gateway.browser import launch
from gateway.config import BrowserConfig
config = BrowserConfig(profile_dir=sys.argv[1], engine="chromium")
browser = launch.launch(config, Path(sys.argv[2]))
print(browser.sid, browser.main_pid(), flush=True)
time.sleep(600)
"""


def test_launch_ends_the_driver_and_browser_of_a_daemon_killed_hard(
    tmp_path: Path,
    processes: Callable[..., subprocess.Popen[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    profile = tmp_path / "profile"
    daemon = processes(
        [sys.executable, "-c", HARD_KILLED, str(profile), str(tmp_path / "old")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert daemon.stdout is not None
    driver_pid, chromium_pid = (int(word) for word in daemon.stdout.readline().split())
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=10)
    assert launch.is_running(driver_pid) and launch.is_running(chromium_pid)
    caplog.set_level(logging.WARNING, logger=HOLDERS_LOG)
    config = BrowserConfig(profile_dir=str(profile), engine="chromium")
    browser = launch.launch(config, tmp_path / "state", tmp_path / "run")
    try:
        assert browser.alive()
        assert not launch.is_running(driver_pid)
        assert not launch.is_running(chromium_pid)
        assert not launch.session_members(driver_pid)  # all its helpers too
    finally:
        browser.close()
    assert f"ended pid {driver_pid} (chromedriver) and " in caplog.text


LOGIN = """
import json, os, subprocess
browser = subprocess.Popen(json.loads(os.environ["BROWSER_ARGS"]), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
browser.wait()
"""


def test_the_browser_of_a_running_login_is_never_ended_and_named_in_words(
    tmp_path: Path,
    processes: Callable[..., subprocess.Popen[Any]],
    request: pytest.FixtureRequest,
) -> None:
    """`colab-gateway login` holds the profile on purpose (it writes the pause flag with
    its pid, and starts its Chromium in a session of its own)."""
    profile, run = tmp_path / "profile", tmp_path / "run"
    run.mkdir()
    signing_in = processes(
        [sys.executable, "-c", LOGIN],
        env={**os.environ, "BROWSER_ARGS": json.dumps(chromium_args(profile))},
    )
    (run / login.PAUSE_FILE).write_text(json.dumps({"pid": signing_in.pid, "since": 0}))

    def its_browser() -> int | None:
        children = psutil.Process(signing_in.pid).children()
        return next((c.pid for c in children if holds_lock(profile, c.pid)), None)

    chromium = wait_until(its_browser, 60, "the login's Chromium holding the profile")
    request.addfinalizer(lambda: launch.kill_session(chromium))  # it runs in its own session
    family = {chromium, *(p.pid for p in psutil.Process(chromium).children(recursive=True))}

    config = BrowserConfig(profile_dir=str(profile), engine="chromium")
    with pytest.raises(ProfileInUse) as held:
        launch.launch(config, tmp_path / "state", run)
    words = str(held.value)
    assert words.startswith(
        f"browser profile {profile} is in use by `colab-gateway login` (pid "
        f"{signing_in.pid}, its browser pid {chromium} (chromium, user root) and "
    ), words
    assert words.endswith(" more of its processes): wait for the login to finish, or end it")
    # nor does the stop hook end it
    with pytest.raises(ProfileInUse):
        launch.free_profile_of_leftovers(profile, run)
    assert all(launch.is_running(pid) for pid in family)
    assert holds_lock(profile, chromium)


def test_a_holder_of_another_user_is_left_alone_and_the_status_says_so(
    tmp_path: Path, sim: SimColab, processes: Callable[..., subprocess.Popen[Any]]
) -> None:
    profile = tmp_path / "profile"
    stand_in = processes(
        ["python3", "-c", "import time; time.sleep(600)", f"--user-data-dir={profile}"],
        preexec_fn=as_nobody(),
    )
    wait_until(lambda: psutil.Process(stand_in.pid).uids().real != 0, 10, "nobody's holder")
    runner = BrowserRunner(tmp_path, sim, profile_dir=str(profile))
    try:
        words = f"is in use by pid {stand_in.pid} ("
        runner.wait(lambda r: words in r.health()[1], 60, "the words")
        health, message = runner.health()
        assert health == "degraded"
        assert message.startswith(f"browser profile {profile} {words}")
        assert ", user nobody), which this service (uid 0) may not end: end it " in message
        assert message.endswith("s"), message  # "…; trying again in 2s"
        assert "Exception" not in message and "Stacktrace" not in message
        assert runner.runtime.message.startswith("browser not started: browser profile")
        assert stand_in.poll() is None
    finally:
        runner.stop()
    assert stand_in.poll() is None  # nor on stop


def test_chromiums_own_refusal_of_a_locked_profile_is_said_in_words(
    shared_dir: Path, processes: Callable[..., subprocess.Popen[Any]]
) -> None:
    """A holder the scan cannot see (a Chromium of another user on its default profile,
    no --user-data-dir on its command line): Chromium itself finds the live SingletonLock,
    hands its window to that browser and exits; Selenium then says only "session not
    created: Chrome instance exited"."""
    nobody = pwd.getpwnam("nobody")
    home = shared_dir / "home"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    profile = home / ".config" / "chromium"  # a headed Chromium's default profile
    xvfb, display = launch.start_xvfb()
    try:
        other = processes(
            [arg for arg in chromium_args(None) if arg != "--headless=new"],
            preexec_fn=as_nobody(),
            env={"HOME": str(home), "PATH": "/usr/bin:/bin", "DISPLAY": display},
        )
        wait_until(lambda: holds_lock(profile, other.pid), 60, "nobody's Chromium lock")
        config = BrowserConfig(profile_dir=str(profile), engine="chromium")
        with pytest.raises(ProfileInUse) as held:
            launch.launch(config, shared_dir / "state", shared_dir / "run")
        assert str(held.value) == (
            f"browser profile {profile} is in use by pid {other.pid} (chromium, user "
            "nobody), as its SingletonLock says: end it, or wait for `colab-gateway login` "
            "to finish"
        )
        assert other.poll() is None
    finally:
        xvfb.kill()
        xvfb.wait()


def test_the_stop_ends_a_chromium_left_holding_the_profile(
    tmp_path: Path,
    sim: SimColab,
    processes: Callable[..., subprocess.Popen[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    profile = tmp_path / "profile"
    runner = BrowserRunner(tmp_path, sim, profile_dir=str(profile))  # the headless shell
    try:
        runner.wait_state("connected", timeout=90)
        # the shell takes no SingletonLock: a full Chromium can still open the profile
        left = processes(chromium_args(profile))
        wait_until(lambda: holds_lock(profile, left.pid), 60, "the second Chromium's lock")
        caplog.set_level(logging.WARNING, logger=HOLDERS_LOG)
    finally:
        runner.stop()
    assert left.wait(timeout=10) is not None
    assert f"ended pid {left.pid} (chromium) and " in caplog.text
    assert not lock_owner(profile)


# -- the parts without a browser ------------------------------------------------------------


def test_only_the_exact_argument_naming_the_profile_matches(
    tmp_path: Path, processes: Callable[..., subprocess.Popen[Any]]
) -> None:
    profile = tmp_path / "profile"
    profile.mkdir()
    (tmp_path / "alias").symlink_to(profile)
    sleep = ["python3", "-c", "import time; time.sleep(600)"]
    by_link = processes([*sleep, f"--user-data-dir={tmp_path / 'alias'}"])
    relative = processes([*sleep, "--user-data-dir=profile"], cwd=tmp_path)
    processes([*sleep, f"--user-data-dir={profile}-other"])
    processes([*sleep, f"--disk-cache-dir={profile}"])
    processes([*sleep, "--user-data-dir", str(profile)])  # Chromium reads only the = form
    found = wait_until(
        lambda: {h.pid for h in find_holders(profile)} == {by_link.pid, relative.pid},
        10,
        "the two holders",
    )
    assert found


def test_stale_singletons_are_unlinked_never_followed(tmp_path: Path) -> None:
    profile, elsewhere = tmp_path / "profile", tmp_path / "elsewhere"
    profile.mkdir()
    elsewhere.mkdir()
    (elsewhere / "SingletonSocket").write_text("not ours to remove")
    (profile / "SingletonLock").symlink_to("another-host-4242")  # Chromium would refuse it
    (profile / "SingletonSocket").symlink_to(elsewhere / "SingletonSocket")
    (profile / "SingletonCookie").symlink_to(elsewhere)  # a link to a directory
    assert remove_stale_singletons(profile) == list(SINGLETONS)
    assert not any(os.path.lexists(profile / name) for name in SINGLETONS)
    assert (elsewhere / "SingletonSocket").read_text() == "not ours to remove"


def test_a_lock_naming_a_live_process_of_this_machine_is_kept(tmp_path: Path) -> None:
    """Chromium asks that process to open a window, or ends it when it does not answer:
    removing its lock would let two browsers write one profile."""
    (tmp_path / "SingletonLock").symlink_to(f"{socket.gethostname()}-{os.getpid()}")
    assert remove_stale_singletons(tmp_path) == []
    assert os.path.lexists(tmp_path / "SingletonLock")


def test_a_profile_in_use_is_its_own_restart_label() -> None:
    reason = "browser profile /p is in use by pid 7 (chromium, user pi), which this …"
    assert restart_reason(reason, missing=False) == "profile_in_use"
