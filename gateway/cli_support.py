"""What every ``colab-gateway`` subcommand shares: the path options and loading the config.

The CLI (gateway/cli.py) and the subcommands that live beside their component (tunnel
keys, ddns, shell, login, doctor) both import this; none of them imports gateway.cli,
which imports them all to build its parser.
"""

from __future__ import annotations

import argparse
import sys

from gateway.config import EX_CONFIG, Config, ConfigError, LoadedConfig, SessionConfig, load_config
from gateway.paths import Paths


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


def session_from(args: argparse.Namespace) -> tuple[Paths, Config, SessionConfig] | int:
    """The paths, the config and the session a command names (``args.session``, default
    the first one); an exit status, after saying what is wrong, when there is none."""
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
    return paths, config, session
