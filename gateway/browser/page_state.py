"""What the notebook page shows, and what to do about it: pure functions, no browser.

``classify`` turns the raw facts ``colab_dom.PROBE_JS`` read from the page into a
``PageView``; a ``SessionMachine`` (one per session) turns successive views into a
``Decision``: the state to publish, how healthy that is, and the clicks to make. Keeping
this free of Selenium makes every rule testable with plain dictionaries.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gateway.backoff import Backoff
from gateway.browser.colab_dom import contains_any
from gateway.config import BrowserConfig
from gateway.untrusted import quoted, untrusted
from gateway.vocabulary import RuntimeState

Kind = Literal[
    "loading",
    "load_failed",
    "signed_out",
    "recaptcha",
    "disallowed",
    "no_backend",
    "gpu_limit",
    "too_many_sessions",
    "still_there",
    "runtime_disconnected",
    "run_anyway",
    "connected",
    "connecting",
    "disconnected",
    "wrong_language",
    "unknown",
]

# What one open dialog is. The first kinds are page kinds (the dialog decides what the page
# needs); ``gpu_idle`` and ``unknown`` are dialogs the keep-alive closes, never answers.
DialogKind = Literal[
    "signed_out",
    "disallowed",
    "no_backend",
    "gpu_limit",
    "too_many_sessions",
    "runtime_disconnected",
    "still_there",
    "run_anyway",
    "gpu_idle",
    "unknown",
]

# Which open dialog the page is about when several are (Colab stacks them, newest on top):
# whatever stops the keep-alive first, then a disconnect, then the prompts it answers.
DIALOG_PRIORITY: tuple[DialogKind, ...] = (
    "signed_out",
    "disallowed",
    "no_backend",
    "gpu_limit",
    "too_many_sessions",
    "runtime_disconnected",
    "still_there",
    "run_anyway",
)

# Kinds worth a screenshot when they begin (evidence for a person reading the status).
ANOMALIES = frozenset(
    {
        "load_failed",
        "signed_out",
        "recaptcha",
        "disallowed",
        "no_backend",
        "gpu_limit",
        "too_many_sessions",
        "still_there",
        "runtime_disconnected",
        "wrong_language",
        "unknown",
        "needs_human",
    }
)


# The page is outside text: a hostile page, or Colab in another language, writes whatever
# it likes into a dialog's title, the URL, the button's tooltip, the VM id. What the
# classifier hands on is escaped and bounded (a dialog title goes into phone messages).
TITLE_LIMIT = 120
DETAIL_LIMIT = 300
VM_ID_LIMIT = 80
BUTTON_LIMIT = 40
BUTTONS_SHOWN = 6
RAW_TITLE_LIMIT = 200  # the title as the page has it: the close script finds the dialog by it

# Words Colab's connect button shows in languages other than English. A page whose
# ``lang`` says English but whose button says one of these speaks another language all
# the same (an account setting the ``hl=en`` URL parameter did not override).
OTHER_LANGUAGE_WORDS = frozenset(
    {
        "conectar",  # pt, es
        "reconectar",
        "conectando",
        "connecter",  # fr
        "reconnecter",
        "verbinden",  # de
        "connetti",  # it
        "riconnetti",
        "połącz",  # pl
        "подключиться",  # ru
        "bağlan",  # tr
        "接続",  # ja
        "再接続",
        "연결",  # ko
        "连接",  # zh
        "連線",
    }
)


@dataclass(frozen=True)
class DialogInfo:
    """One open dialog as a person reads it (escaped), and how the page names it (raw)."""

    index: int  # among the open dialogs, in document order (newest on top = last)
    kind: DialogKind
    title: str  # escaped, for the status and phone messages
    buttons: tuple[str, ...] = ()  # escaped texts, in the page's order
    raw_title: str = ""  # as the page has it, bounded: the close script matches it

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """The same dialog from one look to the next (its index may change)."""
        return (self.title, self.buttons)

    @property
    def words(self) -> str:
        """``"Upgrade to Pro" [No thanks | Upgrade]``"""
        buttons = " | ".join(self.buttons) if self.buttons else "no buttons"
        return f"{quoted(self.title or '(no title)', TITLE_LIMIT)} [{buttons}]"


@dataclass(frozen=True)
class PageView:
    kind: Kind
    gpu: bool | None = None
    busy: bool = False
    dialog_index: int = 0
    vm_id: str | None = None
    detail: str = ""  # what a person should read: a dialog's title, the URL…
    # Open dialogs the keep-alive closes rather than answers: the GPU-idle notice and
    # every dialog it does not know. They never decide ``kind``: the page is looked at past
    # them, and a disconnect behind one is answered as if it were not there.
    others: tuple[DialogInfo, ...] = ()
    language: str = ""  # the page's language when it is not English ("pt"), else ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", untrusted(self.detail, DETAIL_LIMIT))
        object.__setattr__(self, "language", untrusted(self.language, 40))
        if self.vm_id is not None:
            object.__setattr__(self, "vm_id", untrusted(self.vm_id, VM_ID_LIMIT))


def dialog_kind(dialog: dict[str, Any], sel: dict[str, str]) -> DialogKind:
    """What one open dialog (as PROBE_JS reports it) is, from its texts."""
    title = str(dialog.get("title") or "")
    text = f"{title}\n{dialog.get('text') or ''}"
    buttons = " | ".join(str(b.get("text") or "") for b in _buttons(dialog))
    if contains_any(f"{text}\n{dialog.get('classes') or ''}", sel["text_signed_out_dialog"]):
        return "signed_out"
    # A disallowed-code disconnect is a "Runtime disconnected" too: it must win.
    for kind, key in (
        ("disallowed", "text_disallowed"),
        ("no_backend", "text_no_backend"),
        ("gpu_limit", "text_gpu_limit"),
        ("too_many_sessions", "text_too_many_sessions"),
        ("gpu_idle", "text_gpu_idle"),
        ("still_there", "text_still_there"),
        ("runtime_disconnected", "text_runtime_disconnected"),
    ):
        if contains_any(text, sel[key]):
            return kind  # type: ignore[return-value]
    if contains_any(buttons, sel["text_run_anyway"]):
        return "run_anyway"
    if contains_any(buttons, sel["text_reconnect"]):
        return "runtime_disconnected"
    return "unknown"


def _buttons(dialog: dict[str, Any]) -> list[dict[str, Any]]:
    buttons = dialog.get("buttons") or []
    return [b for b in buttons if isinstance(b, dict)] if isinstance(buttons, list) else []


def _dialog_info(index: int, dialog: dict[str, Any], kind: DialogKind) -> DialogInfo:
    title = str(dialog.get("title") or "")
    # What a person reads (a phone message may quote it): the title, else the text.
    shown = untrusted(title or str(dialog.get("text") or ""), TITLE_LIMIT)
    buttons = tuple(untrusted(b.get("text") or "", BUTTON_LIMIT) for b in _buttons(dialog))
    return DialogInfo(index, kind, shown, buttons[:BUTTONS_SHOWN], title[:RAW_TITLE_LIMIT])


def page_language(probe: dict[str, Any]) -> str:
    """The page's language when it is not English (its ``lang``), else ""."""
    lang = str(probe.get("lang") or "").strip()
    if not lang or lang.lower() == "en" or lang.lower().startswith("en-"):
        return ""
    return lang


