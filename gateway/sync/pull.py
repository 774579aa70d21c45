"""One pull of a session's files into a new snapshot, and one restore of a snapshot.

No State, no timers: the component decides when; these do the work and say what happened.
They run against a ``Remote`` (the VM through the tunnel, or a local directory in tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.sync import rsync
from gateway.sync.limits import (
    TICK,
    Limits,
    Usage,
    Watch,
    free_problem,
    make_plain,
    usage_problem,
    walk,
)
from gateway.sync.names import UnsafeName, keep_previous, name_parts
from gateway.sync.output import Tail, read_lines
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import SnapshotInfo, SnapshotStore
from gateway.untrusted import untrusted

log = logging.getLogger("gateway.sync")

# A file that changed while it was copied is copied again this many times; if it still
# changes, the new snapshot keeps the previous snapshot's copy (or leaves it out).
RETRIES = 2
# How long a file must stay unchanged after it was copied to count as not torn: a writer
# that pauses mid-record (half a line, half a checkpoint) for less than this is caught.
SETTLE = 0.2
TIMEOUT = 6 * 3600.0  # one rsync; a reset ends it much sooner (ssh ServerAlive)
# Files that may change during one pull. More is a VM rewriting its tree as fast as it is
# read (or a list made to fill the Pi's memory): the pull is refused, not remembered.
MAX_CHANGED = 10_000
NAMES_LOGGED = 5  # refused VM names written to the log per pull; the rest are counted


class Refused(Exception):
    """A pull that must not happen (too big, the Pi's disk too full): the message says why."""


class Failed(Exception):
    """rsync or ssh failed: the message says how."""


@dataclass(frozen=True)
class PullPlan:
    paths: Sequence[str]
    excludes: Sequence[str] = ()
    bandwidth: int | None = None
    max_bytes: int | None = None
    disk_floor: int = 0
    vm: str = ""
    max_entries: int | None = None
    inode_floor: int = 0

    @property
    def limits(self) -> Limits:
        return Limits(self.max_bytes, self.max_entries, self.disk_floor, self.inode_floor)


async def pull(store: SnapshotStore, remote: Remote, plan: PullPlan) -> SnapshotInfo:
    """Pull into ``<id>.partial``, make it a snapshot and the newest. Raises Refused (the
    partial directory is removed: it is over a limit) or Failed (it stays until the next
    ``discard_partials``)."""
    started_wall, started = time.time(), time.monotonic()
    await asyncio.to_thread(store.discard_partials)
    previous = store.newest()
    before = store.files(previous) if previous else None
    link = await asyncio.to_thread(_link_dest, store, previous)
    snapshot_id = store.new_id(started_wall)
    partial = await asyncio.to_thread(store.begin, snapshot_id)
    dest = partial / "files"
    try:
        await _dry_run(store, remote, plan, dest, link)
        result = await _transfer(
            store, partial, plan,
            rsync.pull_command(
                remote, plan.paths, dest, link_dest=link,
                excludes=plan.excludes, bandwidth=plan.bandwidth,
            ),
        )  # fmt: skip
        refused = _Refusals()
        vanished = refused.names(
            (remote.vm_name(v) for v in result.vanished()), plan.paths, "vanished"
        )
        kept = await _settle(store, partial, remote, plan, before, link, vanished, refused)
        refused.log_rest(result.vanished_dropped)
        usage = await asyncio.to_thread(_final_check, store, dest, plan.limits)
    except Refused:
        await asyncio.to_thread(store.discard_partials)
        raise
    info = SnapshotInfo(
        id=snapshot_id,
        taken_at=started_wall,
        bytes=usage.bytes,
        seconds=round(time.monotonic() - started, 3),
        vm=plan.vm,
        kept_previous=tuple(kept),
        links_munged=True,
    )
    await asyncio.to_thread(store.commit, info)
    return info


async def _dry_run(
    store: SnapshotStore, remote: Remote, plan: PullPlan, dest: Path, link: Path | None
) -> None:
    """How big the tree is and how much is new, before a byte lands: refuse early."""
    stats = await rsync.run(
        rsync.pull_command(
            remote, plan.paths, dest, link_dest=link, excludes=plan.excludes, dry_run=True
        )
    )
    if not stats.ok:
        raise Failed(stats.why())
    total, new = rsync.sizes(stats.stdout)
    count, created = rsync.entries(stats.stdout)
    problem = usage_problem(Usage(total, count), plan.limits) or free_problem(
        store.root, plan.limits, new, created
    )
    if problem is not None:
        raise Refused(problem)


async def _transfer(
    store: SnapshotStore, partial: Path, plan: PullPlan, argv: list[str]
) -> rsync.Result:
    """One rsync that writes into ``partial``, watched: stopped at a limit (Refused)."""
    watch = Watch(store.root, partial, plan.limits)
    result = await rsync.run(
        argv, TIMEOUT, watch=lambda: asyncio.to_thread(watch.tick), watch_every=TICK
    )
    log.debug("pull watched: %d walks of %s took %.3fs", watch.walks, partial,
              watch.walk_seconds)  # fmt: skip
    if result.stopped is not None:
        raise Refused(f"{result.stopped} (rsync was stopped during the transfer)")
    if not result.ok:
        # rsync may have ended by itself at the limit (the disk full): say which limit.
        problem = await asyncio.to_thread(free_problem, store.root, plan.limits)
        if problem is not None:
            raise Refused(problem)
        if "No space left on device" in result.stderr:
            raise Refused(
                f"the file system of {store.root} ran out of space or inodes during the pull "
                f"({result.why()}): free space there, lower keep, or add exclude patterns"
            )
        raise Failed(result.why())
    return result


def _final_check(store: SnapshotStore, dest: Path, limits: Limits) -> Usage:
    """Before the commit: within every limit, and nothing special or setuid kept."""
    usage = walk(dest, limits)
    problem = usage_problem(usage, limits) or free_problem(store.root, limits)
    if problem is not None:
        raise Refused(problem)
    plain = make_plain(dest)
    if plain:
        log.warning(
            "the VM's rsync sent %d special or setuid file(s) despite --no-D "
            "--chmod=ugo-s; made plain, e.g. %s", len(plain), untrusted(plain[0]),
        )  # fmt: skip
    return usage


def _link_dest(store: SnapshotStore, previous: str | None) -> Path | None:
    """The previous snapshot's files for ``--link-dest``, unless they hold a link rsync
    would follow out of the store (a snapshot taken before links were munged)."""
    if previous is None:
        return None
    files = store.files(previous)
    try:
        if store.info(previous).links_munged:
            return files
    except (OSError, ValueError, TypeError):
        pass
    for directory, dirs, names in os.walk(files):
        for name in dirs + names:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not os.readlink(path).startswith("/rsyncd-munged/"):
                log.warning(
                    "snapshot %s holds a link that is not munged (%s, taken by an older "
                    "version): not used as --link-dest, so this pull copies every file",
                    previous, untrusted(os.path.relpath(path, files)),
                )  # fmt: skip
                return None
    return files


@dataclass
class _Refusals:
    """VM names refused in one pull: a few are logged (escaped), the rest counted."""

    seen: set[str] = field(default_factory=set)
    logged: int = 0

    def names(self, names: Iterable[str], paths: Sequence[str], what: str) -> list[tuple[str, ...]]:
        good = []
        for name in names:
            try:
                good.append(name_parts(name, paths))
            except UnsafeName as exc:
                self.refuse(name, what, str(exc))
        return good

    def refuse(self, name: str, what: str, why: str) -> None:
        if name in self.seen:
            return
        self.seen.add(name)
        if self.logged < NAMES_LOGGED:
            log.warning("ignored the %s name %s from the VM's rsync: %s", what,
                        untrusted(repr(name), 300), why)  # fmt: skip
        self.logged += 1

    def log_rest(self, dropped: int) -> None:
        more = max(0, self.logged - NAMES_LOGGED) + dropped
        if more:
            log.warning("ignored %d more names from the VM's rsync", more)


async def _settle(
    store: SnapshotStore,
    partial: Path,
    remote: Remote,
    plan: PullPlan,
    before: Path | None,
    link: Path | None,
    vanished: list[tuple[str, ...]],
    refused: _Refusals,
) -> list[str]:
    """Make sure no file in ``dest`` is a copy torn by a writer on the VM.

    rsync copies each file into a temporary name and renames it, so a copy is never half
    written here; but a file the VM changed while rsync read it may be a mix of before and
    after. Ask rsync which files now differ from what was copied: those changed during the
    pull. Copy them again; if they keep changing, keep the previous snapshot's copy (or
    leave the file out when there is none: a later pull takes it once it holds still).
    Between a copy and its check the file must hold still for SETTLE seconds.

    Every name here came from the VM: only those ``name_parts`` accepts are used, and only
    through ``keep_previous`` (no link followed, nothing outside the snapshot reachable).
    """
    dest = partial / "files"
    changed: list[tuple[str, ...]] = []
    for _attempt in range(RETRIES):
        await asyncio.sleep(SETTLE)
        changed = await _changed(remote, plan, dest, refused)
        if not changed:
            break
        with tempfile.NamedTemporaryFile("wb", prefix="sync-retry-") as names:
            names.write(b"\0".join("/".join(parts).encode() for parts in changed))
            names.flush()
            await _transfer(
                store, partial, plan,
                rsync.pull_command(
                    remote, plan.paths, dest, link_dest=link,
                    excludes=plan.excludes, bandwidth=plan.bandwidth,
                    files_from=Path(names.name),
                ),
            )  # fmt: skip
    else:
        await asyncio.sleep(SETTLE)
        changed = await _changed(remote, plan, dest, refused)
    kept = []
    for parts in sorted(set(changed) | set(vanished)):
        try:
            await asyncio.to_thread(keep_previous, dest, before, parts)
        except OSError as exc:
            refused.refuse("/".join(parts), "unstable", f"left as copied ({exc.strerror})")
            continue
        kept.append(untrusted("/".join(parts), 300))
    return kept


async def _changed(
    remote: Remote, plan: PullPlan, dest: Path, refused: _Refusals
) -> list[tuple[str, ...]]:
    names: list[str] = []

    def collect(line: str) -> None:
        if line and not line.endswith("/") and line != ".":
            if len(names) >= MAX_CHANGED:
                raise Refused(
                    f"more than {MAX_CHANGED} files changed while they were pulled: the VM "
                    "rewrites its tree faster than it can be kept; add exclude patterns "
                    "for what changes all the time"
                )
            names.append(line)

    check = await rsync.run(
        rsync.changed_command(remote, plan.paths, dest, plan.excludes), on_stdout=collect
    )
    if not check.ok:
        raise Failed(check.why())
    return refused.names(names, plan.paths, "changed")


async def restore(
    store: SnapshotStore,
    snapshot_id: str,
    paths: Sequence[str],
    remote: Remote,
    bandwidth: int | None = None,
) -> None:
    """Push a snapshot's files back (to the VM, or below a local root); raises Failed."""
    files = store.files(snapshot_id)
    argv = rsync.push_command(files, paths, remote, bandwidth)
    if argv is None:
        return  # the snapshot holds none of ``paths``: nothing to put back
    result = await rsync.run(argv, TIMEOUT)
    if not result.ok:
        raise Failed(result.why())


async def start_resume(argv: Sequence[str], timeout: float) -> None:
    """Run the ssh command that starts ``resume.command`` on the VM; raises Failed with
    the last line of its stderr (read as it comes, bounded, escaped)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    err = Tail()
    try:
        await asyncio.wait_for(read_lines(proc.stderr, err.add), timeout)
        await asyncio.wait_for(proc.wait(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        last = err.last()
        raise Failed(
            f"starting resume.command failed (ssh exit {proc.returncode})"
            + (f": {untrusted(last, 300)}" if last else "")
        )
