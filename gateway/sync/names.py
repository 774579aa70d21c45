"""File names that came from the VM, and the only way they touch the Pi's disk.

rsync's output names files ("file has vanished: …", the list of files changed during a
pull). The VM chooses those names: ``../../keys/host_ed25519``, a directory it turned into
a link to ``~/.ssh``. A name is therefore never joined onto a path. It is split into
components, refused unless every one is a plain name and it lies below one of the synced
paths, and then walked one component at a time from a directory the gateway opened itself,
``O_NOFOLLOW`` at every step (what Go's ``os.Root`` does): a link anywhere on the way ends
the walk. Links, replacements and removals then act on the last component through the
directory's descriptor. What lies outside a snapshot's ``files/`` (the rest of the store,
the state directory, the service's home) is not reachable from any name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeName(ValueError):
    """A VM name that must not be used (the message says why, without the name)."""


def name_parts(name: str, paths: Sequence[str]) -> tuple[str, ...]:
    """The components of ``name`` (relative to the VM's ``/``, one leading ``/`` allowed),
    when it names something strictly below one of ``paths``; else UnsafeName."""
    if "\0" in name:
        raise UnsafeName("it holds a NUL byte")
    relative = name[1:] if name.startswith("/") else name
    parts = tuple(relative.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeName("it is absolute twice, empty, or has a '.', '..' or empty component")
    for path in paths:
        below = tuple(path.strip("/").split("/"))
        if len(parts) > len(below) and parts[: len(below)] == below:
            return parts
    raise UnsafeName("it is not below one of sync.paths")


@contextlib.contextmanager
def open_dir(root: Path, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of ``root/parts[0]/…/parts[-1]``, reached without following any link
    below ``root`` (``root`` itself is the gateway's own path). ``create`` makes missing
    directories (0700). Raises OSError (ELOOP/ENOTDIR for a link on the way)."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def keep_previous(dest: Path, previous: Path | None, parts: Sequence[str]) -> None:
    """Put the previous snapshot's copy of ``parts`` in place in ``dest`` (a hard link), or
    remove the unstable copy when the previous snapshot has no regular file there (or
    reaching it would cross a link). Raises OSError when ``dest`` cannot be reached safely
    (the caller logs the name and leaves it)."""
    *directory, last = parts
    before_fd = -1
    with contextlib.ExitStack() as stack:
        if previous is not None:
            try:
                before_fd = stack.enter_context(open_dir(previous, directory))
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
        before = _lstat(last, before_fd) if before_fd >= 0 else None
        has_before = before is not None and stat.S_ISREG(before.st_mode)
        dest_fd = stack.enter_context(open_dir(dest, directory, create=has_before))
        target = _lstat(last, dest_fd)
        if target is not None and stat.S_ISDIR(target.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory now has that name")
        if has_before:
            tmp = f".sync-keep-{secrets.token_hex(8)}"
            os.link(last, tmp, src_dir_fd=before_fd, dst_dir_fd=dest_fd, follow_symlinks=False)
            os.replace(tmp, last, src_dir_fd=dest_fd, dst_dir_fd=dest_fd)
        elif target is not None:
            os.unlink(last, dir_fd=dest_fd)
