"""The words components share: the facts they publish into the State, the commands they
receive from the healer.

Components never import each other; they import this. A fact or a command that is not
spelled here does not exist, so a typo is a type error (mypy) or a ``ValueError`` at the
place that made it, never a string that silently matches nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal, Protocol

from gateway.secrets import redact
from gateway.untrusted import untrusted

# How much of a text from outside the State keeps. Messages are sentences of ours that quote
# what the outside said (the quote itself is cut shorter where it is made); the renderers
# cut again to what fits their medium (the STATUS line, a phone's notification).
MESSAGE_LIMIT = 1000
BRIEF_LIMIT = 200
NAME_LIMIT = 100  # an id a page or a peer chose: a VM id, a peer's address
DETAIL_LIMIT = 1000  # each text inside a component's details


class Health(str, Enum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"  # running, but can't do all of its job; the message says why
    FAILED = "failed"  # crashed or wedged; the supervisor restarts it
    STOPPED = "stopped"

    def __str__(self) -> str:  # Python 3.12 formats a str Enum as "Health.OK" otherwise
        return self.value


class RuntimeState(str, Enum):
    """What the browser keep-alive sees of one session's Colab runtime."""

    UNKNOWN = "unknown"  # nothing read yet, or a page the keep-alive cannot place
    LOADING = "loading"
    LOAD_FAILED = "load_failed"
    SIGNED_OUT = "signed_out"  # the profile needs `colab-gateway login`
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    DIALOG = "dialog"  # a dialog is in the way (being answered)
    GPU_LIMIT = "gpu_limit"
    TOO_MANY_SESSIONS = "too_many_sessions"
    RECAPTCHA = "recaptcha"
    NEEDS_HUMAN = "needs_human"  # tried what it may; a person has to look
    PAUSED = "paused"  # `colab-gateway login` holds the browser profile
    # Colab disconnected the runtime for code disallowed in its free tier: the keep-alive
    # stopped (no reconnect, no re-run) until a person runs `colab-gateway runtime clear`.
    DISALLOWED = "disallowed"
    NO_BACKEND = "no_backend"  # "Failed to assign a backend": connecting again with backoff
    WRONG_LANGUAGE = "wrong_language"  # the page is not in English: its texts are not read

    def __str__(self) -> str:
        return self.value

    @property
    def words(self) -> str:
        """How a person reads it: ``signed out``, ``gpu limit``."""
        return self.value.replace("_", " ")


def outside_text(text: str, limit: int) -> str:
    """``text`` as the State keeps it: secrets redacted, then ``untrusted()`` (escaped, one
    line, at most ``limit`` characters). Redacting first means a cut never leaves the head
    of a secret that the renderers' redaction could no longer recognise.
    """
    # Redaction looks at a bounded head only: a 96 MiB text costs what a short one does.
    return untrusted(redact(text[: 4 * limit]), limit)


