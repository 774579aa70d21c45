"""The ``shell`` and ``ssh-config`` subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.config import EX_CONFIG


def register_shell(sub: Any) -> None:
    from gateway.cli_support import add_path_options

    parser = sub.add_parser(
        "shell",
        help="a terminal in the Colab VM: waits for the tunnel, then ssh; what tmux runs",
    )
    parser.add_argument("session", help="the Colab session's name from the config")
    add_path_options(parser)
    parser.set_defaults(handler=cmd_shell)


def register_ssh_config(sub: Any) -> None:
    from gateway.cli_support import add_path_options

    parser = sub.add_parser(
        "ssh-config",
        help="print ~/.ssh/config blocks that reach each Colab VM from a laptop via this Pi",
    )
    parser.add_argument(
        "sessions", nargs="*", metavar="SESSION", help="only these sessions (default: all)"
    )
    parser.add_argument(
        "--pi", help="the name your laptop's ssh knows this machine by (default: its hostname)"
    )
    parser.add_argument(
        "--known-hosts",
        action="store_true",
        help="print the pinned host keys under the blocks' HostKeyAlias names instead",
    )
    add_path_options(parser)
    parser.set_defaults(handler=cmd_ssh_config)


def cmd_shell(args: argparse.Namespace) -> int:
    from gateway.cli_support import paths_from
    from gateway.tmux import pane_ssh

    return pane_ssh.run(args.session, paths_from(args))


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from gateway.cli_support import paths_from
    from gateway.config import ConfigError
    from gateway.tmux import sshconfig

    paths = paths_from(args)
    try:
        config = sshconfig.load_ssh_view(paths.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_CONFIG
    names = args.sessions or [s.name for s in config.sessions]
    for name in names:
        try:
            config.session(name)
        except KeyError as exc:
            print(f"colab-gateway ssh-config: {exc.args[0]}", file=sys.stderr)
            return 2
    if not names:
        print(f"colab-gateway ssh-config: {paths.config} defines no sessions", file=sys.stderr)
        return 2
    try:
        if args.known_hosts:
            lines = sshconfig.known_hosts_lines(config, paths, names)
            print("\n".join(lines))
            return 0 if lines else 1
        print(sshconfig.render(config, paths, names, args.pi), end="")
    except PermissionError as exc:
        print(
            f"colab-gateway ssh-config: cannot read {exc.filename}: permission denied; run it "
            "as the gateway's user or a member of its group",
            file=sys.stderr,
        )
        return 1
    return 0
