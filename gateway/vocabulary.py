"""The words components share: the facts they publish into the State, the commands they
receive from the healer.

Components never import each other; they import this. A fact or a command that is not
spelled here does not exist, so a typo is a type error (mypy) or a ``ValueError`` at the
place that made it, never a string that silently matches nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar


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

    def __str__(self) -> str:
        return self.value

    @property
    def words(self) -> str:
        """How a person reads it: ``signed out``, ``gpu limit``."""
        return self.value.replace("_", " ")


@dataclass
class ComponentStatus:
    name: str
    health: Health = Health.STARTING
    message: str = "starting"
    since: float = field(default_factory=time.time)  # wall clock of the last health change
    progress_at: float = field(default_factory=time.monotonic)
    brief: str = ""  # a few words for the STATUS line when all is well
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class TunnelFacts:
    """Published by the tunnel endpoint for one session."""

    up: bool = False
    since: float | None = None  # wall clock of the last up/down change
    peer: str | None = None
    forwards: list[int] = field(default_factory=list)  # local ports bound on 127.0.0.1
    hostkey_fingerprint: str | None = None  # of the Colab VM's sshd, as registered
    connections: int = 0


@dataclass
class RuntimeFacts:
    """Published by the browser keep-alive for one session."""

    state: RuntimeState = RuntimeState.UNKNOWN
    gpu: bool | None = None
    since: float | None = None  # wall clock of the last change of ``state``
    vm_id: str | None = None  # changes when Colab hands out a fresh VM
    message: str = ""
    screenshot: str | None = None
    last_rerun: float | None = None


@dataclass
class SessionState:
    name: str
    tunnel: TunnelFacts = field(default_factory=TunnelFacts)
    runtime: RuntimeFacts = field(default_factory=RuntimeFacts)


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
