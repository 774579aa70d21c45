"""The secrets of the config, and the one function that scrubs them from outgoing text.

Everything that leaves the process passes through ``redact``: log lines, the sd_notify
STATUS line (any local user reads it with ``systemctl status``), the status socket, CLI
output, evidence files, notifications. A provider's answer may echo the request it got
(DuckDNS's token travels in the query string), so scrubbing only the log is not enough.

Components, the daemon and the CLI all import this module; it imports nothing of theirs.
"""

from __future__ import annotations

import html
import json
import re
import sys
import threading
from typing import Any, TextIO, cast
from urllib.parse import quote, quote_plus

from gateway.yaml_binder import Secret

MARK = "<redacted>"
# Shorter values would scrub ordinary words; no real token is this short.
MIN_LENGTH = 4

_lock = threading.Lock()
_forms: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _encodings(value: str) -> set[str]:
    """The ways ``value`` appears in text we send on: as is, in a URL, in JSON, in HTML."""
    return {
        value,
        quote(value),  # in a path
        quote(value, safe=""),
        quote_plus(value),  # in a query string, as requests encodes it
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        html.escape(value),  # in an attribute
        html.escape(value, quote=False),  # in a text node (how page sources serialise it)
    }


def register_secret(value: str) -> None:
    """Scrub ``value`` (and its URL, JSON and HTML encodings) from all output from now on."""
    global _pattern
    if len(value) < MIN_LENGTH:
        return
    with _lock:
        new = {form for form in _encodings(value) if len(form) >= MIN_LENGTH} - _forms
        if not new:
            return
        _forms.update(new)
        # One pass, longest first: a secret that contains another is scrubbed whole.
        ordered = sorted(_forms, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(form) for form in ordered))


def register_secrets(config: object) -> None:
    """Register every ``Secret`` found in ``config`` (a Config, a LoadedConfig, a section)."""

    def walk(value: object) -> None:
        if isinstance(value, Secret):
            register_secret(value.reveal())
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``<redacted>``.

    The one function every way out calls, notifications included.
    """
    pattern = _pattern  # replaced whole on registration, never mutated: no lock needed
    return pattern.sub(MARK, text) if pattern is not None else text


class RedactingStream:
    """A text stream that scrubs secrets from everything written to the one it wraps."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)  # what print() and logging expect: the caller's length

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def redact_standard_streams() -> None:
    """Route the CLI's stdout and stderr through ``redact`` (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, cast(TextIO, RedactingStream(stream)))
