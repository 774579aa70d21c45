"""Sends alerts through apprise from one thread, so that no component ever waits for it.

Each configured URL is a ``Target`` with its own bounded queue and its own backoff: a dead
Telegram bot delays nothing sent to ntfy, and a message is retried (5 s, 10 s, ... up to
10 min) until its service takes it. Only when a queue overflows (a service down for days)
is the oldest message dropped, and the status says so. Every word goes through the log's
secret redaction first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import notify_urls
from gateway.alerts.events import Alert
from gateway.backoff import Backoff
from gateway.secrets import redact

log = logging.getLogger("gateway.alerts")

QUEUE_MAX = 100  # per URL
RETRY_FIRST, RETRY_MAX = 5.0, 600.0


def load_apprise(url: str, index: int = 1) -> tuple[Any, str]:
    """An ``apprise.Apprise`` holding ``url``, and a label safe to show (``URL n
    (scheme://host)``, the host only when it is a public name: paths, queries, userinfo and
    token hosts are the secrets); ``ValueError`` in our words if apprise cannot use it."""
    plugin = notify_urls.load(url)
    sender = notify_urls.apprise_module().Apprise()
    sender.add(plugin)
    return sender, notify_urls.label(url, index)


def send_once(sender: Any, title: str, body: str, attach: str | None, url: str) -> str | None:
    """Send one message; None if the service took it, else why not, in our words.

    apprise's last warning (what the service answered) is kept only with every part of
    ``url`` scrubbed from it: it names the ntfy topic, the bot, the user."""
    try:
        with notify_urls.quiet() as said:
            ok = sender.notify(title=redact(title), body=redact(body), attach=attach)
    except Exception as exc:  # a plugin bug must not end the sending thread
        return f"apprise failed ({notify_urls.apprise_said(f'{type(exc).__name__}: {exc}', url)})"
    if ok:
        return None
    if not said:
        return "the service did not take the message"
    return f"the service did not take the message ({notify_urls.apprise_said(said[-1], url)})"


@dataclass
class Target:
    label: str
    sender: Any
    url: str  # never shown: its parts are scrubbed from what apprise says about it
    backoff: Backoff
    pending: deque[Alert] = field(default_factory=deque)
    sent: int = 0
    dropped: int = 0
    last_error: str = ""
    failing_since: float | None = None


class Sender:
    def __init__(
        self,
        urls: list[str],
        *,
        on_change: Callable[[], None] = lambda: None,
        queue_max: int = QUEUE_MAX,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self.targets: list[Target] = []
        self.bad: list[str] = []  # URLs apprise does not understand, by position
        for index, url in enumerate(urls, 1):
            try:
                sender, label = load_apprise(url, index)
            except ValueError as exc:
                self.bad.append(f"URL {index}: {exc}")
                continue
            backoff = Backoff(retry_first, retry_max, jitter="equal")
            self.targets.append(Target(label, sender, url, backoff))
        self.on_change = on_change
        self.queue_max = queue_max
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        unsent = sum(len(t.pending) for t in self.targets)
        if unsent:
            log.warning("stopping with %d notification(s) unsent", unsent)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def put(self, alert: Alert) -> None:
        """Queue ``alert`` for every URL; returns at once (any thread)."""
        with self._cond:
            for target in self.targets:
                target.pending.append(alert)
                while len(target.pending) > self.queue_max:
                    target.pending.popleft()
                    target.dropped += 1
            self._cond.notify_all()
        self.on_change()

    def status(self) -> tuple[bool, str, dict[str, Any]]:
        """(all well, a message a person can act on, details for the status)."""
        with self._cond:
            problems = list(self.bad)
            for t in self.targets:
                if t.last_error:
                    # A wall-clock time: the status is read later than it is written.
                    retry_at = time.time() + t.backoff.remaining()
                    when = time.strftime("%H:%M:%S UTC", time.gmtime(retry_at))
                    problems.append(
                        f"{t.label}: {t.last_error} ({t.backoff.failures} failure(s) in a row; "
                        f"{len(t.pending)} waiting, next try at {when})"
                    )
                if t.dropped:
                    problems.append(f"{t.label}: {t.dropped} message(s) dropped (queue full)")
            details = {
                "targets": [
                    {
                        "url": t.label,
                        "sent": t.sent,
                        "pending": len(t.pending),
                        "dropped": t.dropped,
                        "error": t.last_error,
                        "failing_since": t.failing_since,
                    }
                    for t in self.targets
                ]
            }
        if problems:
            return False, "; ".join(problems), details
        sent = sum(t.sent for t in self.targets)
        return True, f"{len(self.targets)} URL(s), {sent} message(s) sent", details

    def has_left(self, alert: Alert) -> bool:
        """``alert`` (this very object) waits in no URL's queue: sent, or dropped on overflow
        (which the status reports)."""
        with self._cond:
            return not any(a is alert for t in self.targets for a in t.pending)

    def idle(self) -> bool:
        with self._cond:
            return not any(t.pending for t in self.targets)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                ready = [t for t in self.targets if t.pending and t.backoff.remaining() <= 0]
                if not ready:
                    waits = [t.backoff.remaining() for t in self.targets if t.pending]
                    self._cond.wait(min(waits) if waits else None)
                    continue
            for target in ready:
                if self.stopping:
                    return
                self._send_head(target)

    def _send_head(self, target: Target) -> None:
        with self._cond:
            if not target.pending:
                return
            alert = target.pending[0]
        attach = alert.attach if alert.attach and os.path.exists(alert.attach) else None
        error = send_once(target.sender, alert.title, alert.body, attach, target.url)
        with self._cond:
            if error is None:
                if target.pending and target.pending[0] is alert:
                    target.pending.popleft()
                target.sent += 1
                target.backoff.reset()
                if target.last_error:
                    log.info("%s: sending works again", target.label)
                target.last_error, target.failing_since = "", None
            else:
                wait = target.backoff.failure()
                if not target.last_error:
                    log.warning("%s: sending failed: %s; retrying", target.label, error)
                    target.failing_since = time.time()
                target.last_error = error
                log.debug("%s: retry in %.1fs", target.label, wait)
        self.on_change()
