"""The ``colab-gateway`` command: thin wrappers whose options mirror the config."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway import __version__, logs
from gateway.config import EX_CONFIG, ConfigError, LoadedConfig, load_config
from gateway.durations import format_duration
from gateway.paths import Paths

EXIT_OK, EXIT_UNHEALTHY, EXIT_NOT_RUNNING = 0, 1, 3

Handler = Callable[[argparse.Namespace], int]


def add_path_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        help="config file (default: $CONFIGURATION_DIRECTORY"
        "/config.yaml, else /etc/colab-gateway/config.yaml)",
    )
    parser.add_argument(
        "--state-dir",
        help="persistent state (default: $STATE_DIRECTORY, else /var/lib/colab-gateway)",
    )
    parser.add_argument(
        "--runtime-dir", help="sockets (default: $RUNTIME_DIRECTORY, else /run/colab-gateway)"
    )


def paths_from(args: argparse.Namespace) -> Paths:
    return Paths.resolve(args.config, args.state_dir, args.runtime_dir)


def load_or_report(paths: Paths) -> LoadedConfig | None:
    """Load the config, printing problems as FILE:LINE:COL lines; None if unusable."""
    try:
        loaded = load_config(paths.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    return loaded


def cmd_check_config(args: argparse.Namespace) -> int:
    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    print(f"{paths.config}: ok ({len(loaded.config.sessions)} session(s))")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.components import all_specs
    from gateway.daemon import Gateway, register_secrets

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
        snapshot = query(paths.status_socket)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(
            f"colab-gateway is not running (no answer on {paths.status_socket}: {reason})",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    if args.json:
        print(json.dumps(snapshot, indent=2, sort_keys=True))
    else:
        print(render_status(snapshot))
    return EXIT_OK if snapshot.get("health") == "ok" else EXIT_UNHEALTHY


def render_status(snapshot: dict[str, Any]) -> str:
    now = float(snapshot.get("now", time.time()))
    lines = [f"colab-gateway: {snapshot.get('health')} — {snapshot.get('summary')}"]
    for name, comp in snapshot.get("components", {}).items():
        since = format_duration(now - float(comp.get("since", now)))
        lines.append(f"  {name:<8} {comp['health']:<9} {comp['message']} (for {since})")
    components = snapshot.get("components", {})
    for name, session in snapshot.get("sessions", {}).items():
        tunnel, runtime = session["tunnel"], session["runtime"]
        facts = []
        if "tunnel" in components:
            peer = f" from {tunnel['peer']}" if tunnel.get("peer") else ""
            facts.append(f"tunnel {'up' if tunnel['up'] else 'down'}{peer}")
        if "browser" in components:
            facts.append(f"runtime {runtime['state']}")
        lines.append(f"  session {name}: {', '.join(facts) or 'no component watches it'}")
        if tunnel.get("hostkey_fingerprint"):
            lines.append(f"    Colab host key {tunnel['hostkey_fingerprint']}")
        if runtime.get("screenshot"):
            lines.append(f"    latest screenshot {runtime['screenshot']}")
    return "\n".join(lines)


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
    from gateway.browser import login
    from gateway.ddns.cli import register as register_ddns
    from gateway.tmux.commands import register_shell, register_ssh_config
    from gateway.tunnel import commands as tunnel_commands

    return [
        tunnel_commands.register,
        register_ddns,
        register_shell,
        register_ssh_config,
        login.register,
        demo.register,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