def classify(probe: dict[str, Any], sel: dict[str, str]) -> PageView:
    """What the page is about: every open dialog and the connect button are looked at; the
    dialog that matters most decides (``DIALOG_PRIORITY``), dialogs the keep-alive does not
    answer ride along in ``others``, and without a dialog that matters the connect button
    decides."""
    url = str(probe.get("url") or "")
    vm_id = str(probe.get("vm_id") or "") or None
    if probe.get("error_page"):
        return PageView("load_failed", detail=f"the browser could not load {url}")
    language = page_language(probe)
    connect = probe.get("connect")
    raw = probe.get("dialogs")
    dialogs = [d for d in raw if isinstance(d, dict)] if isinstance(raw, list) else []
    infos = [_dialog_info(i, d, dialog_kind(d, sel)) for i, d in enumerate(dialogs)]
    others = tuple(d for d in infos if d.kind in ("gpu_idle", "unknown"))
    if (
        re.search(sel["signed_out_url"], url)
        or probe.get("signed_out_element")
        or any(d.kind == "signed_out" for d in infos)
        or (connect is None and contains_any(probe.get("body_excerpt"), sel["text_signed_out"]))
    ):
        return PageView("signed_out", detail=url)
    if probe.get("recaptcha"):
        return PageView("recaptcha", detail="reCAPTCHA prompt", others=others, language=language)
    for kind in DIALOG_PRIORITY:
        found = next((d for d in infos if d.kind == kind), None)
        if found is not None:
            return PageView(
                kind,  # type: ignore[arg-type]
                dialog_index=found.index,
                detail=_dialog_detail(found, dialogs[found.index]),
                others=others,
                language=language,
            )
    view = _connect_view(connect, probe, sel, vm_id, language)
    return replace(view, others=others)


