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
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.sync.output import Tail, read_lines
from gateway.untrusted import untrusted

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
_VANISHED = re.compile(r'^file has vanished: "(.*)"')
_TOTAL = re.compile(r"^Total file size: ([\d,.]+) bytes", re.MULTILINE)
_TRANSFERRED = re.compile(r"^Total transferred file size: ([\d,.]+) bytes", re.MULTILINE)
_ENTRIES = re.compile(r"^Number of files: ([\d,.]+)", re.MULTILINE)
_CREATED = re.compile(r"^Number of created files: ([\d,.]+)", re.MULTILINE)
# Names rsync reported as vanished that one run keeps: more are counted, not kept.
MAX_VANISHED = 1000


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

    def vm_name(self, name: str) -> str:
        """A name as the sending rsync printed it, relative to the VM's ``/`` (a local
        root's own prefix taken off)."""
        if self.ssh is None and self.local_root is not None:
            for prefix in (f"{self.local_root}/./", f"{self.local_root}/"):
                if name.startswith(prefix):
                    return name[len(prefix) :]
        return name

    def shell(self) -> list[str]:
        # rsync splits -e itself and understands shell quoting.
        return ["-e", shlex.join(self.ssh)] if self.ssh is not None else []


@dataclass(frozen=True)
class Result:
    """How one rsync ended. Its streams are kept only as bounded tails (``output``); the
    VM's names in them are raw: escape before showing."""

    code: int
    stdout: str  # the last lines of stdout (the --stats summary is at its end)
    stderr: str  # the last lines of stderr
    vanished_names: tuple[str, ...] = ()  # "file has vanished" names, at most MAX_VANISHED
    vanished_dropped: int = 0  # such names beyond MAX_VANISHED
    stopped: str | None = None  # why the watcher stopped rsync (a limit), or None

    @property
    def ok(self) -> bool:
        return self.code in OK_CODES and self.stopped is None

    def why(self) -> str:
        meaning = EXIT_MEANING.get(self.code, "failed")
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        last = untrusted(lines[-1].strip(), 300) if lines else ""
        return f"rsync exit {self.code} ({meaning})" + (f": {last}" if last else "")

    def vanished(self) -> list[str]:
        return list(self.vanished_names)


