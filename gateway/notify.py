"""systemd's notify protocol, in the few honest lines it needs."""

from __future__ import annotations

import logging
import os

import sdnotify

from gateway.secrets import redact

log = logging.getLogger(__name__)


class Notifier:
    """READY / STATUS / WATCHDOG / RELOADING / STOPPING for the service manager.

    Does nothing outside systemd. ``NOTIFY_SOCKET`` is removed from the environment on
    creation so that no child process (ssh, tmux, Chromium) can speak for the service.
    """

    def __init__(self) -> None:
        self.socket_path = os.environ.pop("NOTIFY_SOCKET", None)
        self.watchdog_usec = _watchdog_usec()
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)
        self._notifier: sdnotify.SystemdNotifier | None = None
        self._last_status: str | None = None
        if self.socket_path:
            os.environ["NOTIFY_SOCKET"] = self.socket_path  # sdnotify reads it once, here
            try:
                self._notifier = sdnotify.SystemdNotifier()
            finally:
                del os.environ["NOTIFY_SOCKET"]

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    @property
    def watchdog_period(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None when there is no watchdog."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def send(self, message: str) -> None:
        # sdnotify connects the socket (abstract names included) but encodes as Latin-1 and
        # swallows errors: a STATUS with "·" or "—" would arrive garbled or not at all.
        # systemd reads UTF-8, so send the bytes ourselves on its socket.
        sock = getattr(self._notifier, "socket", None)
        if sock is None:
            return
        try:
            sock.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", message.split("=")[0], exc)

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        """Send STATUS= only when it changed: systemd keeps the last one.

        Any local user reads it (``systemctl status``), so no secret may be in it.
        """
        line = redact(text.replace("\n", " "))
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        sock = getattr(self._notifier, "socket", None)
        if sock is not None:
            sock.close()
        self._notifier = None


def _watchdog_usec() -> int | None:
    value = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not value:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    try:
        usec = int(value)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number", value)
        return None
    return usec if usec > 0 else None
