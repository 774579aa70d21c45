"""Processes left holding the browser profile: found, ended, or named in the status.

One profile can be opened by one Chromium at a time. A hard kill of the daemon (the
watchdog's SIGABRT, the OOM killer, systemd's stop timeout) can leave chromedriver and
Chromium running: with the Ubuntu snap they sit in a transient scope of ``user@UID.service``
(another cgroup, so systemd does not end them with the service), re-parented to init or to
``systemd --user``. They keep the profile's ``SingletonLock`` and every later start fails
("Chrome instance exited", or "user data directory is already in use").

``free_profile()`` runs before each start of Chromium and on the component's stop: it
finds every live process whose command line carries ``--user-data-dir=<this profile>``
(exactly that argument, the path resolved; Chromium passes it to all its helpers) and
ends those of this service's user with SIGTERM, then SIGKILL, each wait bounded, plus the
chromedriver they were started by. It spares the browsers this daemon runs itself and,
always, the browser of a running ``colab-gateway login`` (it holds the profile on purpose
while the keep-alive pauses). Once nothing holds the profile it removes Chromium's stale
``Singleton*`` links. What it cannot free (a login's browser, a process of another user,
one that survives SIGKILL) is raised as ``ProfileInUse``, whose text says in words what
holds the profile and what to do.

The scan is one pass over /proc's command lines, only at start and stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from gateway.browser import login
from gateway.untrusted import untrusted

log = logging.getLogger(__name__)

ARG = "--user-data-dir="
SINGLETONS = ("SingletonLock", "SingletonSocket", "SingletonCookie")
TERM_WAIT = 3.0  # Chromium quits on SIGTERM within a second when it is healthy
KILL_WAIT = 2.0
NAMED_AT_MOST = 8  # holders listed by pid in one log line; the rest are counted
# What Chromium and chromedriver say when the profile is held (ProcessSingleton, driver).
IN_USE_WORDS = ("user data directory is already in use", "profile appears to be in use")


class ProfileInUse(RuntimeError):
    """The profile is held by something this service may not or could not end. The text
    is for a person: what holds it and what to do."""


@dataclass(frozen=True)
class Holder:
    pid: int
    ppid: int
    name: str  # escaped: /proc's names are whatever the process calls itself
    user: str
    uid: int

    def describe(self) -> str:
        return f"pid {self.pid} ({self.name}, user {self.user})"


def _same_profile(value: str, profile: Path, cwd: str | None) -> bool:
    if not value:
        return False
    path = Path(value)
    if not path.is_absolute():
        if cwd is None:
            return False
        path = Path(cwd) / path
    try:
        return path.resolve() == profile
    except (OSError, RuntimeError):  # a link loop
        return False


def _holds(proc: psutil.Process, profile: Path) -> bool:
    cmdline = proc.info["cmdline"] or []  # None or empty: not readable, or a kernel thread
    values = [arg[len(ARG) :] for arg in cmdline if arg.startswith(ARG)]
    if not values:
        return False
    cwd = None
    if any(not v.startswith("/") for v in values):
        with contextlib.suppress(psutil.Error):
            cwd = proc.cwd()
    return any(_same_profile(v, profile, cwd) for v in values)


def _holder(proc: psutil.Process) -> Holder | None:
    """The facts of a matching process, None for a zombie (it holds nothing)."""
    with proc.oneshot():
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        uid = proc.uids().real
        try:
            user = proc.username()
        except (psutil.Error, KeyError):  # a uid without a passwd entry
            user = str(uid)
        return Holder(proc.pid, proc.ppid(), untrusted(proc.name(), 40), untrusted(user, 40), uid)


def find_holders(profile: Path) -> list[Holder]:
    """Every live process whose command line opens ``profile``, in pid order. Only the
    command lines are read for all processes; the rest only for the few that match."""
    profile = profile.resolve()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            if _holds(proc, profile) and (holder := _holder(proc)) is not None:
                found.append(holder)
    return sorted(found, key=lambda h: h.pid)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _signal_and_wait(pids: Iterable[int], sig: int, timeout: float) -> set[int]:
    """Send ``sig`` to each pid; return those still alive after ``timeout``. A zombie counts
    as gone: it holds nothing, and its parent (init, systemd --user) reaps it."""
    pending = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
            pending.add(pid)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = {pid for pid in pending if not _gone(pid)}
        if pending:
            time.sleep(0.05)
    return {pid for pid in pending if not _gone(pid)}


def _descendants(pid: int) -> set[int]:
    try:
        return {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _sessions(pids: Iterable[int]) -> set[int]:
    sids = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            sids.add(os.getsid(pid))
    return sids


def _drivers_of(holders: list[Holder], uid: int, spared: set[int]) -> list[Holder]:
    """The chromedriver a left-over Chromium was started by: it holds no profile argument
    but is left behind with it, and ours to end too."""
    drivers = []
    for ppid in sorted({h.ppid for h in holders} - {h.pid for h in holders}):
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(ppid)
            name = parent.name()
            ours = ppid > 1 and ppid not in spared and parent.uids().real == uid
            if ours and "chromedriver" in name:
                drivers.append(Holder(ppid, parent.ppid(), untrusted(name, 40), "", uid))
    return drivers


def _listed(ended: list[tuple[Holder, str]]) -> str:
    """Per signal, the processes the others descend from (chromedriver, or Chromium's
    browser process) by pid, their helpers counted."""
    parts = []
    for how in ("SIGTERM", "SIGKILL"):
        group = [h for h, by in ended if by == how]
        pids = {h.pid for h in group}
        roots = [h for h in group if h.ppid not in pids][:NAMED_AT_MOST]
        if not roots:
            continue
        rest = len(group) - len(roots)
        shown = ", ".join(f"pid {h.pid} ({h.name})" for h in roots)
        parts.append(shown + (f" and {rest} of their processes" if rest else "") + f" by {how}")
    return "; ".join(parts)


def _main_of(holders: list[Holder]) -> Holder:
    """The process the others descend from (Chromium's browser process), else the first."""
    pids = {h.pid for h in holders}
    return next((h for h in holders if h.ppid not in pids), holders[0])


def _what(holders: list[Holder]) -> str:
    main = _main_of(holders)
    others = len(holders) - 1
    return main.describe() + (f" and {others} more of its processes" if others > 0 else "")


def free_profile(
    profile: Path,
    runtime_dir: Path | None,
    spare_sessions: Iterable[int] = (),
    spare_pids: Iterable[int] = (),
) -> None:
    """End what this service's user left holding ``profile``; remove stale Singleton links.

    Spared: processes in ``spare_sessions`` / ``spare_pids`` (this daemon's own browsers)
    and the live ``colab-gateway login`` named by ``<runtime_dir>/browser-paused`` with
    everything it started (``runtime_dir`` None: no login to look for, as in tests).
    Raises ProfileInUse when something still holds the profile afterwards.
    """
    profile = profile.resolve()
    holders = find_holders(profile)
    uid = os.geteuid()
    login_pid = login.pause_pid(runtime_dir) if runtime_dir is not None else None
    login_flag = runtime_dir is not None and login.pause_requested(runtime_dir)
    login_family = _descendants(login_pid) if login_pid is not None else set()
    # the login's Chromium runs in its own session: helpers re-parented away stay in it
    login_sessions = _sessions(p for p in login_family if p != login_pid)
    ours = set(spare_pids)
    our_sessions = set(spare_sessions)

    by_login, by_us, foreign, to_end = [], [], [], []
    for holder in holders:
        sid = -1
        with contextlib.suppress(OSError):
            sid = os.getsid(holder.pid)
        unreadable_flag = login_flag and login_pid is None  # better spared than killed
        if unreadable_flag or holder.pid in login_family or sid in login_sessions:
            by_login.append(holder)
        elif holder.pid in ours or sid in our_sessions:
            by_us.append(holder)
        elif holder.uid != uid:
            foreign.append(holder)
        else:
            to_end.append(holder)

    survivors: list[Holder] = []
    if to_end:
        to_end += _drivers_of(to_end, uid, login_family | ours)
        ended: list[tuple[Holder, str]] = []
        alive = _signal_and_wait([h.pid for h in to_end], signal.SIGTERM, TERM_WAIT)
        ended += [(h, "SIGTERM") for h in to_end if h.pid not in alive]
        if alive:
            still = _signal_and_wait(alive, signal.SIGKILL, KILL_WAIT)
            ended += [(h, "SIGKILL") for h in to_end if h.pid in alive - still]
            survivors = [h for h in to_end if h.pid in still]
        if ended:
            log.warning(
                "browser profile %s was held by %d processes left behind: ended %s",
                profile,
                len(ended),
                _listed(ended),
            )

    if by_login:
        raise ProfileInUse(
            f"browser profile {profile} is in use by `colab-gateway login` "
            f"(pid {login_pid or '?'}, its browser {_what(by_login)}): "
            "wait for the login to finish, or end it"
        )
    if foreign:
        raise ProfileInUse(
            f"browser profile {profile} is in use by {_what(foreign)}, which this service "
            f"(uid {uid}) may not end: end it (sudo kill {_main_of(foreign).pid}), or give "
            "the service its own browser.profile_dir"
        )
    if survivors:
        raise ProfileInUse(
            f"browser profile {profile} is still in use by {_what(survivors)} after "
            "SIGKILL (stuck in the kernel?): end it, or reboot if it stays"
        )
    if by_us:
        raise ProfileInUse(
            f"browser profile {profile} is in use by another browser of this daemon "
            f"({_what(by_us)}): give each browser its own browser.profile_dir"
        )
    remove_stale_singletons(profile)


def lock_owner(profile: Path) -> tuple[str, int] | None:
    """What ``SingletonLock`` names (a link to ``<hostname>-<pid>``, never followed)."""
    try:
        target = os.readlink(profile / "SingletonLock")
    except OSError:
        return None
    host, _, pid = target.rpartition("-")
    return (host, int(pid)) if pid.isdigit() else None


def remove_stale_singletons(profile: Path) -> list[str]:
    """Remove ``Singleton*`` (links: unlinked, never followed) unless the lock names a live
    process of this machine, which Chromium itself then asks to open a window, or kills if
    it does not answer. A lock of another host name (the machine was renamed, the profile
    copied) would make Chromium refuse the profile for ever."""
    owner = lock_owner(profile)
    if owner is not None and owner[0] == socket.gethostname() and not _gone(owner[1]):
        return []
    removed = []
    for name in SINGLETONS:
        path = profile / name
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode):
            continue  # not Chromium's: leave it to a person
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(name)
    if removed:
        log.warning(
            "browser profile %s: removed the stale %s left by a browser that is gone%s",
            profile,
            ", ".join(removed),
            f" (the lock named {untrusted(owner[0], 64)!s} pid {owner[1]})" if owner else "",
        )
    return removed


def in_use_message(profile: Path, chromium_said: str) -> str | None:
    """Words for a start Chromium refused because the profile is held: by the process its
    lock names, or as Chromium said it. None when the failure is about something else."""
    owner = lock_owner(profile)
    said_in_use = any(words in chromium_said for words in IN_USE_WORDS)
    if owner is not None and owner[0] == socket.gethostname() and not _gone(owner[1]):
        try:
            proc = psutil.Process(owner[1])
            with proc.oneshot():
                who = (
                    f"pid {owner[1]} ({untrusted(proc.name(), 40)}, "
                    f"user {untrusted(proc.username(), 40)})"
                )
        except psutil.Error:
            who = f"pid {owner[1]}"
        return (
            f"browser profile {profile} is in use by {who}, as its SingletonLock says: "
            "end it, or wait for `colab-gateway login` to finish"
        )
    if said_in_use:
        return (
            f"Chromium says browser profile {profile} is already in use, by no process "
            "this service can see: end the browser using it (another machine or container "
            "sharing the directory?), or give the service its own browser.profile_dir"
        )
    return None
