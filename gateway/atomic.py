"""The one way persistent files are written: never torn, never half-visible."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one.

    Temporary file in the same directory (rename is atomic only within a file system),
    fsync of the data, rename over the target, then fsync of the directory so the rename
    itself survives a power cut: the Pi has no battery and SD cards lose writes.
    ``mode`` is applied before any byte is written, so secrets are never briefly readable.
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def flush_tree(top: Path) -> str:
    """Put everything written below ``top`` on the disk, not only in the page cache.

    For a tree another program wrote (rsync has no ``--fsync`` before 3.2.4; focal has
    3.1.3). ``syncfs(2)`` of ``top``'s file system: one call, and on a journalling file
    system it also commits every directory entry (the page cache of the other files there
    goes too, which on the Pi's one SD card is the same disk anyway). Without syncfs (not
    in the C library, or ENOSYS), ``fsync(2)`` of every regular file and directory below
    ``top``, directories after their contents. Returns which one ran ("syncfs", "fsync").
    Raises OSError naming ``top`` when the kernel reports the write failed.
    """
    if syncfs(top):
        return "syncfs"
    _fsync_each(top)
    return "fsync"


def syncfs(path: Path) -> bool:
    """``syncfs(2)`` of the file system holding ``path``; False when there is none here."""
    call = _libc_syncfs()
    if call is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if call(fd) == 0:
            return True
        err = ctypes.get_errno()
    finally:
        os.close(fd)
    if err == errno.ENOSYS:
        return False
    # Since Linux 5.8 syncfs reports writeback errors (EIO, ENOSPC): the data is not safe.
    raise OSError(err, f"{os.strerror(err)} (syncfs of the file system holding it)", str(path))


@functools.cache
def _libc_syncfs() -> Callable[[int], int] | None:
    # The os module has no syncfs; glibc has had it since 2.14.
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return cast(Callable[[int], int], call)


def _fsync_each(top: Path) -> None:
    # The daemon is not root: a file or directory the VM left without read permission
    # cannot be opened to be fsynced. sync() flushes them (and every other file system).
    unreadable = False

    def cannot_list(_exc: OSError) -> None:
        nonlocal unreadable
        unreadable = True

    for directory, _dirs, names in os.walk(top, topdown=False, onerror=cannot_list):
        for name in names:
            path = os.path.join(directory, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue  # a link's target lives in its inode, written with the directory
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
            except PermissionError:
                unreadable = True
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            fsync_dir(Path(directory))
        except PermissionError:
            unreadable = True
    if unreadable:
        os.sync()
