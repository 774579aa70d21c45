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
from urllib.parse import quote, quote_plus, unquote, unquote_plus

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


_PUBLIC_HOST = re.compile(
    r"^(localhost|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\.?)(:[0-9]{1,5})?$"
)


def is_public_host(hostport: str) -> bool:
    """A DNS name, an address or ``localhost`` (with a port or not): no secret."""
    return _PUBLIC_HOST.match(hostport) is not None


def _url_parts(url: str) -> tuple[list[str], list[str]]:
    """(the parts that are secret wherever they stand: userinfo and a host that is no public
    name; the parts that may be: path segments, query values, the fragment)."""
    _scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return [], []
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    always: list[str] = []
    if at:
        always += [userinfo, *userinfo.split(":")]
    if hostport and not is_public_host(hostport):
        always += [hostport, *hostport.split(":")]
    maybe = [*path.split("/"), fragment]
    for item in query.split("&"):
        value = item.partition("=")[2]
        maybe += [value, unquote_plus(value)]
    return _forms_of(always), _forms_of(maybe)


def _forms_of(parts: list[str]) -> list[str]:
    found: list[str] = []
    for part in parts:
        for form in (part, unquote(part)):
            if form and form not in found:
                found.append(form)
    return found


def url_parts(url: str) -> list[str]:
    """Every part of a service URL (``scheme://user:password@host/path?key=value``) that can
    be a secret, as written and unquoted.

    Apprise puts secrets anywhere: the userinfo (passwords), the host (a Telegram bot
    token, a Discord webhook id: any host that is not a DNS name, an address or
    ``localhost``), path segments (an ntfy topic, a Slack token) and query values
    (``?token=``)."""
    always, maybe = _url_parts(url)
    return always + [part for part in maybe if part not in always]


# A path segment or query value that is one plain word ("alerts", "POST", "high") is a
# path or an option, or a topic anyone can guess: scrubbing it from all output would
# blank the same word everywhere (a component named "alerts", the status's JSON keys).
_PLAIN_WORD = re.compile(r"[A-Za-z]{1,12}")


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` to scrub from all output: userinfo, a host that is no public
    name, and every path segment and query value that is not one plain word."""
    always, maybe = _url_parts(url)
    return always + [part for part in maybe if not _PLAIN_WORD.fullmatch(part)]


def register_url(url: str) -> None:
    """Register ``url`` whole and its secret parts (``url_secrets``).

    Parts shorter than MIN_LENGTH, or plain words, are not registered (they would scrub
    ordinary words from every line); text about the URL itself (apprise's messages) goes
    through ``scrub_parts``, which takes every part out, however short.
    """
    register_secret(url.strip())
    for part in url_secrets(url):
        register_secret(part)


def scrub_parts(text: str, url: str) -> str:
    """``text`` (a message about ``url``) without any of ``url``'s parts, however short:
    a short one only where it stands alone (``'abc'``, ``/abc``), not inside a word."""
    for part in sorted(url_parts(url), key=len, reverse=True):
        if len(part) >= MIN_LENGTH:
            text = text.replace(part, MARK)
        else:
            text = re.sub(rf"(?<![\w-]){re.escape(part)}(?![\w-])", MARK, text)
    return redact(text)


def register_secrets(config: object) -> None:
    """Register every ``Secret`` found in ``config`` (a Config, a LoadedConfig, a section)."""

    def walk(value: object) -> None:
        if isinstance(value, Secret):
            register_secret(value.reveal())
            # A file of several secrets (notify.urls_file: one URL a line) hides each one.
            for line in value.reveal().splitlines():
                register_secret(line.strip())
                if "://" in line:
                    # A URL's secret is often one part of it (an ntfy topic, a bot token),
                    # and services echo the part, not the URL.
                    register_url(line)
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