def _dialog_detail(info: DialogInfo, dialog: dict[str, Any]) -> str:
    """The title, and for a disconnect with a reason, the reason (Colab's own words)."""
    if info.kind in ("disallowed", "no_backend"):
        text = " ".join(str(dialog.get("text") or "").split())
        return text or info.title
    return info.title


def _connect_view(
    connect: Any, probe: dict[str, Any], sel: dict[str, str], vm_id: str | None, language: str
) -> PageView:
    url = str(probe.get("url") or "")
    if not isinstance(connect, dict):
        return PageView("loading", detail=url, language=language)
    tooltip = str(connect.get("tooltip") or "")
    label = str(connect.get("text") or "")
    running = bool(probe.get("running"))
    if contains_any(tooltip, sel["text_connected"]):
        return PageView(
            "connected",
            gpu=contains_any(tooltip, sel["text_gpu"]),
            busy=running,
            vm_id=vm_id,
            language=language,
        )
    if contains_any(tooltip, sel["text_busy"]):
        return PageView("connected", busy=True, vm_id=vm_id, language=language)
    if connect.get("disabled") or contains_any(f"{tooltip}\n{label}", sel["text_connecting"]):
        return PageView("connecting", language=language)
    if contains_any(tooltip, sel["text_needs_connect"]) or label.strip().lower() in (
        "connect",
        "reconnect",
    ):
        return PageView("disconnected", detail=tooltip, language=language)
    words = f"connect button says {quoted(label, 60)} / {quoted(tooltip, 120)}"
    first_word = (label.split() or [""])[0].lower()
    if language or first_word in OTHER_LANGUAGE_WORDS:
        return PageView("wrong_language", detail=words, language=language or "not English")
    return PageView("unknown", detail=words)


@dataclass(frozen=True)
class Action:
    """One thing to do on the page."""

    name: Literal["click_connect", "click_dialog", "close_dialog", "dismiss_recaptcha", "reload"]
    dialog_index: int = 0
    button: str = ""  # '|'-separated texts; "" = the dialog's primary button
    why: str = ""
    fallback_primary: bool = False  # no button with that text: click the primary one
    # close_dialog: the dialog's title as the page has it (its index may have moved), and
    # what it is ("gpu_idle", "unknown", or the page kind whose dialog is closed).
    title: str = ""
    dialog_kind: str = ""


# The keep-alive's clicks that a dialog on top of the page can hide from a person's eyes:
# a dialog the keep-alive does not answer is closed first when one of these is due.
_HIDDEN_BY_DIALOGS = ("click_connect", "click_dialog", "dismiss_recaptcha")


