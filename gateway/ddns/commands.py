"""``colab-gateway ddns``: one cycle in the foreground, or what the updater remembers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from gateway.config import EX_CONFIG

EXIT_OK, EXIT_FAILED = 0, 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ddns",
        help="run one DDNS cycle now (--once), or show the addresses the provider accepted",
    )
    from gateway.cli_support import add_path_options

    add_path_options(parser)
    parser.add_argument(
        "--once", action="store_true", help="detect and publish once, printing what happened"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --once: detect and read, but send no update and write no state",
    )
    parser.set_defaults(handler=cmd_ddns)


def cmd_ddns(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.cli_support import load_or_report, paths_from
    from gateway.secrets import register_secrets

    paths = paths_from(args)
    if args.dry_run and not args.once:
        print("--dry-run only goes with --once", file=sys.stderr)
        return 2
    if not args.once:
        return show_state(paths.ddns_state)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    register_secrets(loaded)
    logs.setup("warning")  # the printed lines say what happened; the log only what went wrong
    config = loaded.config.ddns
    if config.provider == "none":
        return detect_only(config)

    from gateway.ddns.store import Store
    from gateway.ddns.updater import Updater

    store = Store(paths.ddns_state, readonly=args.dry_run)
    updater = Updater(config, store)
    try:
        lines = updater.cycle(force=True, dry_run=args.dry_run)
    finally:
        updater.close()
    prefix = "dry run: " if args.dry_run else ""
    print(f"{prefix}{config.hostname} via {config.provider}")
    for line in lines:
        print(f"  {line}")
    failed = any(s.last_error for s in updater.records.values())
    return EXIT_FAILED if failed else EXIT_OK


def detect_only(config: Any) -> int:
    from gateway.ddns.detect import Detector
    from gateway.ddns.http import Http, user_agent
    from gateway.ddns.outcomes import LABEL, DetectFailed

    http = Http(user_agent(config.contact), config.timeout)
    detector = Detector.from_config(config.detect, http)
    print("provider none: detecting only, nothing is published")
    status = EXIT_OK
    for family in [f for f in ("ipv4", "ipv6") if getattr(config, f)]:
        result = detector.detect(family)
        if isinstance(result, DetectFailed):
            print(f"  {LABEL[family]}: could not detect: {result.reason}")
            status = EXIT_FAILED
        else:
            print(f"  {LABEL[family]}: {result.address} (from {' and '.join(result.sources)})")
    http.close()
    return status


def show_state(path: Any) -> int:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"nothing published yet ({path} does not exist)")
        return EXIT_OK
    except (OSError, ValueError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    now = time.time()
    from gateway.durations import format_duration

    for record, info in sorted(data.get("accepted", {}).items()):
        age = format_duration(now - float(info["sent_at"]))
        print(f"{record}: {info['address']} (accepted {age} ago via {info['target']})")
    for stop in data.get("stops", {}).values():
        print(f"STOPPED {stop['host']}: {stop['message']}")
    return EXIT_OK
