"""Which facts in a Snapshot are worth telling a person, and when to tell them again.

Pure: ``Watcher.evaluate(snapshot, now)`` returns the alerts to send now and keeps only
what it needs to not repeat itself (per problem: since when, when last sent). The
component feeds it every State change; tests feed it made-up snapshots and a clock.

A *problem* lasts (human_needed, runtime_lost, tunnel_down, ddns_stopped): it is sent when
it starts (or after its grace time), again at most every ``repeat_after`` while it lasts,
and once more as "resolved" when it clears. A *happening* (vm_reset, daemon_restarted) is
sent once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import Config
from gateway.durations import format_duration
from gateway.secrets import redact
from gateway.snapshot import Snapshot
from gateway.untrusted import untrusted
from gateway.vocabulary import RuntimeState, SessionState

# What a phone shows of a message. Page texts (a dialog's title) and providers' answers
# reach these through the State's facts; the keep-alive quotes a title at most 120
# characters long, and the renderer bounds each part again, whatever the facts hold.
TITLE_LIMIT = 200
DETAIL_LIMIT = 500
LINE_LIMIT = 800
# A VM id as the page names it, in "Colab handed out a new VM (a -> b)".
VM_ID_LIMIT = 40


@dataclass(frozen=True)
class Alert:
    event: str
    session: str  # "" for the whole gateway
    title: str
    body: str
    attach: str | None = None  # a screenshot (or the evidence JSON) of what the page showed
    resolved: bool = False


@dataclass(frozen=True)
class Problem:
    event: str
    session: str
    what: str  # what happened, in a few words
    todo: str  # the one thing a person should do
    since: float  # wall clock
    detail: str = ""
    screenshot: str | None = None

    @property
    def key(self) -> str:
        return f"{self.event}:{self.session}:{self.what}"


@dataclass
class _Open:
    problem: Problem
    sent_at: float | None = None


@dataclass
class _Reset:
    old_vm: str
    new_vm: str
    at: float


# The keep-alive is trying (and may still succeed): worth a word only after a while.
_TRYING = {
    RuntimeState.UNKNOWN,
    RuntimeState.LOADING,
    RuntimeState.LOAD_FAILED,
    RuntimeState.CONNECTING,
    RuntimeState.DISCONNECTED,
    RuntimeState.DIALOG,
    RuntimeState.RECAPTCHA,
    RuntimeState.NO_BACKEND,
}
# "Failed to assign a backend" this many times in a row: worth telling at once, whatever
# the time waited (the keep-alive waits longer after each refusal: 30 s, 1 min, 2 min).
NO_BACKEND_ALERT_AFTER = 3


@dataclass
class Watcher:
    config: Config
    host: str = "the gateway"
    # How a person reaches the page from a laptop; None while that command is missing.
    view_command: Callable[[str], str] | None = None
    _open: dict[str, _Open] = field(default_factory=dict)
    _lost_since: dict[str, float] = field(default_factory=dict)
    _vm: dict[str, str] = field(default_factory=dict)
    _resets: dict[str, _Reset] = field(default_factory=dict)
    next_due: float | None = None  # wall clock of the next time-based decision

    @property
    def events(self) -> set[str]:
        return set(self.config.notify.events)

    def evaluate(self, snap: Snapshot, now: float | None = None) -> list[Alert]:
        now = time.time() if now is None else now
        self.next_due = None
        out: list[Alert] = []
        current: dict[str, Problem] = {}
        held: set[str] = set()
        for session in snap.sessions.values():
            if session.runtime.state == RuntimeState.PAUSED:
                # login or view holds the page: nothing new is known; the problem is neither
                # repeated nor resolved until the keep-alive looks again.
                held |= {k for k, e in self._open.items() if e.problem.session == session.name}
                continue
            for problem in self._session_problems(snap, session, now):
                current[problem.key] = problem
            idle = self._gpu_idle(session, now)
            if idle is not None:
                current[idle.key] = idle
            out += self._vm_reset(snap, session, now)
        stopped = self._ddns_stopped(snap)
        if stopped is not None:
            current[stopped.key] = stopped
        repeat = float(self.config.notify.repeat_after)
        for key, problem in current.items():
            if problem.event not in self.events or key in held:
                continue
            entry = self._open.setdefault(key, _Open(problem))
            entry.problem = problem  # newer detail and screenshot
            if entry.sent_at is None or now - entry.sent_at >= repeat:
                entry.sent_at = now
                out.append(self._alert(problem, now))
            else:
                self._due(entry.sent_at + repeat)
        for key in [k for k in self._open if k not in current and k not in held]:
            entry = self._open.pop(key)
            if entry.sent_at is not None:
                out.append(self._resolved(entry.problem, now))
        return out

    def happened(self, event: str, what: str, todo: str, since: float, now: float) -> list[Alert]:
        """A one-off (daemon_restarted) from outside the snapshot."""
        if event not in self.events:
            return []
        return [self._alert(Problem(event, "", what, todo, since), now)]

    # -- the facts -------------------------------------------------------------------------

    def _session_problems(self, snap: Snapshot, session: SessionState, now: float) -> list[Problem]:
        name, runtime, tunnel = session.name, session.runtime, session.tunnel
        problems: list[Problem] = []
        if not snap.runs("browser"):
            return problems
        human = self._human_needed(session, now)
        if human is not None:
            problems.append(human)
        state = runtime.state
        after = float(self.config.notify.tunnel_down_after)
        if state in _TRYING:
            lost_since = self._lost_since.setdefault(name, runtime.since or now)
            if runtime.no_backend_failures >= NO_BACKEND_ALERT_AFTER:
                problems.append(
                    Problem(
                        "runtime_lost",
                        name,
                        "Colab could not assign a backend, again and again",
                        "nothing, if it passes: the keep-alive tries again, waiting longer "
                        "each time; if it lasts, Colab may refuse this account or location "
                        "(an accelerator it has none of, a regional restriction): try a "
                        f"runtime without GPU in the notebook ({self._view(name)})",
                        lost_since,
                        detail=f"{runtime.no_backend_failures} refusals in a row; now: "
                        f"{state.words}: {runtime.message}",
                        screenshot=runtime.screenshot,
                    )
                )
            elif self._waited(lost_since, after, now):
                problems.append(
                    Problem(
                        "runtime_lost",
                        name,
                        "the Colab runtime could not be reconnected",
                        f"look at the page: {self._view(name)} (colab-gateway status says "
                        "what the keep-alive sees)",
                        lost_since,
                        detail=f"now: {state.words}: {runtime.message}",
                        screenshot=runtime.screenshot,
                    )
                )
        else:
            self._lost_since.pop(name, None)
        if state == RuntimeState.CONNECTED and snap.runs("tunnel") and not tunnel.up:
            down_since = max(tunnel.since or snap.started_at, runtime.since or now)
            if self._waited(down_since, after, now):
                rerun = (
                    f"the bootstrap was last re-run {_clock(runtime.last_rerun)}"
                    if runtime.last_rerun
                    else "the bootstrap has not been re-run"
                )
                problems.append(
                    Problem(
                        "tunnel_down",
                        name,
                        "the runtime is connected but its tunnel is down",
                        "open the notebook and read the bootstrap cell's output (the tunnel "
                        "key secret and the Pi's public address are the usual suspects)",
                        down_since,
                        detail=rerun,
                    )
                )
        return problems

    def _gpu_idle(self, session: SessionState, now: float) -> Problem | None:
        """The GPU did next to nothing for notify.gpu_idle_after (vm_stats' facts)."""
        after = float(self.config.notify.gpu_idle_after)
        since = session.vm.gpu_idle_since
        if after <= 0 or since is None or not self._waited(since, after, now):
            return None
        vm = session.vm
        gpu = untrusted(vm.accelerator or "GPU", VM_ID_LIMIT)
        for vendor in ("NVIDIA ", "Tesla "):
            gpu = gpu.removeprefix(vendor)
        held = (
            f"{vm.gpu_memory_used / 1024**3:.1f} GB of VRAM held"
            if vm.gpu_memory_used is not None
            else "its memory use unknown"
        )
        return Problem(
            "gpu_idle",
            session.name,
            # No clock nor memory figure in it: it is the problem's key, sent once.
            f"{gpu} idle for {format_duration(after)}",
            "stop the runtime if the work is done (it burns compute units), or look at "
            "what the job is waiting for",
            since,
            detail=held,
        )

    def _human_needed(self, session: SessionState, now: float) -> Problem | None:
        runtime, name = session.runtime, session.name
        since = runtime.since or now
        view = self._view(name)
        state = runtime.state
        if state == RuntimeState.SIGNED_OUT:
            what, todo = (
                "Google wants a sign-in",
                f"sign the browser profile in again: on the Pi run colab-gateway login (or "
                f"{view} and sign in there)",
            )
        elif state == RuntimeState.DISALLOWED:
            what, todo = (
                "Colab disconnected the runtime for code disallowed in its free tier, and "
                "the gateway stopped",
                "get a paid Colab plan, or remove that code (an SSH shell, a remote desktop) "
                f"from the notebook; then run colab-gateway runtime clear {name} on the Pi "
                "(the gateway does not reconnect until then)",
            )
        elif state == RuntimeState.WRONG_LANGUAGE:
            what, todo = (
                "Colab shows the notebook in a language other than English",
                "set the Google account's language to English (myaccount.google.com > "
                "Personal info > Language); the keep-alive reads English only",
            )
        elif state == RuntimeState.NEEDS_HUMAN:
            what, todo = (
                "a reCAPTCHA keeps coming back",
                f"answer it: {view}, then tick the box on the page",
            )
        elif state == RuntimeState.TOO_MANY_SESSIONS:
            what, todo = (
                "Colab says too many sessions are active",
                f"end the other sessions: Runtime > Manage sessions in the notebook (to reach "
                f"it from here: {view})",
            )
        elif state == RuntimeState.GPU_LIMIT and self.config.browser.on_gpu_limit == "wait":
            what, todo = (
                "Colab's GPU usage limit is reached",
                "wait for the quota to come back, or set browser.on_gpu_limit: "
                "connect_without_gpu to go on without a GPU",
            )
        else:
            return None
        return Problem(
            "human_needed",
            name,
            what,
            todo,
            since,
            detail=runtime.message,
            screenshot=runtime.screenshot,
        )

    def _vm_reset(self, snap: Snapshot, session: SessionState, now: float) -> list[Alert]:
        name, runtime, tunnel = session.name, session.runtime, session.tunnel
        new = runtime.vm_id
        old = self._vm.get(name)
        if new:
            self._vm[name] = new
            if old and new != old:
                self._resets[name] = _Reset(old, new, runtime.since or now)
        reset = self._resets.get(name)
        if reset is None:
            return []
        # The outcome is what a person wants to read: did the tunnel come back?
        after = float(self.config.notify.tunnel_down_after)
        rerun = (
            f"the bootstrap was re-run {_clock(runtime.last_rerun)}"
            if runtime.last_rerun and runtime.last_rerun >= reset.at - 1
            else "the bootstrap was not re-run (yet)"
        )
        if not snap.runs("tunnel"):
            outcome, todo = rerun, "nothing: this is for the record"
        elif tunnel.up and (tunnel.since or 0.0) >= reset.at - 1:
            took = format_duration(max(0.0, (tunnel.since or now) - reset.at))
            outcome, todo = f"{rerun}; the tunnel came back after {took}", "nothing"
        elif now >= reset.at + after:
            outcome = f"{rerun}; the tunnel is still down after {format_duration(after)}"
            todo = "see the tunnel_down message"
        else:
            self._due(reset.at + after)
            return []
        del self._resets[name]
        if "vm_reset" not in self.events:
            return []
        problem = Problem(
            "vm_reset",
            name,
            f"Colab handed out a new VM ({untrusted(reset.old_vm, VM_ID_LIMIT)} -> "
            f"{untrusted(reset.new_vm, VM_ID_LIMIT)})",
            todo,
            reset.at,
            detail=outcome + " (files outside Drive are gone)",
        )
        return [self._alert(problem, now)]

    def _ddns_stopped(self, snap: Snapshot) -> Problem | None:
        ddns = snap.components.get("ddns")
        stopped = ddns.details.get("stopped") if ddns is not None else None
        if not stopped or ddns is None:
            return None
        return Problem(
            "ddns_stopped",
            "",
            "DDNS updates stopped on the provider's orders",
            "fix what the provider objected to in the ddns settings, then "
            "systemctl reload colab-gateway",
            ddns.since or snap.now,
            detail=str(stopped),
        )

    # -- words -----------------------------------------------------------------------------

    def _view(self, session: str) -> str:
        if self.view_command is None:
            return "open the notebook in a browser signed into the same Google account"
        return f"run {self.view_command(session)} on the Pi"

    def _alert(self, problem: Problem, now: float) -> Alert:
        where = f" (session {problem.session})" if problem.session else ""
        since = f"since {_clock(problem.since)} ({format_duration(now - problem.since)} ago)"
        lines = [f"{problem.what}{where}, {since}."]
        if problem.detail:
            lines.append(_shown(problem.detail, DETAIL_LIMIT))
        lines.append(f"To do: {problem.todo}.")
        return Alert(
            problem.event,
            problem.session,
            _shown(f"colab-gateway on {self.host}: {problem.what}", TITLE_LIMIT),
            # The body's lines are ours; each may quote the outside, and stays one line.
            "\n".join(_shown(line, LINE_LIMIT) for line in lines),
            attach=problem.screenshot,
        )

    def _resolved(self, problem: Problem, now: float) -> Alert:
        where = f" (session {problem.session})" if problem.session else ""
        took = format_duration(max(0.0, now - problem.since))
        return Alert(
            problem.event,
            problem.session,
            _shown(f"colab-gateway on {self.host}: resolved: {problem.what}", TITLE_LIMIT),
            _shown(f"Resolved{where} after {took}: {problem.what}.", LINE_LIMIT),
            resolved=True,
        )

    def _waited(self, since: float, after: float, now: float) -> bool:
        if now >= since + after:
            return True
        self._due(since + after)
        return False

    def _due(self, at: float) -> None:
        self.next_due = at if self.next_due is None else min(self.next_due, at)


def _shown(text: str, limit: int) -> str:
    """``text`` fit for a phone: redacted (before the cut, which could leave the head of a
    secret the sender's redaction no longer sees), escaped and bounded by ``untrusted``."""
    return untrusted(redact(text), limit)


def _clock(at: float | None) -> str:
    if not at:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