@dataclass(frozen=True)
class Decision:
    state: RuntimeState
    message: str
    healthy: bool
    gpu: bool | None
    vm_id: str | None
    actions: tuple[Action, ...] = ()
    anomaly: str | None = None  # set when an anomaly begins: time for evidence
    # Colab refused the runtime on this look (counted once per refusal): "disallowed",
    # "no_backend", or None.
    refusal: str | None = None
    no_backend_failures: int = 0  # Colab could not assign a backend this often in a row
    new_dialogs: tuple[DialogInfo, ...] = ()  # closable dialogs seen for the first time


@dataclass
class Settings:
    """The browser section of the config (limits, waits, what to do at the GPU limit), and
    two timings of the page machine's own."""

    browser: BrowserConfig = field(default_factory=BrowserConfig)
    click_retry: float = 3.0  # the same click again only if the page did not react
    # After a (re)load, Colab shows "Connect" for a moment before it reattaches the runtime
    # it already has; a click then would be a click on a connected runtime.
    settle: float = 2.0


# "Failed to assign a backend": connecting again at once does not help. The n-th refusal
# in a row waits 30 s doubling to 30 min before the next Connect click.
NO_BACKEND_FIRST, NO_BACKEND_CEILING = 30.0, 1800.0


@dataclass(frozen=True)
class Stopped:
    """Colab disconnected the runtime for code disallowed in its free tier: the keep-alive
    stays away from the runtime until a person clears it (``colab-gateway runtime clear``)."""

    since: float  # wall clock
    detail: str = ""  # Colab's words, escaped

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", untrusted(self.detail, DETAIL_LIMIT))


def disallowed_message(session: str, detail: str = "") -> str:
    """What the status says while the session is stopped: what happened, what to do."""
    quote = f" Colab said: {quoted(detail, 200)}" if detail else ""
    return (
        "Colab disconnected the runtime for code that is disallowed in its free tier; the "
        "gateway stopped (no reconnect, no re-run: doing it again puts the account at risk). "
        "Get a paid Colab plan or remove that code from the notebook, then run "
        f"colab-gateway runtime clear {session}.{quote}"
    )


