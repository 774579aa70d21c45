"""A copy of the State at one moment, typed, and its JSON form on the status socket.

The daemon makes one with ``State.view()``; ``colab-gateway status``, the tmux pane's ssh
client and ``colab-gateway doctor`` read the socket's JSON back with ``Snapshot.from_json``,
so every reader works with the same fields instead of digging in dictionaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from gateway import status_line
from gateway.vocabulary import (
    BRIEF_LIMIT,
    MESSAGE_LIMIT,
    Health,
    Measure,
    RestoreState,
    RuntimeFacts,
    RuntimeState,
    SessionState,
    SyncFacts,
    TunnelFacts,
    VmFacts,
    outside_details,
    outside_text,
)


@dataclass(frozen=True)
class ComponentView:
    """One component's entry in a snapshot (its ``progress_at`` is the daemon's own business)."""

    name: str
    health: Health = Health.STARTING
    message: str = ""
    since: float | None = None
    brief: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A reader builds these from what the status socket said: the daemon's State has
        # gated the texts already, and the gate is idempotent, so a reader of an older
        # daemon (or of whatever answers on the socket) is just as safe.
        object.__setattr__(self, "message", outside_text(self.message, MESSAGE_LIMIT))
        object.__setattr__(self, "brief", outside_text(self.brief, BRIEF_LIMIT))
        object.__setattr__(self, "details", outside_details(self.details))


@dataclass(frozen=True)
class Snapshot:
    started_at: float
    now: float  # the daemon's wall clock when it took the snapshot
    components: dict[str, ComponentView] = field(default_factory=dict)
    sessions: dict[str, SessionState] = field(default_factory=dict)
    # The components' counters and gauges: label values (in the measure's order) -> value.
    # The daemon's own business, like progress_at: not on the status socket.
    measures: dict[Measure, dict[tuple[str, ...], float]] = field(default_factory=dict)

    @property
    def health(self) -> Health:
        """The worst health of any component."""
        healths = {c.health for c in self.components.values()}
        for worst in (Health.FAILED, Health.DEGRADED, Health.STARTING):
            if worst in healths:
                return worst
        return Health.OK

    @property
    def summary(self) -> str:
        return status_line.summary(self)

    def runs(self, component: str) -> bool:
        return component in self.components

    def to_json(self) -> dict[str, Any]:
        return {
            "health": self.health.value,
            "summary": self.summary,
            "started_at": self.started_at,
            "now": self.now,
            "components": {
                name: {
                    "health": c.health.value,
                    "message": c.message,
                    "since": c.since,
                    "brief": c.brief,
                    "details": jsonable(c.details),
                }
                for name, c in sorted(self.components.items())
            },
            "sessions": {name: jsonable(asdict(s)) for name, s in self.sessions.items()},
        }

    @classmethod
    def from_json(cls, data: object) -> Snapshot:
        """Read what the status socket sent; ``ValueError`` naming the field if malformed.

        Missing fields take their defaults: a reader of one version understands a daemon
        of a slightly older one.
        """
        top = _mapping(data, "the snapshot")
        now = _number(top.get("now", 0.0), "now")
        components = {
            str(name): _component(str(name), value)
            for name, value in _mapping(top.get("components", {}), "components").items()
        }
        sessions = {
            str(name): _session(str(name), value)
            for name, value in _mapping(top.get("sessions", {}), "sessions").items()
        }
        return cls(
            started_at=_number(top.get("started_at", now), "started_at"),
            now=now,
            components=components,
            sessions=sessions,
        )


def jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} is {type(value).__name__}, not an object")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {value!r}, not a number")
    return float(value)


def _optional_number(value: object, what: str) -> float | None:
    return None if value is None else _number(value, what)


def _optional_text(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{what} is {value!r}, not text")


def _text(value: object, what: str) -> str:
    return _optional_text(value, what) or ""


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} is {value!r}, not true or false")
    return value


def _optional_flag(value: object, what: str) -> bool | None:
    return None if value is None else _flag(value, what)


def _enum(
    kind: type[Health] | type[RuntimeState] | type[RestoreState], value: object, what: str
) -> Any:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(m.value for m in kind)
        raise ValueError(f"{what} is {value!r}, not one of {known}") from None


def _component(name: str, value: object) -> ComponentView:
    raw = _mapping(value, f"component {name!r}")
    where = f"components.{name}"
    return ComponentView(
        name=name,
        health=_enum(Health, raw.get("health", "starting"), f"{where}.health"),
        message=_text(raw.get("message"), f"{where}.message"),
        since=_optional_number(raw.get("since"), f"{where}.since"),
        brief=_text(raw.get("brief"), f"{where}.brief"),
        details=dict(_mapping(raw.get("details", {}), f"{where}.details")),
    )


def _session(name: str, value: object) -> SessionState:
    raw = _mapping(value, f"session {name!r}")
    where = f"sessions.{name}"
    tunnel = _mapping(raw.get("tunnel", {}), f"{where}.tunnel")
    runtime = _mapping(raw.get("runtime", {}), f"{where}.runtime")
    forwards = tunnel.get("forwards", [])
    if not isinstance(forwards, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in forwards
    ):
        raise ValueError(f"{where}.tunnel.forwards is {forwards!r}, not a list of ports")
    connections = tunnel.get("connections", 0)
    if isinstance(connections, bool) or not isinstance(connections, int):
        raise ValueError(f"{where}.tunnel.connections is {connections!r}, not a count")
    return SessionState(
        name=name,
        tunnel=TunnelFacts(
            up=_flag(tunnel.get("up", False), f"{where}.tunnel.up"),
            since=_optional_number(tunnel.get("since"), f"{where}.tunnel.since"),
            peer=_optional_text(tunnel.get("peer"), f"{where}.tunnel.peer"),
            forwards=list(forwards),
            hostkey_fingerprint=_optional_text(
                tunnel.get("hostkey_fingerprint"), f"{where}.tunnel.hostkey_fingerprint"
            ),
            connections=connections,
        ),
        runtime=RuntimeFacts(
            state=_enum(RuntimeState, runtime.get("state", "unknown"), f"{where}.runtime.state"),
            gpu=_optional_flag(runtime.get("gpu"), f"{where}.runtime.gpu"),
            since=_optional_number(runtime.get("since"), f"{where}.runtime.since"),
            vm_id=_optional_text(runtime.get("vm_id"), f"{where}.runtime.vm_id"),
            message=_text(runtime.get("message"), f"{where}.runtime.message"),
            screenshot=_optional_text(runtime.get("screenshot"), f"{where}.runtime.screenshot"),
            last_rerun=_optional_number(runtime.get("last_rerun"), f"{where}.runtime.last_rerun"),
            dialog_at=_optional_number(runtime.get("dialog_at"), f"{where}.runtime.dialog_at"),
            no_backend_failures=_count(
                runtime.get("no_backend_failures", 0), f"{where}.runtime.no_backend_failures"
            ),
        ),
        sync=_sync(_mapping(raw.get("sync", {}), f"{where}.sync"), f"{where}.sync"),
        vm=_vm(_mapping(raw.get("vm", {}), f"{where}.vm"), f"{where}.vm"),
    )


def _vm(raw: Mapping[str, Any], where: str) -> VmFacts:
    def number(key: str) -> float | None:
        return _optional_number(raw.get(key), f"{where}.{key}")

    def count(key: str) -> int | None:
        value = raw.get(key)
        return None if value is None else _count(value, f"{where}.{key}")

    return VmFacts(
        sampled_at=number("sampled_at"),
        accelerator=_optional_text(raw.get("accelerator"), f"{where}.accelerator"),
        gpus=_count(raw.get("gpus", 0), f"{where}.gpus"),
        gpu_utilization=number("gpu_utilization"),
        gpu_memory_used=count("gpu_memory_used"),
        gpu_memory_total=count("gpu_memory_total"),
        memory_used=count("memory_used"),
        memory_total=count("memory_total"),
        disk_used=count("disk_used"),
        disk_total=count("disk_total"),
        uptime_seconds=number("uptime_seconds"),
        gpu_idle_since=number("gpu_idle_since"),
        problem=_text(raw.get("problem"), f"{where}.problem"),
    )


def _count(value: object, what: str) -> int:
    number = _number(value, what)
    if number != int(number) or number < 0:
        raise ValueError(f"{what} is {value!r}, not a count")
    return int(number)


def _sync(raw: Mapping[str, Any], where: str) -> SyncFacts:
    return SyncFacts(
        enabled=_flag(raw.get("enabled", False), f"{where}.enabled"),
        snapshots=_count(raw.get("snapshots", 0), f"{where}.snapshots"),
        disk_bytes=_count(raw.get("disk_bytes", 0), f"{where}.disk_bytes"),
        newest=_optional_text(raw.get("newest"), f"{where}.newest"),
        newest_at=_optional_number(raw.get("newest_at"), f"{where}.newest_at"),
        pulling=_flag(raw.get("pulling", False), f"{where}.pulling"),
        last_pull_at=_optional_number(raw.get("last_pull_at"), f"{where}.last_pull_at"),
        last_pull_bytes=_count(raw.get("last_pull_bytes", 0), f"{where}.last_pull_bytes"),
        last_pull_seconds=_number(raw.get("last_pull_seconds", 0.0), f"{where}.last_pull_seconds"),
        last_pull_reason=_text(raw.get("last_pull_reason"), f"{where}.last_pull_reason"),
        last_attempt_at=_optional_number(raw.get("last_attempt_at"), f"{where}.last_attempt_at"),
        problem=_text(raw.get("problem"), f"{where}.problem"),
        restore=_enum(RestoreState, raw.get("restore", "idle"), f"{where}.restore"),
        restore_snapshot=_optional_text(raw.get("restore_snapshot"), f"{where}.restore_snapshot"),
        restore_snapshot_at=_optional_number(
            raw.get("restore_snapshot_at"), f"{where}.restore_snapshot_at"
        ),
        restore_bytes=_count(raw.get("restore_bytes", 0), f"{where}.restore_bytes"),
        restore_message=_text(raw.get("restore_message"), f"{where}.restore_message"),
        ready_for=_optional_text(raw.get("ready_for"), f"{where}.ready_for"),
        resume_window_for=_optional_text(
            raw.get("resume_window_for"), f"{where}.resume_window_for"
        ),
    )
