"""The rsync command lines of the sync, and what their output means.

Every command reaches the VM the way the tmux pane does (``gateway.vm_ssh``: the tunnel's
local ssh port, the Pi's key, the pinned host key, strict checking), as rsync's ``-e``.
``Remote(None)`` means "a local directory" instead: the snapshot store's tests and
``colab-gateway restore --to DIR`` use the same commands without ssh.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RSYNC = "rsync"
# 0: done. 24: some files vanished during the transfer (deleted on the VM while we read).
OK_CODES = (0, 24)
EXIT_MEANING = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files",
    5: "error starting the client-server protocol",
    10: "error in socket I/O",
    11: "error in file I/O (is the Pi's disk full?)",
    12: "error in the rsync protocol data stream (the connection dropped?)",
    20: "interrupted",
    23: "some files could not be transferred",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
    127: "rsync is not installed on the VM (the bootstrap installs it) or here",
    255: "ssh failed (tunnel down, or the host key is not the pinned one)",
}
_VANISHED = re.compile(r'^file has vanished: "(.*)"', re.MULTILINE)
_TOTAL = re.compile(r"^Total file size: ([\d,.]+) bytes", re.MULTILINE)
_TRANSFERRED = re.compile(r"^Total transferred file size: ([\d,.]+) bytes", re.MULTILINE)


@dataclass(frozen=True)
class Remote:
    """Where the session's files live: the VM through ssh, or a local root (tests, --to)."""

    ssh: tuple[str, ...] | None  # ``ssh`` and its options, without the destination
    login: str = "root@localhost"
    local_root: Path | None = None  # with ssh None: the directory standing in for the VM's /

    def spec(self, path: str) -> str:
        """``root@localhost:/content/outputs``, or ``ROOT/./content/outputs`` for a local
        root (``/./`` tells ``--relative`` where the kept part of the path starts)."""
        if self.ssh is not None:
            return f"{self.login}:{path}"
        assert self.local_root is not None, "a local Remote needs local_root"
        return f"{self.local_root}/./{path.lstrip('/')}"

    def shell(self) -> list[str]:
        # rsync splits -e itself and understands shell quoting.
        return ["-e", shlex.join(self.ssh)] if self.ssh is not None else []


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code in OK_CODES

    def why(self) -> str:
        meaning = EXIT_MEANING.get(self.code, "failed")
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else ""
        return f"rsync exit {self.code} ({meaning})" + (f": {last[:300]}" if last else "")

    def vanished(self) -> list[str]:
        return _VANISHED.findall(self.stderr)


def common_options(excludes: Sequence[str], bandwidth: int | None) -> list[str]:
    options = [
        "--archive",  # permissions, times, symlinks, devices: the tree as it was
        "--hard-links",
        "--numeric-ids",  # the VM's uid 0 is root here too; no name lookups
        "--relative",  # /content/outputs is kept as content/outputs under the snapshot
        "--ignore-missing-args",  # a configured path not created yet is not an error
        # Compare times to the nanosecond: a file rewritten at the same size within one
        # second is a changed file, not one to hard-link from the previous snapshot.
        "--modify-window=-1",
    ]
    options += [f"--exclude={pattern}" for pattern in excludes]
    if bandwidth:
        options.append(f"--bwlimit={max(1, bandwidth // 1024)}")  # KiB per second
    return options


def pull_command(
    remote: Remote,
    paths: Sequence[str],
    dest: Path,
    *,
    link_dest: Path | None,
    excludes: Sequence[str] = (),
    bandwidth: int | None = None,
    dry_run: bool = False,
    files_from: Path | None = None,
) -> list[str]:
    """Copy ``paths`` of the VM into ``dest`` (absolute paths kept below it)."""
    argv = [RSYNC, *common_options(excludes, bandwidth), *remote.shell()]
    if link_dest is not None:
        # Unchanged files become hard links into the previous snapshot: no copy, no space.
        argv.append(f"--link-dest={link_dest.resolve()}")
    if dry_run:
        argv += ["--dry-run", "--stats", "--no-human-readable"]
    if files_from is not None:
        # Names relative to /, each below one of the paths (the retry of changed files).
        argv += [f"--files-from={files_from}", "--from0"]
        source = remote.spec("/") if remote.ssh is not None else f"{remote.local_root}/"
        return [*argv, source, f"{dest}/"]
    return [*argv, *(remote.spec(p) for p in paths), f"{dest}/"]


def changed_command(
    remote: Remote, paths: Sequence[str], dest: Path, excludes: Sequence[str] = ()
) -> list[str]:
    """List (NUL-separated, relative to /) the files of ``paths`` that differ from ``dest``:
    run right after a pull, it names the files that changed while they were copied."""
    return [
        RSYNC, *common_options(excludes, None), *remote.shell(),
        "--dry-run", "--out-format=%n",
        *(remote.spec(p) for p in paths), f"{dest}/",
    ]  # fmt: skip


def push_command(
    files_root: Path, paths: Sequence[str], remote: Remote, bandwidth: int | None = None
) -> list[str] | None:
    """Put ``paths`` of a snapshot back in place on the VM (or below a local root); None
    when the snapshot holds none of them.

    Never ``--delete``: a restore adds and updates files, it removes nothing anywhere. And
    ``--update``: a file that is newer on the VM than in the snapshot is left alone.
    """
    sources = [
        f"{files_root}/./{p.lstrip('/')}"
        for p in paths
        if os.path.lexists(files_root / p.lstrip("/"))
    ]
    if not sources:
        return None
    argv = [RSYNC, *common_options((), bandwidth), "--update", *remote.shell()]
    dest = remote.spec("/") if remote.ssh is not None else f"{remote.local_root}/"
    return [*argv, *sources, dest]


def sizes(stats: str) -> tuple[int, int]:
    """(total size, size to transfer) from ``--stats`` output."""

    def number(pattern: re.Pattern[str]) -> int:
        found = pattern.search(stats)
        return int(re.sub(r"[,.]", "", found.group(1))) if found else 0

    return number(_TOTAL), number(_TRANSFERRED)


async def run(argv: Sequence[str], timeout: float | None = None) -> Result:
    """Run rsync; cancelled (a reset, shutdown) or timed out, it is killed, never left."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
