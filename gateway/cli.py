"""The ``colab-gateway`` command: thin wrappers whose options mirror the config."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway import __version__, logs, secrets, status_line
from gateway.cli_support import add_path_options, load_or_report, paths_from
from gateway.config import EX_CONFIG
from gateway.snapshot import Snapshot
from gateway.vocabulary import Health

EXIT_OK, EXIT_UNHEALTHY, EXIT_NOT_RUNNING = 0, 1, 3

Handler = Callable[[argparse.Namespace], int]


def cmd_check_config(args: argparse.Namespace) -> int:
    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    print(f"{paths.config}: ok ({len(loaded.config.sessions)} session(s))")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import Gateway
    from gateway.registry import all_specs
    from gateway.secrets import register_secrets

    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    register_secrets(loaded)
    logs.setup(args.log_level or loaded.config.daemon.log_level)
    gateway = Gateway(loaded, paths, all_specs())
    return asyncio.run(gateway.serve())


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.status_server import query

    paths = paths_from(args)
    try:
        raw = query(paths.status_socket)
        snapshot = Snapshot.from_json(raw)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(
            f"colab-gateway is not running (no answer on {paths.status_socket}: {reason})",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    if args.json:
        # The daemon's values as they are: its State escaped and bounded every text from
        # outside where it came in, and a script reading this wants those exact values (a
        # second untrusted() would only double the backslashes). ensure_ascii writes every
        # other character as \uXXXX, bidi overrides and escape codes included, so nothing
        # in this output acts on the terminal that shows it.
        print(json.dumps(raw, indent=2, sort_keys=True, ensure_ascii=True))
    else:
        print(status_line.report(snapshot))
    return EXIT_OK if snapshot.health == Health.OK else EXIT_UNHEALTHY


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colab-gateway",
        description="Keep a Google Colab runtime connected and reachable from this machine.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (what the systemd unit starts)")
    add_path_options(run)
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file; exit 78 if bad")
    add_path_options(check)
    check.set_defaults(handler=cmd_check_config)

    status = sub.add_parser(
        "status",
        help="what the running daemon knows; exit 0 healthy, 1 degraded or failed, 3 not running",
    )
    add_path_options(status)
    status.add_argument("--json", action="store_true", help="print the raw State")
    status.set_defaults(handler=cmd_status)

    for register in extra_commands():
        register(sub)
    return parser


def extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands that live beside their component (keys, snippet, shell, ddns, …)."""
    from gateway import demo
    from gateway.alerts import commands as alerts_commands
    from gateway.browser import commands as browser_commands
    from gateway.ddns.commands import register as register_ddns
    from gateway.doctor import command as doctor
    from gateway.sync import commands as sync_commands
    from gateway.tmux.commands import register_shell, register_ssh_config
    from gateway.tunnel import commands as tunnel_commands

    return [
        tunnel_commands.register,
        register_ddns,
        register_shell,
        register_ssh_config,
        browser_commands.register,
        demo.register,
        doctor.register,
        alerts_commands.register,
        sync_commands.register,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    # Commands print what providers and the daemon answered: no secret may come with it.
    # The streams redact what is registered at the time of each write.
    secrets.redact_standard_streams()
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
