"""Logging to stderr that journald reads well, and that never shows a secret."""

from __future__ import annotations

import logging
import os
import sys
import threading

from gateway.config import LoadedConfig, Secret

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()

# syslog priorities, which journald takes from a "<N>" prefix on each line
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def register_secret(value: str) -> None:
    """Never print ``value``: every log line is scrubbed of it."""
    if len(value) >= 4:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


def register_secrets(loaded: LoadedConfig) -> None:
    """Scrub every secret of the config from all log lines from now on."""

    def walk(value: object) -> None:
        if isinstance(value, Secret):
            register_secret(value.reveal())
            # A file of several secrets (notify.urls_file: one URL a line) hides each one.
            for line in value.reveal().splitlines():
                register_secret(line.strip())
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(loaded.config)


def redact(text: str) -> str:
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        fmt = (
            "%(name)s: %(message)s"
            if journal
            else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        )
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        if self.journal:
            priority = _PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{priority}>{line}" for line in text.splitlines())
        return text


def setup(level: str = "info") -> None:
    """Configure the root logger once; journald adds its own timestamps."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter that would drown the journal on a Pi.
    for noisy in ("asyncssh", "selenium", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