@dataclass
class SessionMachine:
    """The keep-alive's memory of one session's page between two looks at it."""

    sel: dict[str, str]
    settings: Settings = field(default_factory=Settings)
    kind: str = "unknown"
    kind_since: float = 0.0
    loaded_at: float = 0.0  # last navigation/reload
    gpu: bool | None = None
    vm_id: str | None = None
    hold_until: float = 0.0  # no connect clicks before this (GPU limit, too many sessions)
    hold_reason: str = ""
    hold_kind: RuntimeState = RuntimeState.GPU_LIMIT  # the page kind that set the hold
    last_state: RuntimeState = RuntimeState.UNKNOWN
    # A page that fails to load is reloaded after 5 s, doubling per failure, up to 10 min.
    reload_backoff: Backoff = field(default_factory=lambda: Backoff(5.0, 600.0))
    # Colab could not assign a backend: the next Connect waits longer after each refusal.
    no_backend_backoff: Backoff = field(
        default_factory=lambda: Backoff(NO_BACKEND_FIRST, NO_BACKEND_CEILING)
    )
    session: str = "colab"  # for the words a person reads (the clear command names it)
    stopped: Stopped | None = None  # disallowed code: nothing is clicked until cleared
    _vm_counter: int = 0
    _connect_clicked: bool = False  # since the runtime was last seen connected
    _settled: bool = False  # the page has shown a runtime since it was loaded
    _recaptchas: deque[float] = field(default_factory=deque)
    _last_click: dict[str, float] = field(default_factory=dict)
    _began: bool = False  # the page's kind changed on this look
    # Closable dialogs (GPU-idle notice, unknown ones) by key: when each was first seen.
    _others_seen: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    # A person cleared a stop while Colab's disallowed dialog was still open: that dialog is
    # closed, not taken for a new refusal.
    _cleared_dialog_open: bool = False

    def page_loaded(self, now: float) -> None:
        self.loaded_at = now
        self._settled = False
        self.kind = "loading"
        self.kind_since = now
        self._last_click.clear()
        self._others_seen.clear()

    def reload_due(self, now: float) -> bool:
        return now - self.loaded_at >= self.settings.browser.reload_every

    def wake_in(self, now: float) -> float | None:
        """Seconds until this machine has something to do without the page changing: a
        hold on Connect ends, an unknown dialog's grace is over. None: nothing due."""
        due = [self.hold_until] if self.hold_until > now else []
        grace = float(self.settings.browser.unknown_dialog_grace)
        # (a grace already over is not due again: a dialog that will not close is retried
        # on the looks the page's changes or poll_every bring, not in a tight loop)
        due += [t for t in (f + grace for f in self._others_seen.values()) if t > now]
        return max(0.0, min(due) - now) if due else None

    def stop(self, stopped: Stopped) -> None:
        """Stopped for disallowed code (a restart reads it back from the state directory)."""
        self.stopped = stopped

    def clear_stop(self) -> None:
        """A person cleared the stop: connect again, closing the old dialog if it is open."""
        if self.stopped is not None:
            self.stopped = None
            self._cleared_dialog_open = True
            self._last_click.clear()

    def step(self, view: PageView, now: float) -> Decision:
        if view.kind in ("connected", "connecting"):
            self._settled = True
        began = view.kind != self.kind
        self._began = began
        if began:
            self.kind, self.kind_since = view.kind, now
            # The page moved on: a click now answers a new situation, not a repeat of one
            # the page ignored.
            self._last_click.clear()
        if view.kind != "disallowed":
            self._cleared_dialog_open = False
        decision: Decision
        if self.stopped is not None and view.kind != "disallowed":
            decision = self._stopped_decision()
        else:
            decision = getattr(self, f"_on_{view.kind}")(view, now)
            if self.stopped is None:
                decision = self._with_others(view, decision, now)
        needs_human = RuntimeState.NEEDS_HUMAN
        if decision.state == needs_human and self.last_state != needs_human:
            decision = replace(decision, anomaly="needs_human")
        elif began and view.kind in ANOMALIES:
            decision = replace(decision, anomaly=view.kind)
        elif decision.new_dialogs and decision.anomaly is None:
            decision = replace(decision, anomaly="unknown_dialog")
        decision = replace(decision, no_backend_failures=self.no_backend_backoff.failures)
        self.last_state = decision.state
        return decision

    # -- dialogs the keep-alive closes --------------------------------------------------------

    def _with_others(self, view: PageView, decision: Decision, now: float) -> Decision:
        """Look past the GPU-idle notice and unknown dialogs: the decision stands as if they
        were not there. Each is recorded the first time it is seen, and closed (secondary
        or close button, else Escape; never the primary action) at once for the GPU-idle
        notice, after ``unknown_dialog_grace`` for an unknown one, or at once when it is on
        top of something the decision has to click."""
        seen = {d.key for d in view.others}
        for key in [k for k in self._others_seen if k not in seen]:
            del self._others_seen[key]
        new = tuple(d for d in view.others if d.key not in self._others_seen)
        for dialog in new:
            self._others_seen[dialog.key] = now
        if not view.others:
            return decision
        quiet = decision.state in (
            RuntimeState.SIGNED_OUT,
            RuntimeState.NEEDS_HUMAN,
            RuntimeState.DISALLOWED,
        )
        grace = float(self.settings.browser.unknown_dialog_grace)
        clicks = [a for a in decision.actions if a.name in _HIDDEN_BY_DIALOGS]
        closes: list[Action] = []
        notes: list[str] = []
        for dialog in sorted(view.others, key=lambda d: d.index, reverse=True):
            first = self._others_seen[dialog.key]
            hides = any(a.name != "click_dialog" or dialog.index > a.dialog_index for a in clicks)
            due = dialog.kind == "gpu_idle" or now - first >= grace or hides
            if dialog.kind == "gpu_idle":
                notes.append(
                    "closing Colab's notice that the GPU is not used (never its switch to CPU)"
                )
            elif due:
                why = (
                    "it hides what the keep-alive has to click"
                    if hides
                    else (f"open for {now - first:.0f}s")
                )
                notes.append(f"closing an unknown dialog {dialog.words} ({why})")
            else:
                notes.append(
                    f"an unknown dialog {dialog.words} is open; closing it in "
                    f"{max(0.0, first + grace - now):.0f}s unless it goes away"
                )
            if due and not quiet and self._may_click(f"close:{dialog.key}", now):
                closes.append(
                    Action(
                        "close_dialog",
                        dialog.index,
                        self.sel["text_close"],
                        f"close {dialog.words}",
                        title=dialog.raw_title,
                        dialog_kind=dialog.kind,
                    )
                )
        unknown = any(d.kind == "unknown" for d in view.others)
        return replace(
            decision,
            message="; ".join([decision.message, *notes]),
            healthy=decision.healthy and not unknown,
            actions=(*closes, *decision.actions),
            new_dialogs=new,
        )

    # -- helpers ------------------------------------------------------------------------------

    def _may_click(self, key: str, now: float) -> bool:
        last = self._last_click.get(key)
        if last is not None and now - last < self.settings.click_retry:
            return False
        self._last_click[key] = now
        return True

    def _decision(
        self, state: RuntimeState, message: str, healthy: bool, *actions: Action | None
    ) -> Decision:
        return Decision(
            state=state,
            message=message,
            healthy=healthy,
            gpu=self.gpu,
            vm_id=self.vm_id,
            actions=tuple(a for a in actions if a is not None),
        )

    def _connect_action(self, now: float, action: Action) -> Action | None:
        if now < self.hold_until:
            return None
        if not self._may_click("connect", now):
            return None
        self._connect_clicked = True
        return action

    def _reload_with_backoff(self, now: float, why: str) -> Action | None:
        if now - self.loaded_at < self.reload_backoff.upcoming:
            return None
        self.reload_backoff.failure()
        return Action("reload", why=why)

    def _close(self, view: PageView, why: str) -> Action:
        """Close the dialog the page is about: its secondary/close button, else Escape."""
        return Action(
            "close_dialog", view.dialog_index, self.sel["text_close"], why, dialog_kind=view.kind
        )

    # -- one method per kind ------------------------------------------------------------------

    def _on_connected(self, view: PageView, now: float) -> Decision:
        self.reload_backoff.reset()
        self.no_backend_backoff.reset()
        if view.gpu is not None:
            self.gpu = view.gpu
        if view.vm_id:
            self.vm_id = view.vm_id
        elif self._connect_clicked or self.vm_id is None:
            # Real Colab does not show which VM it assigned. Heuristic: a runtime that
            # becomes connected after WE clicked Connect/Reconnect from a disconnected state
            # is a fresh VM (Colab recycles an idle runtime's VM); a page that comes up
            # already connected (after a reload or a browser restart) kept its VM.
            self._vm_counter += 1
            self.vm_id = f"vm-{int(now)}-{self._vm_counter}"
        self._connect_clicked = False
        self.hold_until = 0.0
        busy = " (running a cell)" if view.busy else ""
        gpu = " with GPU" if self.gpu else " without GPU"
        return self._decision(
            RuntimeState.CONNECTED, f"connected{gpu}{busy}{_language_note(view)}", True
        )

    def _on_connecting(self, view: PageView, now: float) -> Decision:
        if now - self.kind_since > self.settings.browser.connect_timeout:
            self.kind_since = now
            return self._decision(
                RuntimeState.CONNECTING,
                "stuck connecting; reloading the page",
                False,
                Action("reload", why="connecting took too long"),
            )
        return self._decision(RuntimeState.CONNECTING, "connecting to a Colab runtime", True)

    def settling(self, now: float) -> bool:
        """Just after a load the page shows "Connect" until it has reconnected by itself;
        once it has shown a runtime (connecting or connected), a "Connect" is real."""
        return not self._settled and now - self.loaded_at < self.settings.settle

    def _on_disconnected(self, view: PageView, now: float) -> Decision:
        if now < self.hold_until:
            return self._decision(self._hold_state(), self._hold_message(now), False)
        if self.settling(now):
            return self._decision(
                RuntimeState.LOADING, "waiting for the page to reconnect by itself", True
            )
        action = self._connect_action(now, Action("click_connect", why="runtime not connected"))
        return self._decision(
            RuntimeState.DISCONNECTED, "runtime disconnected; connecting", True, action
        )

    def _on_runtime_disconnected(self, view: PageView, now: float) -> Decision:
        if now < self.hold_until:
            return self._decision(self._hold_state(), self._hold_message(now), False)
        action = None
        if self._may_click("dialog_reconnect", now):
            self._connect_clicked = True
            action = Action(
                "click_dialog",
                view.dialog_index,
                self.sel["text_reconnect"],
                "reconnect",
                fallback_primary=True,
            )
        return self._decision(
            RuntimeState.DISCONNECTED,
            "Colab says the runtime disconnected; reconnecting",
            True,
            action,
        )

    def _on_disallowed(self, view: PageView, now: float) -> Decision:
        if self._cleared_dialog_open:
            # The dialog a person already cleared: close it and connect again.
            action = None
            if self._may_click("close_cleared", now):
                action = self._close(view, "close the disallowed-code notice")
            return self._decision(
                RuntimeState.DISCONNECTED,
                "cleared by a person: closing Colab's disallowed-code notice and connecting",
                True,
                action,
            )
        if self.stopped is not None:
            return self._stopped_decision()
        self.stopped = Stopped(now, view.detail)
        return replace(self._stopped_decision(), refusal="disallowed")

    def _stopped_decision(self) -> Decision:
        """Stopped: whatever the page shows, nothing is clicked (no reconnect, no closing of
        dialogs) and the status says what to do."""
        detail = self.stopped.detail if self.stopped is not None else ""
        return self._decision(
            RuntimeState.DISALLOWED, disallowed_message(self.session, detail), False
        )

    def _on_no_backend(self, view: PageView, now: float) -> Decision:
        refusal = None
        if self._began:
            # One refusal per dialog: it stays open until closed, and is seen on many looks.
            wait = self.no_backend_backoff.failure()
            self.hold_until = now + wait
            self.hold_kind = RuntimeState.NO_BACKEND
            self.hold_reason = f"Colab could not assign a backend ({quoted(view.detail, 160)})"
            refusal = "no_backend"
        action = None
        if self._may_click("no_backend", now):
            action = self._close(view, "close 'Failed to assign a backend'")
        decision = self._decision(RuntimeState.NO_BACKEND, self._hold_message(now), False, action)
        return replace(decision, refusal=refusal)

    def _on_still_there(self, view: PageView, now: float) -> Decision:
        action = None
        if self._may_click("still_there", now):
            action = Action("click_dialog", view.dialog_index, "", "answer 'Are you still there?'")
        return self._decision(RuntimeState.DIALOG, "answering 'Are you still there?'", True, action)

    def _on_run_anyway(self, view: PageView, now: float) -> Decision:
        action = None
        if self._may_click("run_anyway", now):
            action = Action(
                "click_dialog", view.dialog_index, self.sel["text_run_anyway"], "run anyway"
            )
        return self._decision(RuntimeState.DIALOG, "accepting 'Run anyway'", True, action)

    def _on_gpu_limit(self, view: PageView, now: float) -> Decision:
        if self.settings.browser.on_gpu_limit == "connect_without_gpu":
            action = None
            if self._may_click("gpu_limit", now):
                self._connect_clicked = True
                action = Action(
                    "click_dialog",
                    view.dialog_index,
                    self.sel["text_connect_without_gpu"],
                    "GPU usage limit: connect without GPU",
                )
            return self._decision(
                RuntimeState.GPU_LIMIT,
                "Colab's GPU usage limit is reached: connecting without GPU",
                False,
                action,
            )
        self._hold(now, "GPU usage limit reached")
        action = None
        if self._may_click("gpu_limit", now):
            action = Action("click_dialog", view.dialog_index, self.sel["text_close"], "close")
        return self._decision(RuntimeState.GPU_LIMIT, self._hold_message(now), False, action)

    def _on_too_many_sessions(self, view: PageView, now: float) -> Decision:
        self._hold(
            now,
            "Colab says there are too many active sessions: end the others (Runtime → "
            "Manage sessions)",
        )
        action = None
        if self._may_click("too_many", now):
            action = Action("click_dialog", view.dialog_index, self.sel["text_close"], "close")
        return self._decision(
            RuntimeState.TOO_MANY_SESSIONS, self._hold_message(now), False, action
        )

    def _on_recaptcha(self, view: PageView, now: float) -> Decision:
        window = self.settings.browser.recaptcha_window
        while self._recaptchas and now - self._recaptchas[0] > window:
            self._recaptchas.popleft()
        if len(self._recaptchas) >= self.settings.browser.recaptcha_max:
            return self._decision(
                RuntimeState.NEEDS_HUMAN,
                f"Colab asked for a reCAPTCHA {len(self._recaptchas)} times within "
                f"{window / 60:.0f} min: a person needs to open the notebook in a browser "
                "signed into this Google account and answer it; the gateway stopped clicking",
                False,
            )
        action = None
        if self._may_click("recaptcha", now):
            self._recaptchas.append(now)
            action = Action("dismiss_recaptcha", why="reCAPTCHA prompt")
        return self._decision(
            RuntimeState.RECAPTCHA, "dismissing a reCAPTCHA prompt", False, action
        )

    def _on_signed_out(self, view: PageView, now: float) -> Decision:
        return self._decision(
            RuntimeState.SIGNED_OUT, "Google sign-in needed: run colab-gateway login", False
        )

    def _on_wrong_language(self, view: PageView, now: float) -> Decision:
        language = quoted(view.language, 40)
        return self._decision(
            RuntimeState.WRONG_LANGUAGE,
            f"Colab shows this page in another language ({language}), and the keep-alive "
            "reads English only: set the Google account's language to English "
            "(myaccount.google.com > Personal info > Language), or put the translated "
            f"texts into browser.selectors ({view.detail})",
            False,
        )

    def _on_loading(self, view: PageView, now: float) -> Decision:
        if now - self.kind_since > self.settings.browser.page_timeout:
            action = self._reload_with_backoff(now, "the notebook did not load")
            return self._decision(
                RuntimeState.LOAD_FAILED,
                f"the notebook page did not load within {self.settings.browser.page_timeout:.0f}s "
                f"({view.detail}); reloading",
                False,
                action,
            )
        return self._decision(RuntimeState.LOADING, "loading the notebook", True)

    def _on_load_failed(self, view: PageView, now: float) -> Decision:
        action = self._reload_with_backoff(now, "page failed to load")
        return self._decision(
            RuntimeState.LOAD_FAILED,
            f"{view.detail}; check the network and notebook_url",
            False,
            action,
        )

    def _on_unknown(self, view: PageView, now: float) -> Decision:
        return self._decision(
            RuntimeState.UNKNOWN,
            f"the page shows something unexpected: {view.detail}. If Colab changed its "
            "markup, override browser.selectors",
            False,
        )

    def _hold(self, now: float, reason: str) -> None:
        if now >= self.hold_until:
            self.hold_until = now + self.settings.browser.limit_wait
        self.hold_reason = reason
        self.hold_kind = RuntimeState(self.kind)  # gpu_limit or too_many_sessions

    def _hold_message(self, now: float) -> str:
        wait = max(0.0, self.hold_until - now)
        when = f"{wait / 60:.0f} min" if wait >= 90 else f"{wait:.0f}s"
        message = f"{self.hold_reason}; trying to connect again in {when}"
        if self.hold_kind == RuntimeState.NO_BACKEND:
            failures = self.no_backend_backoff.failures
            message += f" ({_ordinal(failures)} refusal in a row)"
        return message

    def _hold_state(self) -> RuntimeState:
        return self.hold_kind


def _language_note(view: PageView) -> str:
    if not view.language:
        return ""
    return f" (Colab shows this page in {quoted(view.language, 40)}, not English)"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
