"""The limits of a pull, held while rsync runs and checked again before a commit.

The dry run measures what the VM offers, but the VM can change its mind before the real
transfer (a file that grows, 6,000 directories made in between) and a hostile rsync can
send more than it announced. So while rsync writes, the pull is watched:

- free space and free inodes of the store's file system (``statvfs``: microseconds) on
  every tick, so ``sync.disk_floor`` and ``sync.inode_floor`` hold within one tick;
- the size and entry count of the partial snapshot, by a walk of it (rsync's temporary
  files included). A walk costs time in proportion to the tree, so after a walk of ``w``
  seconds the next one waits ``WALK_SHARE`` × ``w`` (at least one tick): the watching
  takes a bounded share of a core, and a walk stops as soon as a limit is crossed.

At a limit the watcher stops rsync and the pull is refused with the limit's name.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.sizes import format_size

TICK = 0.2  # seconds between two looks at the file system's free space and inodes
WALK_SHARE = 20  # a walk that took w seconds is followed by at least WALK_SHARE × w of rest


@dataclass(frozen=True)
class Limits:
    max_bytes: int | None = None  # sessions[].sync.max_size
    max_entries: int | None = None  # sessions[].sync.max_entries
    disk_floor: int = 0  # sync.disk_floor
    inode_floor: int = 0  # sync.inode_floor


@dataclass(frozen=True)
class Usage:
    bytes: int
    entries: int
    complete: bool = True  # False: the walk stopped early, at a limit


@dataclass(frozen=True)
class Free:
    bytes: int
    inodes: int | None  # None: the file system does not count inodes (btrfs, some FUSE)


def free(root: Path) -> Free:
    st = os.statvfs(root)
    inodes = st.f_favail if st.f_files else None
    return Free(st.f_bavail * st.f_frsize, inodes)


def walk(root: Path, limits: Limits | None = None) -> Usage:
    """Bytes (sizes of regular files, each name counted) and entries (files, directories,
    links, anything) below ``root``, never following a link. With ``limits``, the walk
    stops as soon as one of its maxima is crossed."""
    max_bytes = limits.max_bytes if limits else None
    max_entries = limits.max_entries if limits else None
    total = entries = 0
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        try:
            scan = os.scandir(directory)
        except OSError:
            continue  # gone (rsync renamed or removed it) or not a directory any more
        with scan:
            for entry in scan:
                entries += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if (max_entries is not None and entries > max_entries) or (
                    max_bytes is not None and total > max_bytes
                ):
                    return Usage(total, entries, complete=False)
    return Usage(total, entries)


def usage_problem(usage: Usage, limits: Limits) -> str | None:
    """Why ``usage`` is over a limit, in words a person acts on; None when it is within."""
    if limits.max_bytes is not None and usage.bytes > limits.max_bytes:
        return (
            f"the synced paths hold {'more than ' if not usage.complete else ''}"
            f"{format_size(usage.bytes)}, more than sync.max_size "
            f"{format_size(limits.max_bytes)}: raise max_size, or add exclude patterns"
        )
    if limits.max_entries is not None and usage.entries > limits.max_entries:
        return (
            f"the synced paths hold {'more than ' if not usage.complete else ''}"
            f"{usage.entries} files and directories, more than sync.max_entries "
            f"{limits.max_entries}: raise max_entries, or add exclude patterns"
        )
    return None


def free_problem(
    root: Path, limits: Limits, new_bytes: int = 0, new_entries: int = 0
) -> str | None:
    """Why the store's file system is (or, after ``new_bytes``/``new_entries`` more, would
    be) below a floor; None when it is not."""
    now = free(root)
    left = now.bytes - new_bytes
    if left < limits.disk_floor:
        leaves = f"pulling {format_size(new_bytes)} would leave" if new_bytes else "it leaves"
        return (
            f"{leaves} {format_size(max(0, left))} free in {root}, below sync.disk_floor "
            f"{format_size(limits.disk_floor)}: free space there, lower keep, or lower disk_floor"
        )
    if now.inodes is not None:
        inodes_left = now.inodes - new_entries
        if inodes_left < limits.inode_floor:
            leaves = f"pulling {new_entries} files would leave" if new_entries else "it leaves"
            return (
                f"{leaves} {max(0, inodes_left)} free inodes in {root}, below "
                f"sync.inode_floor {limits.inode_floor}: remove files there, lower keep, "
                "or add exclude patterns"
            )
    return None


class Watch:
    """One look at a running pull per ``tick()``: the floors every time, a walk of the
    partial snapshot when its rest is over. ``tick()`` returns why to stop, or None."""

    def __init__(self, store_root: Path, partial: Path, limits: Limits) -> None:
        self.store_root = store_root
        self.partial = partial
        self.limits = limits
        self.next_walk = 0.0
        self.walks = 0
        self.walk_seconds = 0.0
        self.checks_any_size = limits.max_bytes is not None or limits.max_entries is not None

    def tick(self, clock: Callable[[], float] = time.monotonic) -> str | None:
        problem = free_problem(self.store_root, self.limits)
        if problem is not None or not self.checks_any_size or clock() < self.next_walk:
            return problem
        started = clock()
        usage = walk(self.partial, self.limits)
        took = clock() - started
        self.walks += 1
        self.walk_seconds += took
        self.next_walk = clock() + max(TICK, WALK_SHARE * took)
        return usage_problem(usage, self.limits)


def make_plain(root: Path) -> list[str]:
    """Before a commit: no setuid/setgid bits and no devices, FIFOs or sockets below
    ``root``, whatever the VM's rsync sent (ours was told ``--chmod=ugo-s --no-D``; this
    holds even for a sender that ignores the protocol). Returns what was changed, as
    paths relative to ``root`` (VM names: escape them before showing)."""
    changed = []
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                os.unlink(path)
                changed.append(os.path.relpath(path, root))
            elif mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
                changed.append(os.path.relpath(path, root))
    return changed
