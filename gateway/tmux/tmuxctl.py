"""Running the tmux command against the service user's default server.

No ``-L``/``-S``: the keeper must use the very socket a plain ``tmux attach`` finds, which
tmux derives from ``TMUX_TMPDIR`` (default /tmp) and the user id. ``TMUX`` is removed from
the environment because inside a tmux pane it would point every command at *that* server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass

TMUX = "tmux"
COMMAND_TIMEOUT = 10.0

# Variables that belong to the daemon's own service and must not leak into a tmux server
# the keeper starts (the panes would inherit them).
_PRIVATE_VARIABLES = (
    "TMUX",
    "TMUX_PANE",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


# What tmux says when a session or window went away between two commands.
_GONE = (
    "no such session",
    "no such window",
    "can't find session",
    "can't find window",
    "can't find pane",
    "no server running",
    "server exited",
    # A server kept up with no session at all (the unit's, exit-empty off) answers any
    # target this way: the keeper's session closed with its last window.
    "no current target",
)


class TmuxError(RuntimeError):
    """tmux answered with an error, or did not answer in time."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr

    @property
    def vanished(self) -> bool:
        """The target went away meanwhile (a window closed, the server exited): a race
        with the user or a dying pane, to be answered by looking again."""
        return any(text in self.stderr for text in _GONE)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def no_server(self) -> bool:
        """tmux found no server on the socket (never started, or killed)."""
        text = self.stderr
        return "no server running" in text or "error connecting to" in text


def tmux_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name in _PRIVATE_VARIABLES:
        env.pop(name, None)
    return env


def socket_path() -> str:
    """Where tmux's default server listens for this user (for messages, not for tmux)."""
    tmpdir = os.environ.get("TMUX_TMPDIR") or "/tmp"  # noqa: S108 (tmux's own default)
    return os.path.join(tmpdir, f"tmux-{os.getuid()}", "default")


async def run(*args: str, check: bool = True, detach: bool = False) -> Result:
    """Run ``tmux ARGS``; raise TmuxError on failure when ``check``.

    ``detach`` starts the client in a new session (setsid): a server it forks then lives
    outside the daemon's process group, so signals sent to the daemon's group spare it.
    """
    proc = await asyncio.create_subprocess_exec(
        TMUX,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=tmux_environment(),
        start_new_session=detach,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise TmuxError(
            f"'tmux {' '.join(args)}' gave no answer within {COMMAND_TIMEOUT:.0f}s "
            f"(server socket {socket_path()})"
        ) from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    result = Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and result.returncode != 0:
        raise TmuxError(
            f"'tmux {' '.join(args)}' failed ({result.returncode}): {result.stderr.strip()}",
            result.stderr,
        )
    return result
