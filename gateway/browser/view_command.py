"""``colab-gateway view [SESSION]``: see and act on the headless browser's page from a laptop.

The command asks the running daemon (a request file in the runtime directory) to serve the
session's page on 127.0.0.1:PORT behind a one-time token, prints the ``ssh -L`` line and
the address, and waits: until the person presses "Done" on the page, or Ctrl-C here. The
keep-alive makes no clicks of its own meanwhile.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import socket
import sys
import time
import urllib.request
from typing import Any

from gateway.config import EX_CONFIG

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
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)"
    )
    parser.set_defaults(handler=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    from gateway.browser import view_request
    from gateway.cli_support import load_or_report, paths_from

    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    config = loaded.config
    if not config.sessions:
        print(f"{paths.config}: no sessions configured", file=sys.stderr)
        return EX_CONFIG
    try:
        session = config.session(args.session) if args.session else config.sessions[0]
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
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
    port = args.port or free_port()
    token = secrets.token_urlsafe(24)
    request = view_request.write(paths.runtime_dir, session.name, port, token)
    try:
        if not _wait_served(port, lambda: view_request.read(paths.runtime_dir) == request):
            print(
                f"the daemon did not serve the view within {START_TIMEOUT:.0f}s: is it running "
                f"with the browser enabled (colab-gateway status), with runtime directory "
                f"{paths.runtime_dir}? Is port {port} free?",
                file=sys.stderr,
            )
            return EXIT_FAILED
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
            "The keep-alive makes no clicks of its own until then.",
            flush=True,
        )
        while view_request.read(paths.runtime_dir) == request:
            time.sleep(0.5)
        print("done: the keep-alive has the page again")
        return EXIT_OK
    except KeyboardInterrupt:
        print("\nstopped: the keep-alive has the page again")
        return EXIT_OK
    finally:
        view_request.remove(paths.runtime_dir, request)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_served(port: int, still_asked: Any) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and still_asked():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.25)
    return False
