"""A Chromium started by hand (``colab-gateway login``, the doctor's ``--version`` probe)
gets the user's session bus when sudo/su left it unset: a snap on cgroup v2 dies "… is
not a snap cgroup" without it. A stand-in Chromium records the environment it got (no
snap runs here); /run/user/UID is a directory of the test with a real unix socket."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.browser import launch, user_session
from gateway.cli import main

STAND_IN = """#!/bin/sh
{{ echo "XDG_RUNTIME_DIR=$XDG_RUNTIME_DIR"
  echo "DBUS_SESSION_BUS_ADDRESS=$DBUS_SESSION_BUS_ADDRESS"; }} >"{record}"
echo "Chromium 120.0.6099.224 snap"
"""


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This user's /run/user/UID with systemd's bus socket in it, and a shell without
    either variable (as after `sudo -u`)."""
    run_user = tmp_path / "run-user"
    mine = run_user / str(os.getuid())
    mine.mkdir(parents=True)
    bus = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bus.bind(str(mine / "bus"))
    monkeypatch.setattr(user_session, "RUN_USER", run_user)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    try:
        yield mine
    finally:
        bus.close()


def _stand_in(tmp_path: Path) -> tuple[Path, Path]:
    record = tmp_path / "env.txt"
    chromium = tmp_path / "chromium"
    chromium.write_text(STAND_IN.format(record=record))
    chromium.chmod(stat.S_IRWXU)
    return chromium, record


def _recorded(record: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in record.read_text().splitlines())


def test_the_version_probe_gets_the_users_session_bus(tmp_path: Path, runtime_dir: Path) -> None:
    chromium, record = _stand_in(tmp_path)
    assert launch.chromium_version(str(chromium)) == "120"
    assert _recorded(record) == {
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime_dir / 'bus'}",
    }


def test_login_starts_chromium_with_the_users_session_bus(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chromium, record = _stand_in(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        "sessions: [{name: colab, notebook_url: 'https://colab.research.google.com/x'}]\n"
        f"browser: {{chromium: '{chromium}'}}\n"
        "tunnel: {enabled: false}\ntmux: {enabled: false}\n"
    )
    monkeypatch.setenv("DISPLAY", ":99")  # a window "opens" there: no Xvfb is started
    state, runtime = tmp_path / "state", tmp_path / "run"
    argv = ["login", "-c", str(config), "--state-dir", str(state), "--runtime-dir", str(runtime)]
    # The stand-in ends at once: "Chromium was closed before the sign-in finished".
    assert main([*argv, "--timeout", "30"]) == 1
    assert _recorded(record) == {
        "XDG_RUNTIME_DIR": str(runtime_dir),
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime_dir / 'bus'}",
    }


def test_what_is_set_stays_and_nothing_is_made_up(tmp_path: Path, runtime_dir: Path) -> None:
    given = {"XDG_RUNTIME_DIR": "/run/user/4242", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x"}
    assert user_session.with_user_session(given) == given
    (runtime_dir / "bus").unlink()  # no bus (no dbus-user-session): no address
    assert user_session.with_user_session({}) == {"XDG_RUNTIME_DIR": str(runtime_dir)}
    runtime_dir.rename(tmp_path / "gone")  # no systemd instance for this user: nothing
    assert user_session.with_user_session({"PATH": "/bin"}) == {"PATH": "/bin"}
