"""One pull of a session's files into a new snapshot, and one restore of a snapshot.

No State, no timers: the component decides when; these do the work and say what happened.
They run against a ``Remote`` (the VM through the tunnel, or a local directory in tests).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.sizes import format_size
from gateway.sync import rsync
from gateway.sync.rsync import Remote
from gateway.sync.snapshots import SnapshotInfo, SnapshotStore

# A file that changed while it was copied is copied again this many times; if it still
# changes, the new snapshot keeps the previous snapshot's copy (or leaves it out).
RETRIES = 2
# How long a file must stay unchanged after it was copied to count as not torn: a writer
# that pauses mid-record (half a line, half a checkpoint) for less than this is caught.
SETTLE = 0.2
TIMEOUT = 6 * 3600.0  # one rsync; a reset ends it much sooner (ssh ServerAlive)


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


async def pull(store: SnapshotStore, remote: Remote, plan: PullPlan) -> SnapshotInfo:
    """Pull into ``<id>.partial``, make it a snapshot and the newest. Raises Refused/Failed
    (and the partial directory stays until the next ``discard_partials``)."""
    started_wall, started = time.time(), time.monotonic()
    await asyncio.to_thread(store.discard_partials)
    previous = store.newest()
    link = store.files(previous) if previous else None
    snapshot_id = store.new_id(started_wall)
    partial = await asyncio.to_thread(store.begin, snapshot_id)
    dest = partial / "files"

    # A dry run first: how big the tree is and how much is new, before a byte lands.
    stats = await rsync.run(
        rsync.pull_command(
            remote, plan.paths, dest, link_dest=link, excludes=plan.excludes, dry_run=True
        )
    )
    if not stats.ok:
        raise Failed(stats.why())
    total, new = rsync.sizes(stats.stdout)
    if plan.max_bytes is not None and total > plan.max_bytes:
        raise Refused(
            f"the synced paths hold {format_size(total)}, more than sync.max_size "
            f"{format_size(plan.max_bytes)}: raise max_size, or add exclude patterns"
        )
    free = shutil.disk_usage(store.root).free
    if free - new < plan.disk_floor:
        raise Refused(
            f"pulling {format_size(new)} would leave {format_size(max(0, free - new))} free "
            f"in {store.root}, below sync.disk_floor {format_size(plan.disk_floor)}: "
            "free space there, lower keep, or lower disk_floor"
        )

    result = await rsync.run(
        rsync.pull_command(
            remote, plan.paths, dest, link_dest=link,
            excludes=plan.excludes, bandwidth=plan.bandwidth,
        ),
        TIMEOUT,
    )  # fmt: skip
    if not result.ok:
        raise Failed(result.why())
    kept = await _settle(remote, plan, dest, link, result.vanished())
    info = SnapshotInfo(
        id=snapshot_id,
        taken_at=started_wall,
        bytes=await asyncio.to_thread(_tree_bytes, dest),
        seconds=round(time.monotonic() - started, 3),
        vm=plan.vm,
        kept_previous=tuple(kept),
    )
    await asyncio.to_thread(store.commit, info)
    return info


async def _settle(
    remote: Remote,
    plan: PullPlan,
    dest: Path,
    link: Path | None,
    vanished: list[str],
) -> list[str]:
    """Make sure no file in ``dest`` is a copy torn by a writer on the VM.

    rsync copies each file into a temporary name and renames it, so a copy is never half
    written here; but a file the VM changed while rsync read it may be a mix of before and
    after. Ask rsync which files now differ from what was copied: those changed during the
    pull. Copy them again; if they keep changing, keep the previous snapshot's copy (or
    leave the file out when there is none: a later pull takes it once it holds still).
    Between a copy and its check the file must hold still for SETTLE seconds.
    """
    for _attempt in range(RETRIES):
        await asyncio.sleep(SETTLE)
        changed = await _changed(remote, plan, dest)
        if not changed:
            break
        with tempfile.NamedTemporaryFile("wb", prefix="sync-retry-") as names:
            names.write(b"\0".join(name.encode() for name in changed))
            names.flush()
            again = await rsync.run(
                rsync.pull_command(
                    remote, plan.paths, dest, link_dest=link,
                    excludes=plan.excludes, bandwidth=plan.bandwidth,
                    files_from=Path(names.name),
                ),
                TIMEOUT,
            )  # fmt: skip
        if not again.ok:
            raise Failed(again.why())
    else:
        await asyncio.sleep(SETTLE)
        changed = await _changed(remote, plan, dest)
    unstable = sorted(set(changed) | {v.lstrip("/") for v in vanished})
    for name in unstable:
        await asyncio.to_thread(_keep_previous, dest, link, name)
    return unstable


async def _changed(remote: Remote, plan: PullPlan, dest: Path) -> list[str]:
    check = await rsync.run(rsync.changed_command(remote, plan.paths, dest, plan.excludes))
    if not check.ok:
        raise Failed(check.why())
    return [
        line.lstrip("/")
        for line in check.stdout.splitlines()
        if line and not line.endswith("/") and line != "."
    ]


def _keep_previous(dest: Path, link: Path | None, name: str) -> None:
    """Put the previous snapshot's copy of ``name`` in place (a hard link), or remove the
    unstable copy when there is no previous one."""
    target = dest / name
    before = link / name if link is not None else None
    tmp = target.with_name(f".{target.name}.keep")
    if before is not None and before.is_file() and not before.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            tmp.unlink()
        os.link(before, tmp)
        os.replace(tmp, target)
    elif target.is_file() or target.is_symlink():
        target.unlink()


def _tree_bytes(root: Path) -> int:
    total = 0
    for directory, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                continue
    return total


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
