"""``colab-gateway login``: sign the browser profile into Google, by hand, once.

Google refuses sign-in in a browser driven by automation, so this starts a NORMAL Chromium
(no chromedriver) on the service's profile:

* with ``$DISPLAY`` set (e.g. ``ssh -X pi``) the window opens on that screen;
* otherwise it runs under Xvfb with DevTools listening on 127.0.0.1 only, and prints the
  ``ssh -L`` command that brings DevTools to your laptop (open chrome://inspect there).

The service's browser pauses meanwhile (gateway/browser/login.py). The command ends by
itself once the profile holds Google's sign-in cookies, and closes its Chromium so that
cookies are flushed to disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from gateway.browser.login import login_command, profile_in_use, signed_in, write_pause
from gateway.browser.user_session import with_user_session

DEFAULT_DEVTOOLS_PORT = 9222


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
        env = with_user_session()  # a snap on cgroup v2 needs the session bus
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
    """``colab-gateway login``, ``colab-gateway view`` (gateway/browser/view_command.py) and
    ``colab-gateway runtime clear`` (gateway/browser/runtime_command.py)."""
    from gateway.browser.runtime_command import register_runtime
    from gateway.browser.view_command import register_view
    from gateway.cli_support import add_path_options

    register_view(subparsers)
    register_runtime(subparsers)
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
