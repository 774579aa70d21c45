"""``colab-gateway view [SESSION]``: see and act on the headless browser's page from a laptop.

The command asks the running daemon (a request file in the runtime directory) to serve the
session's page on 127.0.0.1 behind a one-time token, waits for the daemon's answer (the port
it bound and its listening socket's inode, checked in /proc/net/tcp), prints the ``ssh -L``
line and the address, and waits: until the person presses "Done" on the page, Ctrl-C here,
or ``view.idle_timeout`` without input. The keep-alive makes no clicks of its own meanwhile.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from gateway.browser import view_request
from gateway.browser.view_request import ViewAnswer, ViewRequest
from gateway.durations import format_duration

EXIT_OK, EXIT_FAILED = 0, 1
START_TIMEOUT = 60.0  # the browser thread answers between two looks at the page


def register_view(subparsers: Any) -> None:
    from gateway.cli_support import add_path_options

    parser = subparsers.add_parser(
        "view",
        help="see and click the headless browser's page from a laptop (through ssh -L)",
        description="Serve a live screenshot of SESSION's page on 127.0.0.1 that passes your "
        "clicks and keys to the browser; the keep-alive pauses its own clicks meanwhile. "
        "Run it as the service's user on the Pi.",
    )
    add_path_options(parser)
    parser.add_argument("session", nargs="?", help="the session (default: the first one)")
    parser.add_argument(
        "--port",
        type=int,
        default=0,
        help="port on 127.0.0.1 (default: a free one, which the daemon picks)",
    )
    parser.set_defaults(handler=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    from gateway.cli_support import session_from

    chosen = session_from(args)
    if isinstance(chosen, int):
        return chosen
    paths, config, session = chosen
    if not 0 <= args.port <= 65535:
        print(
            f"--port {args.port} is not a port: use 1-65535, or 0 for a free one", file=sys.stderr
        )
        return 2
    pending = view_request.read(paths.runtime_dir)
    if pending is not None:
        print(
            f"colab-gateway view (pid {pending.pid}) already shows session {pending.session}: "
            "press Done there, or end it, first",
            file=sys.stderr,
        )
        return EXIT_FAILED
    token = secrets.token_urlsafe(24)
    # Port 0: the daemon binds a free port itself, so nobody can be on it first.
    request = view_request.write(paths.runtime_dir, session.name, args.port, token)
    try:
        served = _wait_served(paths.runtime_dir, request)
        if isinstance(served, str):
            print(served, file=sys.stderr)
            return EXIT_FAILED
        port = served.port
        user, host = getpass.getuser(), socket.gethostname()
        address = f"http://127.0.0.1:{port}/?token={token}"
        print(
            f"The page of session {session.name} is served on this machine's 127.0.0.1:{port}.\n"
            "From your laptop:\n"
            f"  1. ssh -N -L {port}:127.0.0.1:{port} {user}@{host}   (leave it running)\n"
            f"  2. open {address}\n"
            "     (the token works once: it becomes a cookie of that browser tab)\n"
            "  3. click and type on the screenshot as on the page; the field at the top sends "
            "text\n"
            "  4. press 'Done' on the page, or Ctrl-C here: the keep-alive takes over again\n"
            "The keep-alive makes no clicks of its own until then "
            f"(or until nobody clicked or typed for {format_duration(config.view.idle_timeout)}).",
            flush=True,
        )
        while view_request.read(paths.runtime_dir) == request:
            time.sleep(0.5)
        answer = view_request.read_answer(paths.runtime_dir, request)
        if answer is not None and answer.ended and answer.ended != "the person pressed Done":
            print(f"ended: {answer.ended}")
        else:
            print("done: the keep-alive has the page again")
        return EXIT_OK
    except KeyboardInterrupt:
        print("\nstopped: the keep-alive has the page again")
        return EXIT_OK
    finally:
        view_request.remove(paths.runtime_dir, request)
        view_request.remove_answer(paths.runtime_dir, request)


def _wait_served(runtime_dir: Path, request: ViewRequest) -> ViewAnswer | str:
    """The daemon's answer once it serves the view on a socket this command has seen
    listening, or what to tell the person."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        answer = view_request.read_answer(runtime_dir, request)
        if answer is not None and answer.error:
            return f"the daemon cannot serve the view: {answer.error}"
        if answer is not None and answer.port:
            return _daemon_holds(answer)
        if view_request.read(runtime_dir) != request:
            return (
                "the daemon dropped the view request without an answer: see its log "
                "(journalctl -u colab-gateway)"
            )
        time.sleep(0.1)
    return (
        f"the daemon did not serve the view within {START_TIMEOUT:.0f}s: is it running with "
        f"the browser enabled (colab-gateway status), with runtime directory {runtime_dir}?"
    )


def _daemon_holds(answer: ViewAnswer) -> ViewAnswer | str:
    """``answer`` if the socket the daemon named listens on its port: a port someone else
    holds never receives the token."""
    try:
        inodes = view_request.listening_inodes(answer.port)
    except OSError as exc:
        return f"cannot check who listens on 127.0.0.1:{answer.port} in /proc/net/tcp: {exc}"
    if answer.inode in inodes:
        return answer
    others = ", ".join(str(i) for i in sorted(inodes)) or "none"
    return (
        f"127.0.0.1:{answer.port} is not held by the daemon's socket (inode {answer.inode}; "
        f"listening there: {others}): another program may be posing as the view, so no "
        "token was printed. Run colab-gateway view again; ss -ltnp shows who holds the port"
    )
