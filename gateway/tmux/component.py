"""The tmux keeper: one tmux session, one window per Colab session, always there.

The keeper owns exactly the windows it marked with the window option ``@colab-gateway``
(whose value is the Colab session's name). It never touches other tmux sessions, never
closes windows the user opened in its session, and recreates its own windows when they go.

It reacts to a lost window at once without polling: hooks run ``wait-for -S <channel>``
whenever a window leaves its session (a hook of that session only) or a session closes (a
global hook, appended beside the user's own), and the keeper waits on that channel with
``tmux wait-for``. tmux remembers a signal sent while nobody waits, so nothing is lost
between two checks. A killed server ends the waiting client at once. A re-check every
few seconds is the safety net for anything else (hooks removed by hand, say).

The tmux server normally belongs to ``colab-gateway-tmux.service`` so that restarting
the daemon never ends the session a user is attached to. When there is no server (tests,
the demo, a machine without that unit) the keeper starts one in a new session (setsid);
under systemd that server still lives in the daemon's cgroup, and the keeper says so.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import pwd
import shlex
import shutil
import signal
import sys
import time

from gateway.backoff import Backoff
from gateway.component import Context
from gateway.paths import Paths
from gateway.state import Health
from gateway.tmux import tmuxctl

log = logging.getLogger(__name__)

OWNER_OPTION = "@colab-gateway"
RECHECK = 5.0  # the fallback for what no hook reports; also the watchdog's proof of life
QUICK_EXIT = 2.0  # a window gone sooner than this after its creation is a crash loop
FIRST_DELAY = 1.0
MAX_DELAY = 60.0
# Under systemd the server belongs to colab-gateway-tmux.service (Restart=always, 2 s):
# give it this long to come back before starting one in the daemon's own cgroup.
SERVER_GRACE = 10.0
MIN_WAIT = 0.05
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def channel(tmux_session: str) -> str:
    return f"colab-gateway-{tmux_session}"


def gateway_command() -> list[str]:
    """How to run ``colab-gateway`` with the very code the daemon runs."""
    if sys.executable:
        return [sys.executable, "-m", "gateway"]
    script = shutil.which("colab-gateway")
    if script is None:
        raise RuntimeError("cannot find the python interpreter or the colab-gateway command")
    return [script]


def shell_command(session: str, paths: Paths) -> list[str]:
    """The pane's command: ``colab-gateway shell SESSION`` with the daemon's own paths."""
    return [
        *gateway_command(),
        "shell",
        session,
        "--config",
        os.path.abspath(paths.config),
        "--state-dir",
        os.path.abspath(paths.state_dir),
        "--runtime-dir",
        os.path.abspath(paths.runtime_dir),
    ]


def _die_with_parent() -> None:
    """In the waiting client: end with the daemon even if it is killed outright, rather
    than wait on the channel forever (systemd would reap it, a test or a shell won't)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def attach_command(session: str, uid: int | None = None) -> str:
    """What a person types to attach. The server runs as this daemon's user: under the
    role's dedicated system user (no login, uid < 1000) that means through sudo."""
    uid = os.getuid() if uid is None else uid
    if uid == 0 or uid >= 1000:
        return f"tmux attach -t {session}"
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    return f"sudo -u {shlex.quote(user)} tmux attach -t {session}"


class TmuxKeeper:
    def __init__(self) -> None:
        self._created_at: dict[str, float] = {}  # monotonic, per Colab session
        self._quick_deaths: dict[str, int] = {}
        # The second quick death in a row waits FIRST_DELAY, doubling up to MAX_DELAY.
        self._respawn = Backoff(FIRST_DELAY, MAX_DELAY)
        self._not_before: dict[str, float] = {}
        # (server pid, session id) our hook is on: a new server reuses session ids.
        self._hooked: tuple[str, str] | None = None
        self._started_server = False
        self._no_server_since: float | None = None

    async def run(self, ctx: Context) -> None:
        while True:
            try:
                wake_in = await self.reconcile(ctx)
            except tmuxctl.TmuxError as exc:
                if not exc.vanished:
                    raise
                # A window or the session went while we worked on it: look again. A
                # window that keeps dying is held back by _schedule, so this can't spin.
                log.debug("tmux changed under the keeper (%s); looking again", exc)
                wake_in = MIN_WAIT
            ctx.progress()
            await self._wait(channel(ctx.config.tmux.session), min(RECHECK, wake_in))
            ctx.progress()

    async def reconcile(self, ctx: Context) -> float:
        """Bring tmux in line with the config; return how soon to look again."""
        name = ctx.config.tmux.session
        wanted = [s.name for s in ctx.config.sessions]
        now = time.monotonic()
        found = await self._ensure_session(ctx, name, wanted, now)
        if isinstance(found, float):
            return found
        if found != self._hooked:
            await self._install_hooks(name, found[1])
            self._hooked = found
        owned = await self._owned_windows(name)
        wake_in = RECHECK
        for session in wanted:
            if session in owned:
                continue
            ready_at = self._schedule(session, now)
            if ready_at > now:
                wake_in = min(wake_in, ready_at - now)
                continue
            await self._new_window(ctx, name, session)
        for session, window_ids in owned.items():
            if session not in wanted:
                for window_id in window_ids:
                    log.info("closing window %s: session %s left the config", window_id, session)
                    await tmuxctl.run("kill-window", "-t", window_id, check=False)
        self._report(ctx, name, wanted, owned)
        return max(wake_in, MIN_WAIT)

    def _schedule(self, session: str, now: float) -> float:
        """When the window of ``session`` may be created again (now, or after a backoff)."""
        if session in self._not_before:
            return self._not_before[session]
        created = self._created_at.get(session)
        if created is None:
            return now
        if now - created >= QUICK_EXIT:
            self._quick_deaths.pop(session, None)
            log.info(
                "window %s closed %.1fs after it was created; recreating it", session, now - created
            )
            return now
        # Gone right after it was made. Once may be the user's hand; again is a crash
        # loop: try again with a growing pause instead of spinning.
        deaths = self._quick_deaths[session] = self._quick_deaths.get(session, 0) + 1
        if deaths < 2:
            log.info(
                "window %s closed %.1fs after it was created; recreating it", session, now - created
            )
            return now
        delay = self._respawn.delay(deaths - 1)
        self._not_before[session] = now + delay
        log.warning(
            "window %s closed %.1fs after it was created, %d times in a row; recreating it "
            "in %.0fs",
            session,
            now - created,
            deaths,
            delay,
        )
        return now + delay

    async def _ensure_session(
        self, ctx: Context, name: str, wanted: list[str], now: float
    ) -> tuple[str, str] | float:
        """(server pid, session id), the session made if missing; or, when it can't be
        made yet, how many seconds to wait (the reason is in the health)."""
        found = await tmuxctl.run(
            "display-message", "-p", "-t", f"={name}:", "#{pid} #{session_id}", check=False
        )
        if found.returncode == 0 and len(found.stdout.split()) == 2:
            self._no_server_since = None
            pid, session_id = found.stdout.split()
            return pid, session_id
        if found.no_server and os.environ.get("INVOCATION_ID"):
            if self._no_server_since is None:
                self._no_server_since = now
            if now - self._no_server_since < SERVER_GRACE:
                ctx.health(
                    Health.DEGRADED,
                    f"no tmux server on {tmuxctl.socket_path()}: waiting for "
                    "colab-gateway-tmux.service to start it "
                    "(systemctl status colab-gateway-tmux)",
                    brief="",
                )
                return 1.0
        self._no_server_since = None
        # A new session starts with the first Colab session's window, so that no stray
        # shell window appears; a server is started if there is none.
        first = wanted[0]
        ready_at = self._schedule(first, now)
        if ready_at > now:  # its only window keeps dying, taking the session along
            self._report(ctx, name, wanted, {})
            return ready_at - now
        started_server = found.no_server
        created = await tmuxctl.run(
            "new-session",
            "-d",
            "-s",
            name,
            "-n",
            first,
            "-P",
            "-F",
            "#{pid} #{session_id} #{window_id}",
            shlex.join(shell_command(first, ctx.paths)),
            detach=True,
        )
        pid, session_id, window_id = created.stdout.split()
        self._note_created(first, now)
        await self._mark(window_id, first)
        if started_server:
            self._started_server = True
            log.info("started a tmux server on %s", tmuxctl.socket_path())
        log.info("created tmux session %s (%s) with window %s", name, session_id, first)
        return pid, session_id

    async def _install_hooks(self, name: str, session_id: str) -> None:
        wake = f"wait-for -S {channel(name)}"
        # A window leaving our session. This session's own hook: replaces no one's.
        await tmuxctl.run("set-hook", "-t", session_id, "window-unlinked", wake)
        # The session itself closing (its last window killed, kill-session) runs no session
        # hook, only the global one: append ours, once per server, beside the user's.
        current = await tmuxctl.run("show-hooks", "-g", "session-closed", check=False)
        if wake not in current.stdout:
            await tmuxctl.run("set-hook", "-ga", "session-closed", wake)

    async def _owned_windows(self, name: str) -> dict[str, list[str]]:
        listing = await tmuxctl.run(
            "list-windows", "-t", f"={name}", "-F", f"#{{window_id}}\t#{{{OWNER_OPTION}}}"
        )
        owned: dict[str, list[str]] = {}
        for line in listing.stdout.splitlines():
            window_id, _, owner = line.partition("\t")
            if owner:
                owned.setdefault(owner, []).append(window_id)
        return owned

    async def _new_window(self, ctx: Context, name: str, session: str) -> None:
        # -d: never switch the attached user away from the window they are looking at.
        created = await tmuxctl.run(
            "new-window",
            "-d",
            "-t",
            f"={name}:",
            "-n",
            session,
            "-P",
            "-F",
            "#{window_id}",
            shlex.join(shell_command(session, ctx.paths)),
        )
        window_id = created.stdout.strip()
        self._note_created(session, time.monotonic())
        await self._mark(window_id, session)
        log.info("opened window %s (%s) in tmux session %s", session, window_id, name)

    async def _mark(self, window_id: str, session: str) -> None:
        await tmuxctl.run("set-option", "-w", "-t", window_id, OWNER_OPTION, session)
        # The remote shell must not rename the window: its name is the session's.
        await tmuxctl.run("set-option", "-w", "-t", window_id, "allow-rename", "off", check=False)
        await tmuxctl.run(
            "set-option", "-w", "-t", window_id, "automatic-rename", "off", check=False
        )

    def _note_created(self, session: str, now: float) -> None:
        self._created_at[session] = now
        self._not_before.pop(session, None)

    def _report(
        self, ctx: Context, name: str, wanted: list[str], owned: dict[str, list[str]]
    ) -> None:
        windows = ", ".join(wanted)
        if self._started_server and os.environ.get("INVOCATION_ID"):
            ctx.health(
                Health.DEGRADED,
                f"started the tmux server itself ({tmuxctl.socket_path()}): it lives in the "
                "daemon's cgroup, so restarting colab-gateway will end the tmux session; "
                "enable the server's own unit: systemctl enable --now colab-gateway-tmux",
                brief="",
                tmux_session=name,
                windows=wanted,
            )
            return
        missing = [s for s in wanted if s not in owned]
        waiting = [s for s in missing if s in self._not_before]
        if waiting:
            ctx.health(
                Health.DEGRADED,
                f"tmux window(s) {', '.join(waiting)} keep closing right after they start; "
                f"retrying with a pause (see the daemon's log, or run: colab-gateway shell "
                f"{waiting[0]})",
                brief="",
                tmux_session=name,
                windows=wanted,
            )
            return
        ctx.health(
            Health.OK,
            f"tmux session {name} has window(s) {windows}; attach with: {attach_command(name)}",
            brief="",
            tmux_session=name,
            windows=wanted,
        )

    async def _wait(self, channel_name: str, timeout: float) -> None:
        """Until the session hook signals ``channel_name``, or ``timeout``."""
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            tmuxctl.TMUX,
            "wait-for",
            channel_name,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=tmuxctl.tmux_environment(),
            preexec_fn=_die_with_parent,
        )
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode not in (0, None, -9) and time.monotonic() - started < 0.5:
            # The server went away under us: re-check soon, but never spin.
            await asyncio.sleep(0.5)
