"""One real pull in a process of its own, killed (SIGKILL) at one step of the commit.

    python commit_child.py STORE VMROOT STEP FLUSH

STEP is where the process dies: ``before_flush`` (the commit begins: nothing flushed
yet), ``before_rename`` (the partial is about to be renamed: flushed by now),
``before_latest`` (renamed, ``latest`` about to be replaced), ``after_latest`` (``latest``
replaced, the commit not returned), ``after_commit``, or ``none`` (the pull completes).
The hooks are on the names the commit has always used (``SnapshotStore.commit``,
``os.rename``, ``os.replace``), so the same child runs against any version of it.
FLUSH ``fsync`` hides syncfs from the C library, as on a system without it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import gateway.atomic as atomic
from gateway.sync import pull as pulling
from gateway.sync import snapshots
from gateway.sync.pull import PullPlan
from gateway.sync.rsync import Remote

store_root, vm_root, step, flush = sys.argv[1:5]
if flush == "fsync":
    atomic._libc_syncfs = lambda: None  # type: ignore[attr-defined]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


real_rename, real_replace = os.rename, os.replace


def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
    if step == "before_rename" and str(src).endswith(snapshots.PARTIAL):
        die()
    real_rename(src, dst, *args, **kwargs)


def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
    latest = os.path.basename(str(dst)) == snapshots.LATEST
    if latest and step == "before_latest":
        die()
    real_replace(src, dst, *args, **kwargs)
    if latest and step == "after_latest":
        die()


os.rename, os.replace = rename, replace
real_commit = snapshots.SnapshotStore.commit


def commit(self: snapshots.SnapshotStore, info: snapshots.SnapshotInfo) -> None:
    if step == "before_flush":
        die()
    real_commit(self, info)
    if step == "after_commit":
        die()


snapshots.SnapshotStore.commit = commit  # type: ignore[method-assign]
store = snapshots.SnapshotStore(Path(store_root))
remote = Remote(None, local_root=Path(vm_root))
asyncio.run(pulling.pull(store, remote, PullPlan(paths=["/root/work"])))
