"""``colab-gateway runtime clear SESSION``: a person lets the keep-alive connect again after
Colab disconnected the runtime for code disallowed in its free tier.

The keep-alive stops such a session and keeps the stop in the state directory
(gateway/browser/stop_flag.py), so that neither a reconnect nor a daemon restart runs the
same code again. Once the notebook no longer runs that code, or the account has a paid
plan, this command removes the stop; the running daemon sees it on its next look at the
page and connects again (the command waits for that, a bounded time, and says what the
daemon then reports).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gateway.browser import stop_flag

EXIT_OK, EXIT_FAILED = 0, 1
WAIT_FOR_DAEMON = 20.0  # seconds: a look at the page happens at least every poll_every


def register_runtime(subparsers: Any) -> None:
    from gateway.cli_support import add_path_options

    runtime = subparsers.add_parser(
        "runtime",
        help="act on a session's Colab runtime (clear a stop for disallowed code)",
    )
    actions = runtime.add_subparsers(dest="runtime_command", required=True, metavar="ACTION")
    clear = actions.add_parser(
        "clear",
        help="let the keep-alive connect again after Colab stopped the runtime for disallowed code",
        description="Colab disconnects a runtime that runs code disallowed in its free tier "
        "(SSH shells, remote desktops without a paid plan); the gateway then stops that "
        "session, also across restarts. Once the notebook no longer runs that code, or the "
        "account has a paid plan, run this (as the service's user) to connect again.",
    )
    add_path_options(clear)
    clear.add_argument("session", nargs="?", help="the session (default: the first one)")
    clear.add_argument(
        "--no-wait", action="store_true", help="do not wait for the daemon to connect again"
    )
    clear.set_defaults(handler=cmd_clear)


def cmd_clear(args: argparse.Namespace) -> int:
    from gateway.cli_support import session_from

    chosen = session_from(args)
    if isinstance(chosen, int):
        return chosen
    paths, _config, session = chosen
    try:
        stopped = stop_flag.clear(paths.state_dir, session.name)
    except OSError as exc:
        print(
            f"cannot remove {stop_flag.flag_path(paths.state_dir, session.name)}: "
            f"{exc.strerror or exc}; run this as the service's user (or root)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if stopped is None:
        print(f"session {session.name} is not stopped for disallowed code: nothing to clear")
        return EXIT_OK
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stopped.since))
    print(
        f"session {session.name}: cleared the stop for disallowed code (since {since}). "
        "If the notebook still runs that code, Colab will disconnect it again."
    )
    if args.no_wait:
        return EXIT_OK
    return _wait_for_daemon(paths.status_socket, session.name)


def _wait_for_daemon(socket_path: Any, session: str) -> int:
    """Until the daemon no longer reports the stop (bounded); say what it reports."""
    from gateway.snapshot import Snapshot
    from gateway.status_server import query
    from gateway.vocabulary import RuntimeState

    deadline = time.monotonic() + WAIT_FOR_DAEMON
    state = None
    while time.monotonic() < deadline:
        try:
            snapshot = Snapshot.from_json(query(socket_path))
        except (OSError, ValueError):
            print("the daemon is not running: it starts without the stop")
            return EXIT_OK
        facts = snapshot.sessions.get(session)
        state = facts.runtime.state if facts is not None else None
        if state is not None and state != RuntimeState.DISALLOWED:
            print(f"the keep-alive goes on: runtime {state.words}")
            return EXIT_OK
        time.sleep(0.5)
    print(
        f"the daemon still reports the stop after {WAIT_FOR_DAEMON:.0f}s: see colab-gateway status",
        file=sys.stderr,
    )
    return EXIT_FAILED
