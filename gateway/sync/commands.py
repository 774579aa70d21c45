"""The ``sync`` and ``restore`` subcommands: list snapshots, pull now, restore on demand."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from gateway.config import EX_CONFIG

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING = 0, 1, 3
NOW_TIMEOUT = 3600.0  # `sync --now` waits this long for the pull it asked for


def register(sub: Any) -> None:
    from gateway.cli_support import add_path_options

    sync = sub.add_parser(
        "sync",
        help="list the snapshots of sessions' files kept on this machine; --now pulls at once",
    )
    sync.add_argument("session", nargs="?", help="only this session (needed with --now)")
    sync.add_argument(
        "--now", action="store_true", help="ask the running daemon for a pull now and wait for it"
    )
    add_path_options(sync)
    sync.set_defaults(handler=cmd_sync)

    restore = sub.add_parser(
        "restore",
        help="put a snapshot back into the session's Colab VM, or into a local folder (--to)",
    )
    restore.add_argument("session", help="the session's name from the config")
    restore.add_argument("--snapshot", metavar="ID", help="which snapshot (default: the newest)")
    restore.add_argument(
        "--to", metavar="DIR", help="into this local folder instead of the VM (created if needed)"
    )
    add_path_options(restore)
    restore.set_defaults(handler=cmd_restore)


def _synced_sessions(args: argparse.Namespace) -> tuple[Any, list[str]] | int:
    from gateway.cli_support import load_or_report, paths_from

    paths = paths_from(args)
    loaded = load_or_report(paths)
    if loaded is None:
        return EX_CONFIG
    names = [s.name for s in loaded.config.sessions if s.sync.enabled]
    if args.session is not None:
        try:
            session = loaded.config.session(args.session)
        except KeyError as exc:
            print(f"colab-gateway: {exc.args[0]}", file=sys.stderr)
            return EX_CONFIG
        if not session.sync.enabled:
            print(
                f"colab-gateway: session {args.session!r} keeps no files: set "
                f"sessions[].sync.paths for it in {paths.config}",
                file=sys.stderr,
            )
            return EX_CONFIG
        names = [args.session]
    return loaded.config, names


def cmd_sync(args: argparse.Namespace) -> int:
    from gateway.cli_support import paths_from

    found = _synced_sessions(args)
    if isinstance(found, int):
        return found
    config, names = found
    paths = paths_from(args)
    if args.now:
        if args.session is None:
            print("colab-gateway: sync --now needs a SESSION", file=sys.stderr)
            return EX_CONFIG
        return _pull_now(paths, args.session)
    if not names:
        print(f"no session keeps files: set sessions[].sync.paths in {paths.config}")
        return EXIT_OK
    for name in names:
        print(_listing(paths, name, config.session(name).sync.keep))
    return EXIT_OK


def _listing(paths: Any, session: str, keep: int) -> str:
    from gateway.durations import format_duration
    from gateway.sizes import format_size
    from gateway.sync.snapshots import SnapshotStore
    from gateway.untrusted import untrusted

    store = SnapshotStore(paths.sync_dir / session)
    infos = store.infos()
    newest = store.newest()
    lines = [
        f"session {session}: {len(infos)} snapshot(s) (keep {keep}), "
        f"{format_size(store.disk_bytes())} on disk in {store.root}"
    ]
    if not infos:
        lines.append("  none yet: the first pull comes once the VM is connected")
    for info in reversed(infos):
        taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.taken_at))
        mark = "  newest" if info.id == newest else ""
        lines.append(
            f"  {info.id}  {taken}  {format_size(info.bytes):>8}  "
            f"pulled in {format_duration(info.seconds)}{mark}"
        )
        if info.kept_previous:
            lines.append(
                f"      changed during the pull, previous copy kept: "
                f"{', '.join(untrusted(name) for name in info.kept_previous[:5])}"
            )
    return "\n".join(lines)


def _pull_now(paths: Any, session: str) -> int:
    from gateway.snapshot import Snapshot
    from gateway.status_server import query

    try:
        answer = query(paths.status_socket, request=f"sync {session}")
    except (OSError, ValueError) as exc:
        print(
            f"colab-gateway is not running (no answer on {paths.status_socket}: "
            f"{getattr(exc, 'strerror', None) or exc})",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    if "error" in answer:
        print(f"colab-gateway: {answer['error']}", file=sys.stderr)
        return EXIT_FAILED
    asked = float(answer.get("requested_at") or time.time())  # type: ignore[arg-type]
    print(f"pull of session {session} requested; waiting for it…", flush=True)
    deadline = time.monotonic() + NOW_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            view = Snapshot.from_json(query(paths.status_socket))
        except (OSError, ValueError):
            continue
        facts = view.sessions.get(session)
        if facts is None:
            continue
        sync = facts.sync
        if sync.last_attempt_at is None or sync.last_attempt_at < asked or sync.pulling:
            if not facts.tunnel.up:
                print(f"waiting: the tunnel of {session} is down", flush=True)
                time.sleep(5)
            continue  # the pull asked for has not ended yet
        if not sync.problem:
            from gateway.sizes import format_size

            print(
                f"pulled {format_size(sync.last_pull_bytes)} in {sync.last_pull_seconds:.1f}s "
                f"into snapshot {sync.newest}"
            )
            return EXIT_OK
        print(f"colab-gateway: pull of {session} did not happen: {sync.problem}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    print(f"colab-gateway: no pull of {session} within {NOW_TIMEOUT:.0f}s", file=sys.stderr)
    return EXIT_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gateway.cli_support import paths_from
    from gateway.sync import pull
    from gateway.sync.rsync import Remote
    from gateway.sync.snapshots import SnapshotStore
    from gateway.vm_ssh import VM_LOGIN, ssh_options

    found = _synced_sessions(args)
    if isinstance(found, int):
        return found
    config, _ = found
    paths = paths_from(args)
    session = config.session(args.session)
    store = SnapshotStore(paths.sync_dir / session.name)
    ids = store.ids()
    snapshot_id = args.snapshot or store.newest()
    if snapshot_id is None or snapshot_id not in ids:
        known = ", ".join(ids) or "none yet"
        what = f"no snapshot {args.snapshot!r}" if args.snapshot else "no snapshot yet"
        print(f"colab-gateway: session {session.name}: {what} (snapshots: {known})",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    if args.to:
        target = Path(args.to).expanduser().resolve()
        target.mkdir(parents=True, exist_ok=True)
        remote = Remote(None, local_root=target)
        where = str(target)
    else:
        remote = Remote(("ssh", *ssh_options(config, session.name, paths)), VM_LOGIN)
        where = f"the Colab VM of session {session.name}"
    try:
        asyncio.run(
            pull.restore(store, snapshot_id, session.sync.paths, remote,
                         session.sync.bandwidth_bytes)
        )  # fmt: skip
    except (pull.Failed, OSError) as exc:
        print(f"colab-gateway: restore of {snapshot_id} into {where} failed: {exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    print(f"restored snapshot {snapshot_id} into {where} (nothing deleted, newer files kept)")
    return EXIT_OK
