"""Logging to stderr that journald reads well, and that never shows a secret."""

from __future__ import annotations

import logging
import os
import sys

# The registry lives in gateway.secrets, shared with every other way out; these names stay
# here for the code that scrubs its own secrets (a provider's token, say).
from gateway.secrets import redact, register_secret
from gateway.untrusted import shown_lines

__all__ = ["redact", "register_secret", "set_level", "setup"]

# syslog priorities, which journald takes from a "<N>" prefix on each line
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


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
        text = shown_lines(redact(super().format(record)))
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
