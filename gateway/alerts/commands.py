"""``colab-gateway notify --test``: one message to every configured URL, each one's result."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from gateway.config import EX_CONFIG

EXIT_OK, EXIT_FAILED = 0, 1


def register(subparsers: Any) -> None:
    from gateway.cli_support import add_path_options

    parser = subparsers.add_parser(
        "notify", help="send a test message to every notify URL (--test) and print the results"
    )
    add_path_options(parser)
    parser.add_argument(
        "--test", action="store_true", help="send a test message to every configured URL"
    )
    parser.set_defaults(handler=cmd_notify)


def cmd_notify(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.cli_support import load_or_report, paths_from
    from gateway.secrets import register_secrets

    if not args.test:
        print("colab-gateway notify: say --test to send a test message", file=sys.stderr)
        return 2
    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    register_secrets(loaded)
    logs.setup("error")  # each URL's line below says what happened (apprise's, scrubbed)
    urls = loaded.config.notify.all_urls()
    if not urls:
        print(
            f"{paths.config}: notify.urls and notify.urls_file name no URL: add one, e.g. "
            "ntfy://ntfy.sh/YOUR-TOPIC (docs/notifications.md)",
            file=sys.stderr,
        )
        return EX_CONFIG
    from gateway.alerts.sender import load_apprise, send_once

    title = f"colab-gateway on {socket.gethostname()}: test message"
    body = "This is a test: notifications from colab-gateway reach you here. Nothing to do."
    failed = 0
    for index, url in enumerate(urls, 1):
        try:
            sender, label = load_apprise(url, index)
        except ValueError as exc:
            print(f"FAILED  URL {index}: {exc}")
            failed += 1
            continue
        error = send_once(sender, title, body, None, url)
        if error is None:
            print(f"sent    {label}")
        else:
            print(f"FAILED  {label}: {error}")
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK
