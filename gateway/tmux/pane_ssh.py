"""The tmux pane's ssh client (``colab-gateway shell SESSION``): a terminal that is inside
the Colab VM whenever it can be.

While the session's tunnel is down it shows a short live status and takes no input (no
echo; Ctrl-C, Ctrl-\\ and Ctrl-Z do nothing, so the tmux window stays). The moment the
daemon reports the tunnel up it runs ssh into the VM with the pinned host key; when ssh
ends it waits again. It learns about the tunnel from the daemon's status socket (``watch``:
one JSON line per change), so it reacts at once instead of polling.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from gateway import status_line
from gateway.backoff import Backoff
from gateway.config import Config, ConfigError
from gateway.durations import format_duration
from gateway.known_hosts import pinned_keys
from gateway.paths import Paths
from gateway.snapshot import Snapshot
from gateway.tmux.sshconfig import load_ssh_view
from gateway.untrusted import untrusted
from gateway.vm_ssh import ssh_argv
from gateway.vocabulary import RestoreState, TunnelFacts

REFRESH = 1.0  # the waiting screen's clock ticks once a second
RECONNECT = 0.5  # how often to look for the daemon's status socket while it is away
KEY_RECHECK = 0.2  # tunnel up but its host key not pinned yet: the tunnel writes it next
LONG_SESSION = 10.0  # an ssh that lasted this long was a session, not a failure
MAX_BACKOFF = 30.0
MAX_LINE = 4 * 1024 * 1024
# A line of the waiting screen: the daemon's summary (status_line.SUMMARY_LIMIT) and a prefix.
SCREEN_LINE_LIMIT = 1100

_QUIET_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP)
# Leave the alternate screen (vim, htop), stop mouse reports and bracketed paste, reset
# colours and the character set: a VM that vanished mid-program never sent these itself.
_RESET = (
    "\x1b[?1049l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?2004l\x1b[?1l\x1b>\x1b[0m\x1b(B"
)


@dataclass
class Attempt:
    """How the last ssh went."""

    started: float  # monotonic
    ended: float
    wall_ended: float
    tunnel_since: float | None
    code: int
    message: str

    @property
    def duration(self) -> float:
        return self.ended - self.started


class Watch:
    """The daemon's status socket in ``watch`` mode: the latest snapshot, or why there is none."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.snapshot: Snapshot | None = None
        self.problem = ""

    def connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(str(self.path))
            sock.sendall(b"watch\n")
            sock.setblocking(False)
        except FileNotFoundError:
            sock.close()
            self.problem = f"daemon not running (no status socket {self.path})"
            return False
        except PermissionError:
            sock.close()
            self.problem = (
                f"cannot open {self.path}: permission denied; run this as the gateway's user"
            )
            return False
        except OSError as exc:
            sock.close()
            self.problem = f"daemon not answering on {self.path} ({exc.strerror or exc})"
            return False
        self.sock = sock
        self.buffer = b""
        return True

    def fileno(self) -> int:
        assert self.sock is not None
        return self.sock.fileno()

    def read(self) -> None:
        """Take in what the daemon sent; keeps the newest complete snapshot."""
        assert self.sock is not None
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            self.problem = "daemon stopped (status socket closed)"
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_LINE:
            self.close()
            self.problem = "daemon sent an oversized status line"
            return
        for line in reversed(lines):
            try:
                self.snapshot = Snapshot.from_json(json.loads(line))
            except ValueError:
                continue
            break

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.snapshot = None


class Terminal:
    """The pane's terminal: quiet (no echo, no signals from keys) while waiting."""

    def __init__(self, fd: int, out: TextIO) -> None:
        self.fd = fd if os.isatty(fd) else None
        self.out = out
        self.saved = termios.tcgetattr(fd) if self.fd is not None else None

    def quiet(self) -> None:
        if self.fd is not None and self.saved is not None:
            attrs = termios.tcgetattr(self.fd)
            attrs[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        self.out.write("\x1b[?25l")  # hide the cursor: there is nothing to type
        self.out.flush()

    def reset(self) -> None:
        """Undo what a program in the VM may have left on when the connection dropped."""
        if self.fd is not None and self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
        self.out.write(_RESET)
        self.out.flush()

    def restore(self) -> None:
        if self.fd is not None and self.saved is not None:
            # Keys pressed while waiting must not reach the remote shell.
            termios.tcflush(self.fd, termios.TCIFLUSH)
            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
        self.out.write("\x1b[?25h\x1b[H\x1b[2J")
        self.out.flush()

    def drain(self) -> None:
        """Throw away what was typed while waiting."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.read(self.fd, 4096)

    def draw(self, lines: list[str]) -> None:
        # Every line quotes something from outside (the daemon's facts, ssh's last words):
        # each is escaped and bounded here, the one place that writes to the terminal, so an
        # escape code from the VM or a page can neither repaint the pane nor retitle it.
        shown = (untrusted(line, SCREEN_LINE_LIMIT) for line in lines)
        self.out.write("\x1b[H\x1b[2J" + "\r\n".join(shown) + "\r\n")
        self.out.flush()


@contextlib.contextmanager
def _keys_do_nothing() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _QUIET_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _default_signals() -> None:
    """In the ssh child: Ctrl-C and friends act as usual (ssh passes them to the VM)."""
    for sig in _QUIET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


def tunnel_of(snapshot: Snapshot | None, session: str) -> TunnelFacts | None:
    if snapshot is None or session not in snapshot.sessions:
        return None
    return snapshot.sessions[session].tunnel


def waiting_line(snapshot: Snapshot, session: str, now: float) -> str:
    """'waiting for the Colab tunnel — tunnel down 40s · runtime connected'."""
    if session not in snapshot.sessions:
        known = ", ".join(snapshot.sessions) or "none"
        return f"the daemon has no session {session!r} (its sessions: {known}); check the config"
    # The daemon's facts at our clock: the screen ticks between two snapshots.
    facts = status_line.session_facts(
        replace(snapshot, now=now), snapshot.sessions[session], always_tunnel=True
    )
    line = "waiting for the Colab tunnel — " + " · ".join(facts)
    if snapshot.sessions[session].tunnel.since is None:
        # Never up: how long the daemon has waited is the clock a person wants here.
        line += f" (the daemon started {format_duration(now - snapshot.started_at)} ago)"
    return line


@dataclass(frozen=True)
class SshPlan:
    argv: list[str]
    resume_vm: str | None = None  # this ssh runs sync.resume.command first, for this VM


def restore_wait(config: Config, session: str, snapshot: Snapshot | None) -> str:
    """Why the shell must not start yet because the sync is putting files back into the new
    VM (``restoring 1.2 GB from 14:02 snapshot…``), or "" when it may."""
    if not config.session(session).sync.enabled:
        return ""
    facts = snapshot.sessions.get(session) if snapshot is not None else None
    if facts is None:
        return "waiting for the daemon to say whether files are restored into this VM…"
    vm, sync = facts.tunnel.hostkey_fingerprint, facts.sync
    if vm is not None and sync.ready_for == vm:
        return ""
    if sync.restore == RestoreState.FAILED:
        # Retried in the background (it never overwrites newer files): let the person in.
        return ""
    if sync.restore in (RestoreState.RESTORING, RestoreState.RESUMING):
        return status_line.restore_words(sync)
    return "looking for a snapshot to restore into the new VM…"


def plan_ssh(
    session: str,
    paths: Paths,
    snapshot: Snapshot | None = None,
    resumed: str | None = None,
) -> SshPlan | str:
    """The ssh command line, or what keeps us from running it (a sentence for the screen)."""
    try:
        config = load_ssh_view(paths.config)
    except ConfigError as exc:
        return f"the config has a problem: {exc.problems[0]}"
    try:
        port = config.session(session).ssh_port
    except KeyError as exc:
        return str(exc.args[0])
    identity = Path(os.path.expanduser(config.ssh.identity))
    if not identity.exists():
        return (
            f"the ssh key ssh.identity={config.ssh.identity!r} does not exist ({identity}): "
            "create it or point ssh.identity at the key whose .pub the bootstrap installs"
        )
    if not pinned_keys(paths.known_hosts, port):
        return (
            f"tunnel up, but no host key for [localhost]:{port} is pinned in "
            f"{paths.known_hosts} yet"
        )
    waiting = restore_wait(config, session, snapshot)
    if waiting:
        return waiting
    resume = config.session(session).sync.resume
    facts = snapshot.sessions.get(session) if snapshot is not None else None
    vm = facts.sync.resume_window_for if facts is not None else None
    if resume.command and resume.where == "window" and vm is not None and vm != resumed:
        # sync.resume.where=window: the command runs in this window, then the usual shell.
        argv = ssh_argv(config, session, paths)
        remote = f'{resume.command}; exec "${{SHELL:-/bin/bash}}" -l'
        return SshPlan([*argv[:-1], "-t", argv[-1], remote], resume_vm=vm)
    return SshPlan(ssh_argv(config, session, paths))


def run_ssh(argv: list[str], terminal: Terminal, tunnel_since: float | None) -> Attempt:
    terminal.restore()
    started = time.monotonic()
    # ssh's own messages go to a file so the waiting screen can show why it ended; the
    # remote shell's output goes through the pty as usual.
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv, stderr=errors, preexec_fn=_default_signals)
            code = proc.wait()
        except OSError as exc:
            code, text = 127, f"cannot run {argv[0]}: {exc.strerror}"
        else:
            errors.seek(0)
            lines = [
                line.strip() for line in errors.read()[-8192:].decode(errors="replace").splitlines()
            ]
            text = next((line for line in reversed(lines) if line), "")
    ended = time.monotonic()
    terminal.reset()
    terminal.quiet()
    return Attempt(started, ended, time.time(), tunnel_since, code, text)


def screen_lines(
    session: str,
    watch: Watch,
    last: Attempt | None,
    blocked: str,
    retry_in: float,
) -> list[str]:
    now = time.time()
    snapshot = watch.snapshot
    lines = [f"colab-gateway · session {session}", ""]
    if snapshot is None:
        lines.append(f"waiting for the Colab tunnel — {watch.problem or 'connecting to daemon'}")
    else:
        tunnel = tunnel_of(snapshot, session)
        if tunnel and tunnel.up:
            if blocked:
                lines.append(blocked)
            elif retry_in > 0:
                lines.append(f"tunnel up; ssh again in {format_duration(retry_in)}")
        else:
            lines.append(waiting_line(snapshot, session, now))
        summary = replace(snapshot, now=now).summary
        if summary != status_line.NOTHING_ENABLED:
            lines.append(f"daemon: {summary}")
    if last is not None:
        why = f": {last.message}" if last.message else ""
        lines.append(
            f"last ssh ended {format_duration(now - last.wall_ended)} ago after "
            f"{format_duration(last.duration)} (exit {last.code}{why})"
        )
    lines += ["", "This window connects by itself; there is nothing to type here."]
    return lines


def run(session: str, paths: Paths, *, stdin_fd: int = 0, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    terminal = Terminal(stdin_fd, out)
    watch = Watch(paths.status_socket)
    last: Attempt | None = None
    resumed: str | None = None  # the VM whose resume.command this window ran
    # ssh that fails at once is tried again after 1 s, doubling up to 30 s.
    backoff = Backoff(1.0, MAX_BACKOFF)
    retry_at = 0.0
    next_connect = 0.0
    with _keys_do_nothing():
        terminal.quiet()
        try:
            while True:
                now = time.monotonic()
                if watch.sock is None and now >= next_connect and not watch.connect():
                    next_connect = now + RECONNECT
                tunnel = tunnel_of(watch.snapshot, session)
                blocked = ""
                wake_in = REFRESH
                if tunnel and tunnel.up:
                    fresh = last is None or tunnel.since != last.tunnel_since
                    if fresh or now >= retry_at:
                        plan = plan_ssh(session, paths, watch.snapshot, resumed)
                        if isinstance(plan, SshPlan):
                            resumed = plan.resume_vm or resumed
                            watch.close()  # a stale snapshot must not decide what comes next
                            next_connect = 0.0
                            if fresh:
                                backoff.reset()
                            last = run_ssh(plan.argv, terminal, tunnel.since)
                            if last.duration >= LONG_SESSION:
                                backoff.reset()
                                retry_at = 0.0
                            else:
                                retry_at = last.ended + backoff.failure()
                            continue
                        blocked = plan
                        wake_in = KEY_RECHECK
                    else:
                        wake_in = min(wake_in, retry_at - now)
                terminal.draw(screen_lines(session, watch, last, blocked, max(0.0, retry_at - now)))
                if watch.sock is None:
                    wake_in = min(wake_in, max(0.0, next_connect - now))
                readers: list[Any] = [watch] if watch.sock is not None else []
                if terminal.fd is not None:
                    readers.append(terminal.fd)
                ready, _, _ = select.select(readers, [], [], max(0.0, wake_in))
                if watch in ready:
                    watch.read()
                if terminal.fd is not None and terminal.fd in ready:
                    terminal.drain()
        finally:
            watch.close()
            terminal.restore()
