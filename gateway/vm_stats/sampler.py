"""One ssh connection per session's VM, kept open, and one remote command per sample.

The connection is an OpenSSH ControlMaster (``ssh -M -N``) that this daemon starts and
owns as its child, with the VM's options from ``gateway.vm_ssh`` (pinned host key,
``-F /dev/null``): no login per sample, and no master left behind when the daemon stops
(a ``ControlPersist`` master forks into the background, outlives a restart and keeps the
first client's pipes open). Each sample is ``ssh -S <socket>``: a session over that
connection. It can never log in on its own: ``ControlMaster=no`` plus a ``ProxyCommand``
that fails make a missing master an error, not a fresh login.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from gateway.untrusted import untrusted
from gateway.vm_ssh import VM_LOGIN, kept_connection
from gateway.vm_stats.parse import OUTPUT_LIMIT, SAMPLE_SCRIPT

MASTER_TIMEOUT = 15.0  # for the master's socket to appear (ConnectTimeout is 10 s)
SAMPLE_TIMEOUT = 20.0  # one sample, however the VM behaves (nvidia-smi has 10 s)
STDERR_LIMIT = 2000


class SampleFailed(Exception):
    """The VM could not be asked: the message says why, escaped."""


def control_path(runtime_dir: Path, session: str) -> Path:
    """Where the session's master listens: ``vm_ssh.kept_connection`` (the VM's outbox is
    collected over it too), or a private directory under /tmp when that path is too long
    for a socket."""
    path = kept_connection(runtime_dir, session)
    if path is not None:
        return path
    return Path(tempfile.mkdtemp(prefix="cg-vm-")) / f"{session[:40]}.ctl"


class VmSampler:
    def __init__(self, ssh_options: list[str], socket: Path) -> None:
        self.ssh_options = ssh_options
        self.socket = socket
        self.master: asyncio.subprocess.Process | None = None
        self.logins = 0  # masters started: one per VM connection (tests read it)

    async def ensure_master(self) -> None:
        if self.master is not None and self.master.returncode is None and self.socket.exists():
            return
        await self.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a stale one from a killed master
        self.master = await asyncio.create_subprocess_exec(
            "ssh", *self.ssh_options, "-M", "-N", "-S", str(self.socket),
            "-o", "ControlPersist=no", VM_LOGIN,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.logins += 1
        deadline = time.monotonic() + MASTER_TIMEOUT
        while not self.socket.exists():
            if self.master.returncode is not None or time.monotonic() > deadline:
                why = await self._master_error()
                await self.close()
                raise SampleFailed(f"ssh into the VM failed: {why}")
            # A plain sleep: Python 3.11's wait_for can swallow a cancellation that comes
            # as the awaited thing finishes (the master exiting as the daemon stops).
            await asyncio.sleep(0.05)

    async def _master_error(self) -> str:
        master = self.master
        if master is None or master.stderr is None:
            return "no ssh"
        if master.returncode is None:
            return f"no connection after {MASTER_TIMEOUT:.0f}s"
        with contextlib.suppress(asyncio.TimeoutError):
            text = await asyncio.wait_for(master.stderr.read(STDERR_LIMIT), 1.0)
            return untrusted(text.decode(errors="replace").strip(), 300) or "ssh said nothing"
        return f"ssh exited {master.returncode}"

    async def sample(self) -> str:
        """The output of SAMPLE_SCRIPT, at most OUTPUT_LIMIT bytes, within SAMPLE_TIMEOUT."""
        proc = await asyncio.create_subprocess_exec(
            "ssh", *self.ssh_options, "-S", str(self.socket),
            "-o", "ControlMaster=no", "-o", "ProxyCommand=false",
            VM_LOGIN, SAMPLE_SCRIPT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            output = await asyncio.wait_for(_read_bounded(proc.stdout), SAMPLE_TIMEOUT)
        except asyncio.TimeoutError:
            raise SampleFailed(f"the VM did not answer within {SAMPLE_TIMEOUT:.0f}s") from None
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        if not output and proc.returncode:
            raise SampleFailed(f"the sample's ssh exited {proc.returncode} with no output")
        return output.decode(errors="replace")

    async def close(self) -> None:
        master, self.master = self.master, None
        if master is not None and master.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                master.terminate()
            try:
                await asyncio.wait_for(master.wait(), 5.0)
            except asyncio.TimeoutError:
                master.kill()
                await master.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


async def _read_bounded(stream: asyncio.StreamReader) -> bytes:
    """Up to OUTPUT_LIMIT bytes; what the VM prints beyond is not read (the process is
    killed)."""
    chunks: list[bytes] = []
    size = 0
    while size < OUTPUT_LIMIT:
        chunk = await stream.read(OUTPUT_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
