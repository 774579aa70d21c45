"""``colab-gateway login``: sign the browser profile into Google, by hand, once.

Google refuses sign-in in a browser driven by automation, so this starts a NORMAL Chromium
(no chromedriver) on the service's profile:

* with ``$DISPLAY`` set (e.g. ``ssh -X pi``) the window opens on that screen;
* otherwise it runs under Xvfb with DevTools listening on 127.0.0.1 only, and prints the
  ``ssh -L`` command that brings DevTools to your laptop (open chrome://inspect there).

While it runs, the service's browser steps aside: this command writes
``<runtime_dir>/browser-paused`` (JSON with its pid); the ``browser`` component sees it,
closes its Chromium (one profile cannot be used by two browsers) and waits; when the file
is gone, or its pid dead, the service starts its browser again. The command ends by itself
once the profile holds Google's sign-in cookies, and closes its Chromium so that cookies are
flushed to disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAUSE_FILE = "browser-paused"
SIGN_IN_COOKIES = ("SID", "__Secure-1PSID", "__Secure-3PSID")
DEFAULT_DEVTOOLS_PORT = 9222


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


def cmd_login(args: argparse.Namespace) -> int:
    from gateway.browser.launch import BrowserNotFound, find_chromium, profile_dir, start_xvfb
    from gateway.cli_support import load_or_report, paths_from
    from gateway.config import EX_CONFIG

    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    config = loaded.config
    try:
        chromium = find_chromium(config.browser.chromium)
    except BrowserNotFound as exc:
        print(exc, file=sys.stderr)
        return 1
    profile = profile_dir(config.browser, paths.state_dir, chromium)
    profile.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = next(
        (s.notebook_url for s in config.sessions if not s.is_placeholder),
        "https://colab.research.google.com/",
    )
    flag = write_pause(paths.runtime_dir)
    procs: list[subprocess.Popen[Any]] = []
    try:
        deadline = time.monotonic() + 60
        while (pid := profile_in_use(profile)) is not None:
            if time.monotonic() > deadline:
                print(
                    f"the profile {profile} is still used by Chromium pid {pid}; stop it "
                    "(or the service: systemctl stop colab-gateway) and try again",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
        env = dict(os.environ)
        devtools_port = None
        if args.xvfb or not env.get("DISPLAY"):
            xvfb, display = start_xvfb()
            procs.append(xvfb)
            env["DISPLAY"] = display
            devtools_port = args.devtools_port
        browser = subprocess.Popen(
            login_command(chromium, profile, url, devtools_port),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.insert(0, browser)
        if devtools_port is None:
            print(f"A Chromium window opened on {env['DISPLAY']}: sign into Google there.")
        else:
            host = socket.gethostname()
            print(
                "Chromium runs on a virtual screen. On your laptop run:\n\n"
                f"    ssh -N -L {devtools_port}:127.0.0.1:{devtools_port} {host}\n\n"
                "then open chrome://inspect in Chrome, 'Configure…' → add "
                f"localhost:{devtools_port}, click 'inspect' under the Colab page and sign "
                "into Google in that view."
            )
        print(f"Waiting (up to {args.timeout / 60:.0f} min) until {profile} is signed in…")
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            if signed_in(profile):
                # let Chromium finish what it writes after sign-in, then close it politely
                time.sleep(args.settle)
                print("Signed in. Closing Chromium; the service's browser resumes.")
                return 0
            if browser.poll() is not None:
                print("Chromium was closed before the sign-in finished.", file=sys.stderr)
                return 1
            time.sleep(2)
        print("Timed out waiting for the sign-in.", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            _stop(proc)
        with contextlib.suppress(FileNotFoundError):
            flag.unlink()


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group (Chromium flushes cookies), SIGKILL what remains."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def register(subparsers: Any) -> None:
    from gateway.cli_support import add_path_options

    parser = subparsers.add_parser(
        "login",
        help="sign the browser profile into Google in a normal Chromium (once)",
        description="Sign the browser profile into Google in a normal (not automated) "
        "Chromium. Run it as the service's user; the service's browser pauses meanwhile.",
    )
    add_path_options(parser)
    parser.add_argument(
        "--xvfb",
        action="store_true",
        help="use a virtual screen and DevTools over ssh -L even when $DISPLAY is set",
    )
    parser.add_argument("--devtools-port", type=int, default=DEFAULT_DEVTOOLS_PORT)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait")
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds to wait after the sign-in cookie"
    )
    parser.set_defaults(handler=cmd_login)
