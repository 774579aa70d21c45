"""The browser keep-alive's thread (``Worker``): keeps every session's notebook connected.

All Selenium work happens in this one thread, which the ``browser`` component
(gateway/browser/component.py) owns; the event loop only hands it commands
(``RerunBootstrap`` from the healer) and watches that it stays alive. The thread:

1. starts Chromium (``launch.py``) and opens each session's notebook in its own window;
2. sleeps until any window's DOM changes (a MutationObserver in every window, whose
   messages arrive over WebDriver BiDi from all windows at once: ``change_feed.py``; a
   disconnect is seen within milliseconds whichever window the thread is busy with), and
   looks only at the windows that changed or are due, at least every ``poll_every``.
   Without BiDi it waits inside each page in turn (``colab_dom.WAIT_FOR_CHANGE_JS``);
3. reads the page (``colab_dom.PROBE_JS``), lets the session's ``SessionMachine`` decide,
   and clicks; publishes ``state.update_runtime``; saves evidence of every anomaly;
4. reloads every ``reload_every`` without waiting for the load (the other windows are
   watched meanwhile, as they are during a re-run and while a person views one); re-runs
   the bootstrap when asked; restarts Chromium with backoff when it dies, hangs or grows
   beyond ``max_memory_mb`` - and only then: an element missing from the page is a fact
   about Colab's markup, reported with the
   ``browser.selectors`` key to override (``rerun.py`` tries the fallbacks, ``canary.py``
   checks the page's structures on every load);
5. steps aside while ``colab-gateway login`` uses the profile (``login.PAUSE_FILE``);
6. hands a session's page to a person while ``colab-gateway view`` asks
   (``view_request.py``): it serves the view page (``view_server.py``), carries out the
   person's clicks and keys, and makes none of its own until the person is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.backoff import Backoff
from gateway.browser import colab_dom, login, stop_flag, view_request
from gateway.browser.canary import Canary, load_names
from gateway.browser.change_feed import ChangeFeed, FeedUnavailable
from gateway.browser.evidence import Evidence
from gateway.browser.failed_looks import FailedLooks
from gateway.browser.language import english_url
from gateway.browser.launch import Browser, BrowserNotFound, launch
from gateway.browser.page_state import (
    Action,
    Decision,
    PageView,
    SessionMachine,
    Settings,
    classify,
)
from gateway.browser.profile_holders import ProfileInUse
from gateway.browser.rerun import RerunOutcome, run_all, run_bootstrap
from gateway.browser.view_server import Op, ViewServer
from gateway.component import Context
from gateway.config import Config
from gateway.vocabulary import (
    BROWSER_PSS,
    BROWSER_RESTARTS,
    COLAB_REFUSALS,
    DIALOGS,
    RECONNECTS,
    RERUNS,
    VM_RESETS,
    Command,
    Health,
    RerunBootstrap,
    RuntimeState,
)

log = logging.getLogger(__name__)

BACKOFF_FIRST, BACKOFF_MAX = 2.0, 120.0
HEALTHY_RUN = 300.0  # a browser that ran this long resets the restart backoff
MEMORY_CHECK_EVERY = 30.0
SETTLE_POLL = 0.25
VIEW_OP_WAIT = 0.2  # while a person is in control: how often the thread looks up
HTTP_GRACE = 10.0  # beyond page_timeout, how long chromedriver may take to answer
MULTI_SESSION_SLICE = 1.0  # without BiDi, with several windows: watch each this long in turn
RELOAD_POLL = 0.1  # while a window reloads: how often to look whether its new page is there
FAILED_LOOK_AGAIN = 0.5  # a look failed (a navigation, an alert): look again this much later
# With the change feed, the thread wakes at least this often with nothing to look at: the
# watchdog's beat, the healer's commands, a view or login request (file checks, no browser).
IDLE_TICK = 1.0


class BrowserDied(RuntimeError):
    """Chromium or chromedriver is gone, hung, or too big: restart it."""


@dataclass
class _Session:
    name: str
    url: str
    machine: SessionMachine
    canary: Canary
    handle: str = ""
    changes: int = -1
    last_probe: dict[str, Any] = field(default_factory=dict)
    last_decision: Decision | None = None
    pending_rerun: RerunBootstrap | None = None
    rerun_note: str = ""  # why a requested re-run did not happen, until the next one does
    drift_note: str = ""  # a selector that matched nothing while acting, until it matches
    canary_reported: tuple[str, ...] = ()  # the missing selectors last saved as evidence
    stop_kept: bool = False  # the disallowed-code stop is in the state directory
    look_at: float = 0.0  # time.monotonic() of the next look without a change
    reloading: _Reload | None = None  # a reload under way (the thread does not wait for it)


@dataclass
class _Reload:
    token: str  # marks the old document: a page without it is the new one
    deadline: float  # time.monotonic(); then the reload counts as done, with a warning


class Worker:
    """The thread that owns the browser. Everything here may block."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.commands: queue.Queue[Command] = queue.Queue()
        self.stopping = threading.Event()
        self.browser: Browser | None = None
        self.beat_at = time.monotonic()
        self.crash: BaseException | None = None
        self.restarts = 0
        self.reruns: deque[float] = deque()
        self.thread = threading.Thread(target=self._main, name="browser", daemon=True)
        config = ctx.config
        self.sel = colab_dom.merged(config.browser.selectors)
        # A notebook_url still holding the example's placeholder is not worth a browser
        # (the healer reports it).
        self.sessions = [
            _Session(
                s.name,
                english_url(s.notebook_url),  # opened and reloaded with it: docs/browser.md
                SessionMachine(self.sel, Settings(config.browser), session=s.name),
                Canary(load_names(config.browser.rerun)),
            )
            for s in config.sessions
            if not s.is_placeholder
        ]
        for session in self.sessions:
            # A restart does not resume a session Colab stopped for disallowed code.
            stopped = stop_flag.read(ctx.paths.state_dir, session.name)
            if stopped is not None:
                log.warning(
                    "%s: stopped for disallowed code since %s: not connecting until "
                    "colab-gateway runtime clear %s",
                    session.name,
                    time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stopped.since)),
                    session.name,
                )
                session.machine.stop(stopped)
                session.stop_kept = True
        self.evidence = Evidence(ctx.paths.screenshots_dir, config.browser.screenshots_keep)
        self._memory_checked = 0.0
        # A navigation may take page_timeout; chromedriver answers within HTTP_GRACE more.
        self._failed_looks = FailedLooks(float(config.browser.page_timeout) + HTTP_GRACE)
        self.viewing: ViewServer | None = None  # while a person is in control (for tests)
        self._held_reason = ""  # the last "profile in use" logged, to log each one once
        self.viewed: _Session | None = None  # the session the person controls
        self.feed: ChangeFeed | None = None  # None: the windows are polled in turn
        self._bidi = config.browser.bidi  # false once chromedriver refused it
        self._polling_said = False  # the fallback to polling is logged once
        self._meanwhile = False  # inside _watch_others: no nesting

    @property
    def config(self) -> Config:
        return self.ctx.config

    def start(self) -> None:
        self.thread.start()

    def beat(self) -> None:
        self.beat_at = time.monotonic()
        self.ctx.progress()

    def kill_browser(self) -> None:
        """From any thread: end Chromium at once (the worker then restarts it)."""
        browser = self.browser
        if browser is not None:
            browser.kill()

    # -- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._supervise()
        except BaseException as exc:  # reported to the component, which crashes with it
            self.crash = exc
            log.exception("browser thread crashed")

    def _supervise(self) -> None:
        if not self.sessions:
            self.ctx.health(
                Health.DEGRADED,
                "no notebook to keep connected: set each session's notebook_url",
                brief="",
            )
            while not self.stopping.wait(5.0):
                self.beat()
            return
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while not self.stopping.is_set():
            self.beat()
            if self._login_running():
                self._publish_all(
                    RuntimeState.PAUSED, "paused while colab-gateway login uses the profile"
                )
                self.ctx.health(
                    Health.DEGRADED,
                    "paused: colab-gateway login is using the browser profile",
                    brief="browser paused for login",
                )
                self.stopping.wait(2.0)
                continue
            started = time.monotonic()
            reason = ""
            missing = False
            self._failed_looks.ok()  # a new Chromium starts with a clean slate
            held = False
            try:
                self.browser = launch(
                    self._browser_config(), self.ctx.paths.state_dir, self.ctx.paths.runtime_dir
                )
                if not self.stopping.is_set():  # stop may have come while Chromium started
                    self._run_browser(self.browser)
            except BrowserNotFound as exc:
                reason, missing = str(exc), True  # a person has to install something
            except ProfileInUse as exc:
                # words for a person already (profile_holders.py); said once per change
                reason, held = str(exc), True
                if reason != self._held_reason and not self.stopping.is_set():
                    log.warning("browser: %s; trying again with backoff", reason)
                self._held_reason = reason
            except Exception as exc:
                reason = _short(exc)
                if self.browser is None and self._bidi and "webSocketUrl" in str(exc):
                    self._bidi = False  # an older or confined chromedriver: poll instead
                    self._say_polling(f"chromedriver refused webSocketUrl ({reason})")
                if not self.stopping.is_set():
                    log.warning("browser: %s; restarting Chromium", reason)
            finally:
                # Still reachable as self.browser while closing, so the event-loop side can
                # kill it should the polite quit hang too.
                if self.browser is not None:
                    if self.feed is not None:
                        self.feed.close(self.browser.driver)
                    self.browser.close(polite=not reason)
                self.browser = None
                self.feed = None
            if self.stopping.is_set() or self._login_running():
                continue
            self.restarts += 1
            self.ctx.state.count(BROWSER_RESTARTS, reason=restart_reason(reason, missing))
            if time.monotonic() - started >= HEALTHY_RUN:
                backoff.reset()
            wait = backoff.failure()
            self.evidence.save("browser", "restart", {"reason": reason, "restarts": self.restarts})
            self._publish_all(
                RuntimeState.UNKNOWN,
                f"browser not started: {reason}" if held else f"browser restarting: {reason}",
            )
            if not held:
                self._held_reason = ""
            self.ctx.health(
                Health.FAILED if missing else Health.DEGRADED,
                f"{reason}; trying again in {wait:.0f}s"
                if missing or held
                else f"Chromium restarting in {wait:.0f}s ({reason})",
                restarts=self.restarts,
            )
            self._sleep(wait)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            self.beat()
            self.stopping.wait(min(5.0, deadline - time.monotonic()))

    def _login_running(self) -> bool:
        return login.pause_requested(self.ctx.paths.runtime_dir)

    def _browser_config(self) -> Any:
        # One window needs no BiDi: waiting inside its page sees a change as fast, and the
        # BiDi mapper costs a renderer of its own (about 40 MB; docs/browser.md).
        bidi = self._bidi and len(self.sessions) > 1
        if bidi == self.config.browser.bidi:
            return self.config.browser
        return dataclasses.replace(self.config.browser, bidi=bidi)

    def _say_polling(self, why: str) -> None:
        if self._polling_said or len(self.sessions) < 2:
            return
        self._polling_said = True
        log.warning(
            "browser: %s; watching the %d windows in turn instead (each answers a disconnect "
            "up to %.0fs later per other window); docs/browser.md",
            why,
            len(self.sessions),
            MULTI_SESSION_SLICE,
        )

    def _start_feed(self, driver: Any) -> ChangeFeed | None:
        if len(self.sessions) < 2:
            return None
        if not self._bidi:
            self._say_polling("browser.bidi is false")
            return None
        try:
            return ChangeFeed.start(driver, self.sel)
        except FeedUnavailable as exc:
            self._say_polling(str(exc))
            return None

    def _run_browser(self, browser: Browser) -> None:
        driver = browser.driver
        self.feed = self._start_feed(driver)
        for index, session in enumerate(self.sessions):
            if index:
                driver.switch_to.new_window("window")
                browser.present_as_chromium()
            session.handle = driver.current_window_handle
            self._open(session)
        version = str(driver.capabilities.get("browserVersion") or "")
        self.ctx.health(
            Health.OK,
            "Chromium started",
            brief="",
            restarts=self.restarts,
            chromium_version=version,
            chromium_engine=browser.engine,
        )
        while not self.stopping.is_set():
            self.beat()
            if self._login_running():
                log.info("colab-gateway login wants the profile: closing Chromium")
                return
            if not browser.alive():
                raise BrowserDied("Chromium or chromedriver exited")
            request = self._view_requested()
            if request is not None:
                self._hand_over(browser, request)
                continue
            self._check_memory(browser)
            for session in self.sessions:
                if self._due(session):
                    self._visit_tolerant(session)
            self._handle_commands()
            self._publish_health()
            self._wait_for_change()

    # -- one session ------------------------------------------------------------------------

    def _select(self, session: _Session) -> None:
        if len(self.sessions) > 1:
            self.browser_driver().switch_to.window(session.handle)

    def browser_driver(self) -> Any:
        if self.browser is None:
            raise BrowserDied("no browser")
        return self.browser.driver

    def _open(self, session: _Session) -> None:
        self._select(session)
        log.info("%s: opening %s", session.name, session.url)
        session.machine.page_loaded(time.time())
        session.canary.page_loaded(time.time())
        session.changes = -1
        session.reloading = None
        session.look_at = 0.0
        with contextlib.suppress(Exception):  # a load timeout is judged by the machine
            self.browser_driver().get(session.url)

    def _probe(self, session: _Session) -> dict[str, Any]:
        result = self.browser_driver().execute_script(colab_dom.PROBE_JS, self.sel)
        if not isinstance(result, dict):
            raise BrowserDied(f"the page probe returned {result!r}")
        return result

    def _due(self, session: _Session) -> bool:
        """Whether to look at ``session``'s window now: with the change feed, when it
        changed or its time came; without, every time round (as the fallback always did)."""
        if self.feed is None:
            return True
        if session is self.viewed:
            return False  # a person is in control: no look, no click
        changed = self.feed.take(session.handle)
        return changed or time.monotonic() >= session.look_at

    def _schedule(self, session: _Session) -> None:
        """When to look again with no change: a settle time, a hold on Connect or an unknown
        dialog's grace ends without one; a reload is watched closely; else poll_every."""
        now = time.time()
        interval = float(self.config.browser.poll_every)
        if session.reloading is not None:
            interval = RELOAD_POLL
        if session.machine.settling(now):
            interval = min(interval, SETTLE_POLL)
        due = session.machine.wake_in(now)
        if due is not None:
            interval = min(interval, max(SETTLE_POLL, due + 0.05))
        session.look_at = time.monotonic() + interval

    def _watch_others(self, current: _Session) -> None:
        """While ``current``'s window is busy (a re-run, a person's view), look at the other
        windows that changed, then select ``current``'s again. Needs the change feed (the
        polling fallback would wait in each page)."""
        if self.feed is None or self._meanwhile:
            return
        self._meanwhile = True
        try:
            self.beat()
            looked = False
            for session in self.sessions:
                if session is not current and self._due(session):
                    self._visit_tolerant(session)
                    looked = True
            if looked:
                self._select(current)
        finally:
            self._meanwhile = False

    def _visit(self, session: _Session) -> None:
        self._select(session)
        if session.reloading is not None and not self._reload_finished(session):
            self._schedule(session)
            return
        now = time.time()
        if session.machine.reload_due(now):
            self._reload(session, "periodic reload")
            self._schedule(session)
            return
        self._check_cleared(session)
        probe = self._probe(session)
        view = classify(probe, self.sel)
        decision = session.machine.step(view, now)
        self._refused(session, decision)
        session.canary.look(probe, view.kind, now)
        session.last_probe = probe
        for action in decision.actions:
            self._act(session, action, view)
        screenshot = self._canary_evidence(session, probe)
        if decision.anomaly:
            log.warning("%s: %s (%s)", session.name, decision.message, view.kind)
            screenshot = self.evidence.save(
                session.name,
                decision.anomaly,
                {"view": view.__dict__, "decision": decision.message, "probe": probe},
                self.browser_driver(),
            )
        elif session.last_decision is None or session.last_decision.state != decision.state:
            log.info("%s: %s", session.name, decision.message)
        previous_vm = session.last_decision.vm_id if session.last_decision else None
        if previous_vm and decision.vm_id and decision.vm_id != previous_vm:
            self.ctx.state.count(VM_RESETS, session=session.name)
        session.last_decision = decision
        facts: dict[str, Any] = {
            "state": decision.state,
            "gpu": decision.gpu,
            "vm_id": decision.vm_id,
            "no_backend_failures": decision.no_backend_failures,
            "message": "; ".join(
                m
                for m in (
                    decision.message,
                    session.canary.warning,
                    session.drift_note,
                    session.rerun_note,
                )
                if m
            ),
        }
        if screenshot:
            facts["screenshot"] = screenshot
        if decision.new_dialogs:
            # A dialog Colab shows may announce the runtime's end: sync takes one more pull.
            facts["dialog_at"] = now
            self._record_dialogs(session, decision, screenshot, now)
        self.ctx.state.update_runtime(session.name, **facts)
        self._schedule(session)

    def _record_dialogs(
        self, session: _Session, decision: Decision, screenshot: str | None, now: float
    ) -> None:
        """The latest dialog the keep-alive closes rather than answers, for the status."""
        dialog = decision.new_dialogs[-1]
        log.warning("%s: Colab shows a dialog: %s (%s)", session.name, dialog.words, dialog.kind)
        self.ctx.state.set_details(
            self.ctx.name,
            last_dialog={
                "session": session.name,
                "kind": dialog.kind,
                "title": dialog.title,
                "buttons": list(dialog.buttons),
                "at": now,
                "screenshot": screenshot or "",
            },
        )

    def _check_cleared(self, session: _Session) -> None:
        """A person ran colab-gateway runtime clear: the stop's file is gone."""
        machine = session.machine
        if machine.stopped is None or not session.stop_kept:
            return
        if stop_flag.present(self.ctx.paths.state_dir, session.name):
            return
        log.info("%s: the stop for disallowed code was cleared; connecting again", session.name)
        machine.clear_stop()
        session.stop_kept = False

    def _refused(self, session: _Session, decision: Decision) -> None:
        if decision.refusal is None:
            return
        self.ctx.state.count(COLAB_REFUSALS, session=session.name, reason=decision.refusal)
        stopped = session.machine.stopped
        if decision.refusal == "disallowed" and stopped is not None:
            session.stop_kept = stop_flag.write(self.ctx.paths.state_dir, session.name, stopped)
            session.pending_rerun = None

    def _canary_evidence(self, session: _Session, probe: dict[str, Any]) -> str | None:
        """Publish the canary's verdict; a new finding leaves a screenshot."""
        canary = session.canary
        missing = tuple(canary.missing)
        verdicts = {
            s.name: {
                "checked": s.canary.checked,
                "dialogs_checked": s.canary.shapes_checked,
                "missing": s.canary.missing,
            }
            for s in self.sessions
        }
        self.ctx.state.set_details(self.ctx.name, page_canary=verdicts)
        if not missing or set(missing) <= set(session.canary_reported):
            session.canary_reported = missing if missing else ()
            return None
        session.canary_reported = missing
        log.warning("%s: %s", session.name, canary.warning)
        return self.evidence.save(
            session.name,
            "page_changed",
            {
                "missing": list(missing),
                "selectors": {n: self.sel[n] for n in missing},
                "probe": probe,
            },
            self.browser_driver(),
        )

    def _visit_tolerant(self, session: _Session) -> None:
        """A navigation in progress makes one look fail; many in a row mean a hung page."""
        from selenium.common.exceptions import WebDriverException

        try:
            self._visit(session)
            self._failed_looks.ok()
        except WebDriverException as exc:
            if self.browser is None or not self.browser.alive():
                raise BrowserDied("Chromium or chromedriver exited") from exc
            log.debug("%s: looking at the page failed: %s", session.name, _short(exc))
            now, looks = time.monotonic(), self._failed_looks
            if looks.failed(now):
                raise BrowserDied(
                    f"the page stopped answering ({looks.count} failed looks in "
                    f"{now - (looks.since or now):.0f}s; {_short(exc)})"
                ) from exc
            if self.feed is None:
                self.stopping.wait(FAILED_LOOK_AGAIN)
            else:  # the other windows are not kept waiting
                session.look_at = now + FAILED_LOOK_AGAIN

    def _act(self, session: _Session, action: Action, view: PageView) -> None:
        driver = self.browser_driver()
        log.info("%s: %s", session.name, action.why or action.name)
        if action.name == "click_dialog":
            self.ctx.state.count(DIALOGS, session=session.name, kind=view.kind)
        if action.name == "close_dialog":
            self.ctx.state.count(DIALOGS, session=session.name, kind=action.dialog_kind)
        if action.name == "click_connect" or action.why == "reconnect":
            self.ctx.state.count(RECONNECTS, session=session.name, reason=view.kind)
        if action.name == "click_connect":
            driver.execute_script(colab_dom.CLICK_CONNECT_JS, self.sel)
        elif action.name == "click_dialog":
            driver.execute_script(
                colab_dom.CLICK_DIALOG_JS,
                self.sel,
                action.dialog_index,
                action.button,
                action.fallback_primary,
            )
        elif action.name == "close_dialog":
            self._close_dialog(session, action)
        elif action.name == "dismiss_recaptcha":
            driver.execute_script(colab_dom.DISMISS_RECAPTCHA_JS, self.sel)
        elif action.name == "reload":
            self._reload(session, action.why)

    def _close_dialog(self, session: _Session, action: Action) -> None:
        """A non-primary button, else a real Escape key: never the primary action."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        driver = self.browser_driver()
        result = driver.execute_script(
            colab_dom.CLOSE_DIALOG_JS, self.sel, action.dialog_index, action.button, action.title
        )
        if result == "escape":
            ActionChains(driver).send_keys(Keys.ESCAPE).perform()
            how = "Escape"
        elif isinstance(result, str) and result.startswith("clicked:"):
            how = repr(result.removeprefix("clicked:")[:40])
        elif result == "covered":
            how = "nothing yet: another dialog is above it, and Escape closes the one on top"
        else:
            how = "nothing: it was gone"
        log.info("%s: closed a dialog (%s) with %s", session.name, action.dialog_kind, how)

    def _reload(self, session: _Session, why: str) -> None:
        """Start loading the notebook again; later looks (``_reload_finished``) accept a
        "Leave site?" prompt and see the new page. Not waited for here: the thread watches
        the other windows meanwhile."""
        driver = self.browser_driver()
        log.info("%s: reloading (%s)", session.name, why)
        token = f"{time.monotonic()}"
        with contextlib.suppress(Exception):
            driver.execute_script(colab_dom.MARK_DOCUMENT_JS, token)
        # Not driver.refresh(): it waits for the load and, with some chromedriver versions,
        # stays stuck behind the beforeunload prompt. Navigate without waiting, then accept.
        session.machine.page_loaded(time.time())
        session.canary.page_loaded(time.time())
        session.changes = -1
        with contextlib.suppress(Exception):
            driver.execute_script(colab_dom.LOAD_AGAIN_JS, session.url)
        deadline = time.monotonic() + float(self.config.browser.page_timeout)
        session.reloading = _Reload(token, deadline)

    def _reload_finished(self, session: _Session) -> bool:
        """One look at a reloading window (selected): the new document is there, or the
        page timeout passed."""
        reload = session.reloading
        if reload is None:
            return True
        driver = self.browser_driver()
        self.beat()
        try:
            driver.switch_to.alert.accept()
            log.info("%s: accepted a 'Leave site?' prompt", session.name)
        except Exception as exc:  # no alert: the usual case
            log.debug("no alert to accept: %s", type(exc).__name__)
        try:
            mark, ready = driver.execute_script(colab_dom.READ_MARK_JS)
        except Exception:
            mark, ready = reload.token, "loading"  # navigating, or an alert in the way
        if mark != reload.token and ready in ("interactive", "complete"):
            session.reloading = None
            return True
        if time.monotonic() >= reload.deadline:
            log.warning("%s: the reload did not finish within the page timeout", session.name)
            session.reloading = None
            return True
        return False

    # -- a person in control (colab-gateway view) --------------------------------------------

    def _view_requested(self) -> view_request.ViewRequest | None:
        request = view_request.read(self.ctx.paths.runtime_dir)
        if request is None:
            return None
        if not any(s.name == request.session for s in self.sessions):
            log.warning("view asked for unknown session %r: ignored", request.session)
            view_request.remove(self.ctx.paths.runtime_dir, request)
            return None
        return request

    def _hand_over(self, browser: Browser, request: view_request.ViewRequest) -> None:
        """Serve the view page and do what the person does, and nothing else, until they
        are done (the Done button, or the command ended)."""
        runtime_dir = self.ctx.paths.runtime_dir
        session = next(s for s in self.sessions if s.name == request.session)
        try:
            server = ViewServer(request, runtime_dir, float(self.config.view.idle_timeout))
        except OSError as exc:
            log.warning("cannot serve the view on 127.0.0.1:%d: %s", request.port, exc)
            view_request.remove(runtime_dir, request)
            return
        server.start()
        self.viewing = server
        self.viewed = session
        message = "a person is in control (colab-gateway view): the keep-alive does not click"
        self.ctx.state.update_runtime(session.name, state=RuntimeState.PAUSED, message=message)
        self.ctx.health(
            Health.DEGRADED, f"{session.name}: {message}", brief="a person is in control"
        )
        try:
            while not self.stopping.is_set() and not server.ended():
                self.beat()
                if view_request.read(runtime_dir) != request:
                    break
                if not browser.alive():
                    raise BrowserDied("Chromium or chromedriver exited")
                try:
                    op = server.ops.get(timeout=VIEW_OP_WAIT)
                except queue.Empty:
                    self._watch_others(session)  # the other windows are kept meanwhile
                    continue
                self._select(session)
                self._view_op(op)
                self._watch_others(session)
        finally:
            server.stop()
            self.viewing = None
            self.viewed = None
            session.look_at = 0.0
            view_request.remove(runtime_dir, request)
            session.changes = -1  # look at the page afresh: the person may have changed it
            log.info(
                "%s: the person is done (%d clicks, %d keys); keeping the notebook again",
                session.name,
                server.clicks,
                server.keys,
            )

    def _view_op(self, op: Op) -> None:
        driver = self.browser_driver()
        try:
            if op.kind == "screenshot":
                op.result.set_result(driver.get_screenshot_as_png())
                return
            if op.kind == "click":
                point = {"x": op.args["x"], "y": op.args["y"]}
                # Input.dispatchMouseEvent: a trusted click, as a person's is.
                driver.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", **point})
                for kind in ("mousePressed", "mouseReleased"):
                    driver.execute_cdp_cmd(
                        "Input.dispatchMouseEvent",
                        {"type": kind, "button": "left", "clickCount": 1, **point},
                    )
            elif op.kind == "text":
                driver.execute_cdp_cmd("Input.insertText", {"text": op.args["text"]})
            elif op.kind == "key":
                from selenium.webdriver.common.action_chains import ActionChains

                key = _view_key_map().get(op.args["key"])
                if key is None:
                    raise ValueError(f"key {op.args['key']!r} is not passed on")
                ActionChains(driver).send_keys(key).perform()
            else:
                raise ValueError(f"unknown view operation {op.kind!r}")
            op.result.set_result(True)
        except Exception as exc:  # the person's request fails, not the keep-alive
            op.result.set_exception(exc)

    # -- commands ---------------------------------------------------------------------------

    def _handle_commands(self) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(command, RerunBootstrap):
                self._rerun(command)
            else:
                log.warning("browser: unknown command %r ignored", command)
        # A request that came while the runtime was (re)connecting runs once it is connected.
        for session in self.sessions:
            pending = session.pending_rerun
            if pending is not None and _connected(session):
                session.pending_rerun = None
                self._rerun(pending)

    def _rerun(self, command: RerunBootstrap) -> None:
        session = next((s for s in self.sessions if s.name == command.session), None)
        reason = command.reason
        mode = self.config.browser.rerun
        if session is None or mode == "never":
            log.info("rerun for %r ignored (rerun: %s)", command.session, mode)
            return
        if session.machine.stopped is not None:
            log.warning(
                "%s: rerun asked (%s) but the session is stopped for disallowed code: ignored",
                session.name,
                reason,
            )
            return
        if not _connected(session):
            log.info(
                "%s: rerun asked (%s); waiting until the runtime is connected", session.name, reason
            )
            session.pending_rerun = command
            return
        now = time.time()
        while self.reruns and now - self.reruns[0] > 3600:
            self.reruns.popleft()
        limit = self.config.browser.max_reruns_per_hour
        if len(self.reruns) >= limit:
            message = f"not re-running the bootstrap: already {limit} times this hour"
            log.warning("%s: %s (%s)", session.name, message, reason)
            session.rerun_note = message
            return
        self.reruns.append(now)
        session.rerun_note = ""
        log.info("%s: re-running the bootstrap (%s, %s)", session.name, mode, reason)
        self._select(session)
        outcome = self._run(mode, session)
        if outcome.ran:
            self.ctx.state.update_runtime(session.name, last_rerun=now)
            self.ctx.state.count(RERUNS, session=session.name)
        if outcome.healthy:
            session.drift_note = ""
            return
        # The page, not the browser: say what matched nothing and keep the browser running.
        session.drift_note = outcome.message
        log.warning("%s: %s", session.name, outcome.message)
        screenshot = self.evidence.save(
            session.name,
            "selector_missing",
            {
                "missing": outcome.missing,
                "selectors": {n: self.sel[n] for n in outcome.missing},
                "ran": outcome.ran,
                "message": outcome.message,
            },
            self.browser_driver(),
        )
        facts: dict[str, Any] = {"message": outcome.message}
        if screenshot:
            facts["screenshot"] = screenshot
        self.ctx.state.update_runtime(session.name, **facts)

    def _run(self, mode: str, session: _Session) -> RerunOutcome:
        """Run the bootstrap; Selenium errors while the browser lives are page facts."""
        from selenium.common.exceptions import WebDriverException

        driver = self.browser_driver()
        try:
            if mode == "all":
                return run_all(driver, self.sel)
            return run_bootstrap(
                driver,
                self.sel,
                self.config.browser.rerun_fallback_all,
                meanwhile=lambda: self._watch_others(session),
            )
        except WebDriverException as exc:
            if self.browser is None or not self.browser.alive():
                raise BrowserDied("Chromium or chromedriver exited") from exc
            return RerunOutcome(
                ran="",
                missing=[],
                message=f"re-running the bootstrap failed on the page ({_short(exc)}); "
                "the next request tries again",
            )

    # -- waiting, health, memory ------------------------------------------------------------

    def _wait_for_change(self) -> None:
        from selenium.common.exceptions import WebDriverException

        if not self.commands.empty():
            return
        if self.feed is not None:
            # Sleep until a window changes or the nearest look is due; no browser call.
            now = time.monotonic()
            looks = [s.look_at for s in self.sessions if s is not self.viewed]
            nearest = min(looks, default=now + IDLE_TICK)
            self.feed.wait(min(IDLE_TICK, max(0.0, nearest - now)))
            return
        poll = float(self.config.browser.poll_every)
        if any(s.reloading is not None for s in self.sessions):
            poll = min(poll, RELOAD_POLL)
        if len(self.sessions) > 1:
            poll = min(poll, MULTI_SESSION_SLICE)
        now = time.time()
        if any(s.machine.settling(now) for s in self.sessions):
            poll = min(poll, SETTLE_POLL)  # look again as soon as the settle time is over
        for session in self.sessions:
            # a hold on Connect that ends, an unknown dialog's grace: no DOM change says so
            due = session.machine.wake_in(now)
            if due is not None:
                poll = min(poll, max(SETTLE_POLL, due + 0.05))
        for session in self.sessions:
            self._select(session)
            try:
                session.changes = self.browser_driver().execute_async_script(
                    colab_dom.WAIT_FOR_CHANGE_JS, self.sel, int(poll * 1000), session.changes
                )
            except WebDriverException as exc:
                if not self.browser or not self.browser.alive():
                    raise BrowserDied("Chromium or chromedriver exited") from exc
                # navigation in progress or an alert: fall back to a short sleep
                log.debug("waiting in the page failed: %s", _short(exc))
                self.stopping.wait(min(poll, 0.5))
            except Exception as exc:  # the driver's HTTP answer timed out: a hung page
                raise BrowserDied(f"the browser stopped answering ({_short(exc)})") from exc

    def _check_memory(self, browser: Browser) -> None:
        now = time.monotonic()
        if now - self._memory_checked < MEMORY_CHECK_EVERY:
            return
        self._memory_checked = now
        pss = browser.pss_mb()
        self.ctx.state.set_details(self.ctx.name, chromium_pss_mb=round(pss, 1))
        self.ctx.state.gauge(BROWSER_PSS, pss * 1024 * 1024)
        limit = self.config.browser.max_memory_mb
        if pss > limit:
            raise BrowserDied(f"Chromium uses {pss:.0f} MB (PSS), above max_memory_mb {limit}")

    def _publish_all(self, state: RuntimeState, message: str) -> None:
        for session in self.sessions:
            self.ctx.state.update_runtime(session.name, state=state, message=message)

    def _publish_health(self) -> None:
        problems = []
        for s in self.sessions:
            notes = [s.canary.warning, s.drift_note]
            if s.last_decision is not None and not s.last_decision.healthy:
                notes.insert(0, s.last_decision.message)
            if any(notes):
                problems.append(f"{s.name}: " + "; ".join(n for n in notes if n))
        if problems:
            self.ctx.health(Health.DEGRADED, "; ".join(problems), brief="")
        else:
            self.ctx.health(Health.OK, "keeping the notebook connected", brief="")


def _view_key_map() -> dict[str, str]:
    from selenium.webdriver.common.keys import Keys

    return {
        "Enter": Keys.ENTER,
        "Tab": Keys.TAB,
        "Escape": Keys.ESCAPE,
        "Backspace": Keys.BACKSPACE,
        "ArrowUp": Keys.ARROW_UP,
        "ArrowDown": Keys.ARROW_DOWN,
        "ArrowLeft": Keys.ARROW_LEFT,
        "ArrowRight": Keys.ARROW_RIGHT,
        " ": Keys.SPACE,
    }


def _connected(session: _Session) -> bool:
    return (
        session.last_decision is not None and session.last_decision.state == RuntimeState.CONNECTED
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


def restart_reason(reason: str, missing: bool) -> str:
    """A few words for the restarts metric's label (the reason itself is free text)."""
    if missing:
        return "not_found"
    for words, label in (
        ("browser profile", "profile_in_use"),
        ("max_memory_mb", "memory"),
        ("exited", "exited"),
        ("stopped answering", "hung"),
    ):
        if words in reason:
            return label
    return "error"