def outside_details(value: Any) -> Any:
    """A component's details with every text in them passed through ``outside_text``."""
    if isinstance(value, str):
        return outside_text(value, DETAIL_LIMIT)
    if isinstance(value, Mapping):
        return {k: outside_details(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [outside_details(v) for v in value]
    return value


class OutsideTextFields:
    """Facts whose text fields may hold what came from outside (a page's dialog title, the
    VM's stderr, a provider's answer): every field named in ``OUTSIDE_TEXT`` goes through
    ``outside_text`` whenever it is set, by the constructor, by the State's setters or by a
    reader's ``Snapshot.from_json``. One gate at the facts themselves, instead of one at
    each of the many places that publish them.
    """

    OUTSIDE_TEXT: ClassVar[Mapping[str, int]] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        limit = self.OUTSIDE_TEXT.get(name)
        if limit is not None and isinstance(value, str):
            value = outside_text(value, limit)
        super().__setattr__(name, value)


@dataclass
class ComponentStatus(OutsideTextFields):
    OUTSIDE_TEXT: ClassVar[Mapping[str, int]] = {"message": MESSAGE_LIMIT, "brief": BRIEF_LIMIT}

    name: str
    health: Health = Health.STARTING
    message: str = "starting"
    since: float = field(default_factory=time.time)  # wall clock of the last health change
    progress_at: float = field(default_factory=time.monotonic)
    brief: str = ""  # a few words for the STATUS line when all is well
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class TunnelFacts(OutsideTextFields):
    """Published by the tunnel endpoint for one session."""

    # The fingerprint is computed here from the key, and compared with sync.ready_for: not
    # outside text, and never changed by a gate.
    OUTSIDE_TEXT: ClassVar[Mapping[str, int]] = {"peer": NAME_LIMIT}

    up: bool = False
    since: float | None = None  # wall clock of the last up/down change
    peer: str | None = None
    forwards: list[int] = field(default_factory=list)  # local ports bound on 127.0.0.1
    hostkey_fingerprint: str | None = None  # of the Colab VM's sshd, as registered
    connections: int = 0


@dataclass
class RuntimeFacts(OutsideTextFields):
    """Published by the browser keep-alive for one session."""

    # message quotes the page (a dialog's title); vm_id is what the page calls its VM.
    # screenshot is a path of ours that the alerts attach: never rewritten.
    OUTSIDE_TEXT: ClassVar[Mapping[str, int]] = {"message": MESSAGE_LIMIT, "vm_id": NAME_LIMIT}

    state: RuntimeState = RuntimeState.UNKNOWN
    gpu: bool | None = None
    since: float | None = None  # wall clock of the last change of ``state``
    vm_id: str | None = None  # changes when Colab hands out a fresh VM
    message: str = ""
    screenshot: str | None = None
    last_rerun: float | None = None
    # Wall clock a dialog last appeared on the page (``state`` became DIALOG): a sign that
    # Colab may end the runtime soon. Kept after the dialog is answered, so that a reader
    # that looks only now and then still sees that one came.
    dialog_at: float | None = None
    # Colab could not assign a backend this many times in a row (0 once connected).
    no_backend_failures: int = 0


class RestoreState(str, Enum):
    """Where putting the newest snapshot back into a new VM stands."""

    IDLE = "idle"  # no new VM seen yet
    RESTORING = "restoring"
    RESUMING = "resuming"  # files are back; the resume command is being started
    DONE = "done"
    NOTHING = "nothing"  # no snapshot to restore: the VM starts empty
    FAILED = "failed"  # reported; tried again with backoff

    def __str__(self) -> str:
        return self.value


@dataclass
class SyncFacts(OutsideTextFields):
    """Published by the sync component for one session (sessions[].sync)."""

    # problem and restore_message quote rsync's and resume's stderr (the VM's words).
    OUTSIDE_TEXT: ClassVar[Mapping[str, int]] = {
        "problem": MESSAGE_LIMIT,
        "restore_message": MESSAGE_LIMIT,
        "last_pull_reason": BRIEF_LIMIT,
    }

    enabled: bool = False
    snapshots: int = 0
    disk_bytes: int = 0  # what the session's snapshots take on the Pi (hard links once)
    newest: str | None = None  # id of the newest complete snapshot
    newest_at: float | None = None  # wall clock it was taken
    pulling: bool = False
    last_pull_at: float | None = None  # wall clock a pull last completed
    last_pull_bytes: int = 0  # size of the tree it pulled
    last_pull_seconds: float = 0.0
    last_pull_reason: str = ""  # every, colab-gateway sync --now, Colab shows a dialog
    # Wall clock the last pull that ended (done, refused or failed) had started: a pull
    # asked for at T is over once this is >= T and ``pulling`` is false.
    last_attempt_at: float | None = None
    problem: str = ""  # why the last pull was refused or failed; empty when it worked
    restore: RestoreState = RestoreState.IDLE
    restore_snapshot: str | None = None
    restore_snapshot_at: float | None = None
    restore_bytes: int = 0
    restore_message: str = ""
    # The VM (its host key fingerprint) for which restore is over, done or nothing to do:
    # the tmux pane waits for this before it starts the VM's shell.
    ready_for: str | None = None
    # resume.where=window: the VM whose window should run resume.command (the pane does).
    resume_window_for: str | None = None


@dataclass
class VmFacts(OutsideTextFields):
    """Published by the vm_stats component: what the Colab VM itself reported on its last
    sample. A value the VM did not give (no GPU, garbage) is None, never 0."""

    # accelerator is the VM's word (nvidia-smi's name); problem quotes its output.
    OUTSIDE_TEXT: ClassVar[Mapping[str, int]] = {
        "accelerator": NAME_LIMIT,
        "problem": MESSAGE_LIMIT,
    }

    sampled_at: float | None = None  # wall clock of the last sample that said something
    accelerator: str | None = None  # "Tesla T4"; None on a CPU or TPU runtime
    gpus: int = 0
    gpu_utilization: float | None = None  # 0..1, the mean over the GPUs
    gpu_memory_used: int | None = None  # bytes, summed over the GPUs
    gpu_memory_total: int | None = None
    memory_used: int | None = None  # the VM's RAM in use (total - available)
    memory_total: int | None = None
    disk_used: int | None = None  # of /content
    disk_total: int | None = None
    uptime_seconds: float | None = None
    # Wall clock since which the GPU's utilisation stayed below the idle threshold.
    gpu_idle_since: float | None = None
    problem: str = ""  # why the last sample failed or was partly garbage; empty when fine


@dataclass
class SessionState:
    name: str
    tunnel: TunnelFacts = field(default_factory=TunnelFacts)
    runtime: RuntimeFacts = field(default_factory=RuntimeFacts)
    sync: SyncFacts = field(default_factory=SyncFacts)
    vm: VmFacts = field(default_factory=VmFacts)


# -- commands: the healer (or a test) asks a component to do something ---------------------


@dataclass(frozen=True)
class Command:
    """A request to one component about one session; each kind is a subclass."""

    session: str
    target: ClassVar[str]  # the component whose queue takes it


@dataclass(frozen=True)
class RerunBootstrap(Command):
    """Ask the browser keep-alive to re-run the notebook (``browser.rerun``: the bootstrap
    cell, or all cells) of ``session``, so that its tunnel dials in again."""

    reason: str  # for the log: why the healer asked

    target: ClassVar[str] = "browser"


@dataclass(frozen=True)
class SyncNow(Command):
    """Ask the sync component for a pull of ``session`` now (``colab-gateway sync --now``,
    or Colab showing signs of ending the runtime)."""

    reason: str

    target: ClassVar[str] = "sync"


# -- measures: counters and gauges components publish as events happen ---------------------


@dataclass(frozen=True)
class Measure:
    """A number a component keeps in the State (``State.count`` / ``State.gauge``); the
    metrics component exports each as ``colab_gateway_<name>``. The labels are fixed here,
    so a call with a missing or made-up label is a ``ValueError`` at the event site."""

    name: str
    kind: Literal["counter", "gauge"]
    labels: tuple[str, ...]
    help: str

    def key(self, labels: dict[str, str]) -> tuple[str, ...]:
        """The label values in declaration order; ValueError naming the labels if wrong."""
        if set(labels) != set(self.labels):
            raise ValueError(
                f"{self.name} takes the labels {list(self.labels)}, got {sorted(labels)}"
            )
        return tuple(str(labels[name]) for name in self.labels)


COMPONENT_RESTARTS = Measure(
    "component_restarts_total", "counter", ("component",), "Restarts by the supervisor"
)
RECONNECTS = Measure(
    "reconnects_total",
    "counter",
    ("session", "reason"),
    "Connect/Reconnect clicks, by what the page showed",
)
DIALOGS = Measure("dialogs_total", "counter", ("session", "kind"), "Colab dialogs answered")
RERUNS = Measure("reruns_total", "counter", ("session",), "Bootstrap re-runs")
VM_RESETS = Measure("vm_resets_total", "counter", ("session",), "Fresh VMs handed out by Colab")
TUNNEL_BYTES = Measure(
    "tunnel_bytes_total",
    "counter",
    ("session", "direction"),
    "Bytes through the forwarded ports (in: from Colab, out: to Colab)",
)
TUNNEL_REFUSED = Measure(
    "tunnel_refused_total", "counter", ("reason",), "Connections and requests refused"
)
TUNNEL_PENALISED = Measure(
    "tunnel_penalised_sources",
    "gauge",
    (),
    "Sources with a failed-login penalty on record (serving it or within penalty_max)",
)
COLAB_REFUSALS = Measure(
    "colab_refusals_total",
    "counter",
    ("session", "reason"),
    "Runtimes Colab refused: disallowed (code disallowed in the free tier: the keep-alive "
    "stops) or no_backend (Failed to assign a backend)",
)
REFUSAL_REASONS = ("disallowed", "no_backend")
BROWSER_PSS = Measure("browser_pss_bytes", "gauge", (), "Chromium's memory (PSS, all processes)")
BROWSER_RESTARTS = Measure("browser_restarts_total", "counter", ("reason",), "Chromium restarts")
DDNS_PUBLISHED = Measure(
    "ddns_published_timestamp_seconds",
    "gauge",
    ("family",),
    "When the provider last accepted or confirmed the address",
)
DDNS_ERRORS = Measure("ddns_errors_total", "counter", ("kind",), "DDNS failures by kind")

MEASURES: tuple[Measure, ...] = (
    COMPONENT_RESTARTS,
    RECONNECTS,
    DIALOGS,
    RERUNS,
    VM_RESETS,
    COLAB_REFUSALS,
    TUNNEL_BYTES,
    TUNNEL_REFUSED,
    TUNNEL_PENALISED,
    BROWSER_PSS,
    BROWSER_RESTARTS,
    DDNS_PUBLISHED,
    DDNS_ERRORS,
)


class Counters(Protocol):
    """Where a component's measures go: the State, or ``NO_COUNTERS`` in a unit test."""

    def count(self, measure: Measure, n: float = 1, /, **labels: str) -> None: ...

    def gauge(self, measure: Measure, value: float, /, **labels: str) -> None: ...


class _NoCounters:
    def count(self, measure: Measure, n: float = 1, /, **labels: str) -> None:
        measure.key(labels)

    def gauge(self, measure: Measure, value: float, /, **labels: str) -> None:
        measure.key(labels)


NO_COUNTERS: Counters = _NoCounters()