def common_options(excludes: Sequence[str], bandwidth: int | None) -> list[str]:
    options = [
        "--archive",  # permissions, times, symlinks: the tree as it was
        # ... but no devices, FIFOs or sockets, and no setuid/setgid bits, either way: the
        # VM's root made them, and neither the Pi nor a restored VM should run or open them.
        "--no-D",
        "--chmod=ugo-s",
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
    """Copy ``paths`` of the VM into ``dest`` (absolute paths kept below it), links munged:
    a link the VM made is stored as ``/rsyncd-munged/<target>``, which leads nowhere on the
    Pi, and becomes the real link again when it is restored into a VM."""
    argv = [RSYNC, *common_options(excludes, bandwidth), *munge_on_receive(remote),
            *remote.shell()]  # fmt: skip
    if link_dest is not None:
        # Unchanged files become hard links into the previous snapshot: no copy, no space.
        argv.append(f"--link-dest={link_dest.resolve()}")
    if dry_run:
        argv += ["--dry-run", "--stats", "--no-human-readable"]
    if files_from is not None:
        # Names relative to /, each below one of the paths (the retry of changed files).
        if remote.ssh is None:
            # rsync 3.5 breaks its protocol on a local --files-from with -M--munge-links
            # ("File-list index … not in …"): a local copy names each file instead.
            names = files_from.read_bytes().split(b"\0")
            sources = [remote.spec(name.decode()) for name in names if name]
            return [*argv, *sources, f"{dest}/"]
        argv += [f"--files-from={files_from}", "--from0"]
        return [*argv, remote.spec("/"), f"{dest}/"]
    return [*argv, *(remote.spec(p) for p in paths), f"{dest}/"]


def changed_command(
    remote: Remote, paths: Sequence[str], dest: Path, excludes: Sequence[str] = ()
) -> list[str]:
    """List (NUL-separated, relative to /) the files of ``paths`` that differ from ``dest``:
    run right after a pull, it names the files that changed while they were copied."""
    return [
        RSYNC, *common_options(excludes, None), *munge_on_receive(remote), *remote.shell(),
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

    Links: into the VM, ``--munge-links`` on the sending side un-munges them, so the VM
    gets its links back as they were. Into a local folder (``restore --to``) they are
    copied as stored, munged: a folder on the Pi gets no link the VM chose (the target
    is readable in it after ``/rsyncd-munged/``).
    """
    sources = [
        f"{files_root}/./{p.lstrip('/')}"
        for p in paths
        if os.path.lexists(files_root / p.lstrip("/"))
    ]
    if not sources:
        return None
    munge = ["--munge-links"] if remote.ssh is not None else []
    argv = [RSYNC, *common_options((), bandwidth), "--update", *munge, *remote.shell()]
    dest = remote.spec("/") if remote.ssh is not None else f"{remote.local_root}/"
    return [*argv, *sources, dest]


def munge_on_receive(remote: Remote) -> list[str]:
    """``--munge-links`` for the side that receives a pull. Over ssh our rsync receives,
    so the plain option munges; in a local copy our rsync is the sender (where the plain
    option would un-munge) and the receiver is its forked server side: ``-M``."""
    return ["--munge-links"] if remote.ssh is not None else ["-M--munge-links"]


def _number(pattern: re.Pattern[str], text: str) -> int:
    # The last match: our rsync prints its summary last, after anything the VM sent.
    found = pattern.findall(text)
    return int(re.sub(r"[,.]", "", found[-1])) if found else 0


def sizes(stats: str) -> tuple[int, int]:
    """(total size, size to transfer) from ``--stats`` output."""
    return _number(_TOTAL, stats), _number(_TRANSFERRED, stats)


def entries(stats: str) -> tuple[int, int]:
    """(files and directories in the transfer, those to be created) from ``--stats``."""
    return _number(_ENTRIES, stats), _number(_CREATED, stats)


@dataclass
class _Streams:
    """What is kept of a run's output while it streams in."""

    on_stdout: Callable[[str], None] | None
    stdout: Tail = field(default_factory=Tail)
    stderr: Tail = field(default_factory=Tail)
    vanished: list[str] = field(default_factory=list)
    vanished_dropped: int = 0

    def out(self, line: str) -> None:
        self.stdout.add(line)
        if self.on_stdout is not None:
            self.on_stdout(line)

    def err(self, line: str) -> None:
        self.stderr.add(line)
        found = _VANISHED.match(line)
        if found:
            if len(self.vanished) < MAX_VANISHED:
                self.vanished.append(found.group(1))
            else:
                self.vanished_dropped += 1


def _kill(proc: asyncio.subprocess.Process) -> None:
    # rsync runs in its own process group: ssh and a local copy's forked sides go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def run(
    argv: Sequence[str],
    timeout: float | None = None,
    *,
    on_stdout: Callable[[str], None] | None = None,
    watch: Callable[[], Awaitable[str | None]] | None = None,
    watch_every: float = 0.2,
) -> Result:
    """Run rsync, reading its output as it comes (bounded: ``gateway.sync.output``).

    ``on_stdout`` sees each stdout line (cut at ``MAX_LINE``); it may raise to stop rsync.
    ``watch`` is awaited every ``watch_every`` seconds while rsync runs; when it returns a
    reason, rsync is killed and the Result carries it in ``stopped``. Cancelled (a reset,
    shutdown), timed out or stopped, rsync is killed, never left."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    streams = _Streams(on_stdout)
    stopped: str | None = None

    async def finish() -> None:
        await asyncio.gather(
            read_lines(proc.stdout, streams.out), read_lines(proc.stderr, streams.err)
        )
        await proc.wait()

    async def watching(done: asyncio.Future[None]) -> None:
        nonlocal stopped
        assert watch is not None
        while not done.done():
            await asyncio.wait({done}, timeout=watch_every)
            if done.done():
                return
            reason = await watch()
            if reason is not None:
                stopped = reason
                _kill(proc)
                return

    done = asyncio.ensure_future(finish())
    watcher = asyncio.ensure_future(watching(done)) if watch is not None else None
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except BaseException:
        _kill(proc)
        done.cancel()
        await asyncio.gather(done, return_exceptions=True)
        await proc.wait()
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert proc.returncode is not None
    return Result(
        proc.returncode,
        streams.stdout.text(),
        streams.stderr.text(),
        tuple(streams.vanished),
        streams.vanished_dropped,
        stopped,
    )
