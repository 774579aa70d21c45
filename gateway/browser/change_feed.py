"""Every window watched at once: WebDriver BiDi tells the keep-alive which window changed.

One Selenium thread serves every session's window. Waiting inside one window's page (the
polling fallback, ``colab_dom.WAIT_FOR_CHANGE_JS``) leaves the others unwatched, so the
time to answer a disconnect grew with the number of windows (issue 26). Here a BiDi
preload script (``colab_dom.CHANGE_FEED_JS``) runs in every window on every load and sends
a ``script.message`` on its channel when the page changes; the events arrive over
chromedriver's WebSocket from every window, whichever one the thread has selected, and
carry the window's browsing context id, which chromedriver also uses as the window handle.
The thread sleeps on ``wait()`` and looks only at the windows that changed (docs/browser.md
has the measurements behind this choice).

Used with two or more sessions (one window is watched as fast by waiting inside its page,
and the BiDi mapper costs a renderer of its own). Needs ``webSocketUrl: true`` in the
session's capabilities (launch.py, ``browser.bidi``);
``start()`` raises ``FeedUnavailable`` when the driver did not grant it, and the keep-alive
then falls back to polling.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from gateway.browser import colab_dom

log = logging.getLogger(__name__)

CHANNEL = "colab-gateway-change"


class FeedUnavailable(RuntimeError):
    """The driver offers no BiDi session (no webSocketUrl), or refused the preload script."""


class ChangeFeed:
    """Which windows changed since the keep-alive last looked. Thread-safe: Selenium calls
    ``_heard`` from its WebSocket threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed: set[str] = set()
        self.wake = threading.Event()  # set on any change; the keep-alive's sleep ends
        self.messages = 0  # how many change messages arrived (for the bench and tests)

    @classmethod
    def start(cls, driver: Any, sel: dict[str, str]) -> ChangeFeed:
        """Subscribe and install the preload script, before any notebook is opened (a
        preload script runs in documents loaded after it was added)."""
        from selenium.common.exceptions import WebDriverException

        url = driver.caps.get("webSocketUrl")
        if not isinstance(url, str) or not url:
            raise FeedUnavailable(
                "chromedriver did not grant a WebDriver BiDi session (no webSocketUrl)"
            )
        feed = cls()
        try:
            script = driver.script  # opens the WebSocket
            script.add_event_handler("message", feed._heard)
            script.add_preload_script(
                function_declaration=colab_dom.change_feed_js(sel),
                arguments=[{"type": "channel", "value": {"channel": CHANNEL}}],
            )
        except (WebDriverException, OSError, TypeError, ValueError) as exc:
            raise FeedUnavailable(f"WebDriver BiDi refused the change watch: {exc}") from exc
        return feed

    def _heard(self, message: Any) -> None:
        channel, source = _fields(message)
        if channel != CHANNEL or not isinstance(source, dict):
            return
        context = source.get("context")
        if not isinstance(context, str):
            return
        with self._lock:
            self._changed.add(context)
            self.messages += 1
        self.wake.set()

    def take(self, handle: str) -> bool:
        """Whether window ``handle`` changed since the last take (and forget that it did)."""
        with self._lock:
            if handle in self._changed:
                self._changed.discard(handle)
                return True
            return False

    def wait(self, timeout: float) -> None:
        """Sleep until any window changes, at most ``timeout`` seconds."""
        if timeout > 0:
            self.wake.wait(timeout)
        self.wake.clear()

    @staticmethod
    def close(driver: Any) -> None:
        """Close the BiDi WebSocket (a polite quit does; a killed browser leaves it open
        until the garbage collector finds it)."""
        connection = getattr(driver, "_websocket_connection", None)
        if connection is None:
            return
        try:
            connection.close()
        except Exception as exc:  # the browser is going anyway
            log.debug("closing the BiDi connection: %s", exc)
        driver._websocket_connection = None

    def pending(self) -> bool:
        with self._lock:
            return bool(self._changed)


def _fields(message: Any) -> tuple[Any, Any]:
    """Selenium hands the event as its MessageParameters dataclass, or as the raw dict
    when it cannot build one."""
    if isinstance(message, dict):
        return message.get("channel"), message.get("source")
    return getattr(message, "channel", None), getattr(message, "source", None)
