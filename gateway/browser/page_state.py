"""What the notebook page shows, and what to do about it: pure functions, no browser.

``classify`` turns the raw facts ``colab_dom.PROBE_JS`` read from the page into a
``PageView``; a ``SessionMachine`` (one per session) turns successive views into a
``Decision``: the state to publish, how healthy that is, and the clicks to make. Keeping
this free of Selenium makes every rule testable with plain dictionaries.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
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
    "gpu_limit",
    "too_many_sessions",
    "still_there",
    "runtime_disconnected",
    "run_anyway",
    "unknown_dialog",
    "connected",
    "connecting",
    "disconnected",
    "unknown",
]

# Kinds worth a screenshot when they begin (evidence for a person reading the status).
ANOMALIES = frozenset(
    {
        "load_failed",
        "signed_out",
        "recaptcha",
        "gpu_limit",
        "too_many_sessions",
        "still_there",
        "runtime_disconnected",
        "unknown_dialog",
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


@dataclass(frozen=True)
class PageView:
    kind: Kind
    gpu: bool | None = None
    busy: bool = False
    dialog_index: int = 0
    vm_id: str | None = None
    detail: str = ""  # what a person should read: a dialog's title, the URL…

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", untrusted(self.detail, DETAIL_LIMIT))
        if self.vm_id is not None:
            object.__setattr__(self, "vm_id", untrusted(self.vm_id, VM_ID_LIMIT))


def classify(probe: dict[str, Any], sel: dict[str, str]) -> PageView:
    url = str(probe.get("url") or "")
    vm_id = str(probe.get("vm_id") or "") or None
    if probe.get("error_page"):
        return PageView("load_failed", detail=f"the browser could not load {url}")
    connect = probe.get("connect")
    if (
        re.search(sel["signed_out_url"], url)
        or probe.get("signed_out_element")
        or (connect is None and contains_any(probe.get("body_excerpt"), sel["text_signed_out"]))
    ):
        return PageView("signed_out", detail=url)
    if probe.get("recaptcha"):
        return PageView("recaptcha", detail="reCAPTCHA prompt")
    for index, dialog in enumerate(probe.get("dialogs") or []):
        title = str(dialog.get("title") or "")
        text = f"{title}\n{dialog.get('text') or ''}"
        # What a person reads (a phone message may quote it): the title, else the text.
        # The matching below reads the raw texts.
        shown = untrusted(title or str(dialog.get("text") or ""), TITLE_LIMIT)
        buttons = " | ".join(str(b.get("text") or "") for b in dialog.get("buttons") or [])
        for kind, key in (
            ("gpu_limit", "text_gpu_limit"),
            ("too_many_sessions", "text_too_many_sessions"),
            ("still_there", "text_still_there"),
            ("runtime_disconnected", "text_runtime_disconnected"),
        ):
            if contains_any(text, sel[key]):
                return PageView(kind, dialog_index=index, detail=shown)  # type: ignore[arg-type]
        if contains_any(buttons, sel["text_run_anyway"]):
            return PageView("run_anyway", dialog_index=index, detail=shown)
        if contains_any(buttons, sel["text_reconnect"]):
            return PageView("runtime_disconnected", dialog_index=index, detail=shown)
        return PageView("unknown_dialog", dialog_index=index, detail=shown)
    if connect is None:
        return PageView("loading", detail=url)
    tooltip = str(connect.get("tooltip") or "")
    label = str(connect.get("text") or "")
    running = bool(probe.get("running"))
    if contains_any(tooltip, sel["text_connected"]):
        return PageView(
            "connected", gpu=contains_any(tooltip, sel["text_gpu"]), busy=running, vm_id=vm_id
        )
    if contains_any(tooltip, sel["text_busy"]):
        return PageView("connected", busy=True, vm_id=vm_id)
    if connect.get("disabled") or contains_any(f"{tooltip}\n{label}", sel["text_connecting"]):
        return PageView("connecting")
    if contains_any(tooltip, sel["text_needs_connect"]) or label.strip().lower() in (
        "connect",
        "reconnect",
    ):
        return PageView("disconnected", detail=tooltip)
    return PageView(
        "unknown", detail=f"connect button says {quoted(label, 60)} / {quoted(tooltip, 120)}"
    )


@dataclass(frozen=True)
class Action:
    """One thing to do on the page."""

    name: Literal["click_connect", "click_dialog", "dismiss_recaptcha", "reload"]
    dialog_index: int = 0
    button: str = ""  # '|'-separated texts; "" = the dialog's primary button
    why: str = ""
    fallback_primary: bool = False  # no button with that text: click the primary one


@dataclass(frozen=True)
class Decision:
    state: RuntimeState
    message: str
    healthy: bool
    gpu: bool | None
    vm_id: str | None
    actions: tuple[Action, ...] = ()
    anomaly: str | None = None  # set when an anomaly begins: time for evidence


@dataclass
class Settings:
    """The browser section of the config (limits, waits, what to do at the GPU limit), and
    two timings of the page machine's own."""

    browser: BrowserConfig = field(default_factory=BrowserConfig)
    click_retry: float = 3.0  # the same click again only if the page did not react
    # After a (re)load, Colab shows "Connect" for a moment before it reattaches the runtime
    # it already has; a click then would be a click on a connected runtime.
    settle: float = 2.0


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
    _vm_counter: int = 0
    _connect_clicked: bool = False  # since the runtime was last seen connected
    _settled: bool = False  # the page has shown a runtime since it was loaded
    _recaptchas: deque[float] = field(default_factory=deque)
    _last_click: dict[str, float] = field(default_factory=dict)

    def page_loaded(self, now: float) -> None:
        self.loaded_at = now
        self._settled = False
        self.kind = "loading"
        self.kind_since = now
        self._last_click.clear()

    def reload_due(self, now: float) -> bool:
        return now - self.loaded_at >= self.settings.browser.reload_every

    def step(self, view: PageView, now: float) -> Decision:
        if view.kind in ("connected", "connecting"):
            self._settled = True
        began = view.kind != self.kind
        if began:
            self.kind, self.kind_since = view.kind, now
            # The page moved on: a click now answers a new situation, not a repeat of one
            # the page ignored.
            self._last_click.clear()
        decide = getattr(self, f"_on_{view.kind}")
        decision: Decision = decide(view, now)
        needs_human = RuntimeState.NEEDS_HUMAN
        if decision.state == needs_human and self.last_state != needs_human:
            decision = _with(decision, anomaly="needs_human")
        elif began and view.kind in ANOMALIES:
            decision = _with(decision, anomaly=view.kind)
        self.last_state = decision.state
        return decision

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

    # -- one method per kind ------------------------------------------------------------------

    def _on_connected(self, view: PageView, now: float) -> Decision:
        self.reload_backoff.reset()
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
        return self._decision(RuntimeState.CONNECTED, f"connected{gpu}{busy}", True)

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
            return self._decision(self._hold_state(), self.hold_reason, False)
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
            return self._decision(self._hold_state(), self.hold_reason, False)
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
        return self._decision(RuntimeState.GPU_LIMIT, self.hold_reason, False, action)

    def _on_too_many_sessions(self, view: PageView, now: float) -> Decision:
        self._hold(
            now,
            "Colab says there are too many active sessions: end the others (Runtime → "
            "Manage sessions)",
        )
        action = None
        if self._may_click("too_many", now):
            action = Action("click_dialog", view.dialog_index, self.sel["text_close"], "close")
        return self._decision(RuntimeState.TOO_MANY_SESSIONS, self.hold_reason, False, action)

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

    def _on_unknown_dialog(self, view: PageView, now: float) -> Decision:
        return self._decision(
            RuntimeState.DIALOG,
            f"an unknown dialog is open ({quoted(view.detail, TITLE_LIMIT)}); the next "
            "reload clears it. If it "
            "keeps coming, add its texts to browser.selectors",
            False,
        )

    def _on_signed_out(self, view: PageView, now: float) -> Decision:
        return self._decision(
            RuntimeState.SIGNED_OUT, "Google sign-in needed: run colab-gateway login", False
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
        minutes = max(0.0, self.hold_until - now) / 60
        self.hold_reason = f"{reason}; trying to connect again in {minutes:.0f} min"
        self.hold_kind = RuntimeState(self.kind)  # gpu_limit or too_many_sessions

    def _hold_state(self) -> RuntimeState:
        return self.hold_kind


def _with(decision: Decision, **changes: Any) -> Decision:
    from dataclasses import replace

    return replace(decision, **changes)
