"""Signing the browser profile into Google: what ``colab-gateway login``
(gateway/browser/commands.py) and the ``browser`` component share.

Google refuses sign-in in a browser driven by automation, so the command starts a NORMAL
Chromium (no chromedriver, ``login_command``) on the service's profile. While it runs, the
service's browser steps aside: the command writes ``<runtime_dir>/browser-paused`` (JSON
with its pid, ``write_pause``); the ``browser`` component sees it (``pause_requested``),
closes its Chromium (one profile cannot be used by two browsers) and waits; when the file
is gone, or its pid dead, the service starts its browser again. ``signed_in`` tells when
the profile holds Google's sign-in cookies.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path

PAUSE_FILE = "browser-paused"
SIGN_IN_COOKIES = ("SID", "__Secure-1PSID", "__Secure-3PSID")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pause_requested(runtime_dir: Path) -> bool:
    """True while a live ``colab-gateway login`` holds the pause flag."""
    path = runtime_dir / PAUSE_FILE
    try:
        data = json.loads(path.read_text())
        return _pid_alive(int(data["pid"]))
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError):
        return True  # a flag we cannot read is still a flag: better paused than fighting


def pause_pid(runtime_dir: Path) -> int | None:
    """The pid of the live ``colab-gateway login`` holding the pause flag, else None (also
    when the flag cannot be read: ``pause_requested`` then still says True)."""
    try:
        pid = int(json.loads((runtime_dir / PAUSE_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if pid > 0 and _pid_alive(pid) else None


def write_pause(runtime_dir: Path) -> Path:
    from gateway.atomic import atomic_write

    runtime_dir.mkdir(parents=True, exist_ok=True)
    path = runtime_dir / PAUSE_FILE
    atomic_write(path, json.dumps({"pid": os.getpid(), "since": time.time()}), mode=0o644)
    return path


def profile_in_use(profile: Path) -> int | None:
    """The pid of a live Chromium holding ``profile`` (its SingletonLock), else None."""
    try:
        target = os.readlink(profile / "SingletonLock")
    except OSError:
        return None
    host, _, pid = target.rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid) if _pid_alive(int(pid)) else None


def signed_in(profile: Path) -> bool:
    """Whether the profile holds Google's session cookies (names are stored in clear)."""
    for candidate in (profile / "Default" / "Network" / "Cookies", profile / "Default" / "Cookies"):
        if not candidate.exists():
            continue
        try:
            with contextlib.closing(
                sqlite3.connect(f"file:{candidate}?mode=ro&immutable=1", uri=True, timeout=2)
            ) as db:
                marks = ",".join("?" * len(SIGN_IN_COOKIES))
                row = db.execute(
                    f"SELECT COUNT(*) FROM cookies WHERE host_key LIKE '%google.com' "  # noqa: S608
                    f"AND name IN ({marks})",
                    SIGN_IN_COOKIES,
                ).fetchone()
        except sqlite3.Error:
            continue
        if row and row[0]:
            return True
    return False


def login_command(chromium: str, profile: Path, url: str, devtools_port: int | None) -> list[str]:
    args = [
        chromium,
        f"--user-data-dir={profile}",
        "--password-store=basic",  # the service reads cookies without a desktop keyring
        "--no-first-run",
        "--no-default-browser-check",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    if devtools_port is not None:
        args += [f"--remote-debugging-port={devtools_port}", "--remote-debugging-address=127.0.0.1"]
    return [*args, url]
