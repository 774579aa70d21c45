"""What apprise makes of a notify URL: whether it can be used, a form of it safe to show,
and apprise's own words about it with the URL's parts taken out.

A notify URL's secret is usually one part of it (an ntfy topic, a Telegram bot token, a
password), and apprise's messages name that part ("Failed to send ntfy notification to
topic 'my-topic'"). So apprise's text is never shown as it comes: every part of the URL,
however short, is scrubbed from it (``secrets.scrub_parts``), and it is escaped and capped
(``untrusted``). What we show of a URL is ``shown(url)``: scheme, public host and port,
everything else ``<redacted>``.

The config check (``check-config``), the alerts component and ``notify --test`` share it;
it imports nothing of theirs.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

from gateway.secrets import MARK, is_public_host, register_url, scrub_parts
from gateway.untrusted import untrusted

SERVICES_PAGE = "https://github.com/caronc/apprise/wiki"
REASON_LIMIT = 200


_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")


class UnusableURL(ValueError):
    """apprise cannot use the URL; the message says why in our words, with ``shown(url)``."""


def _split(url: str) -> tuple[str, str, bool, bool]:
    """(scheme, host and port as they may be shown, had userinfo, had path/query)."""
    scheme, _, rest = url.strip().partition("://")
    rest = rest.partition("#")[0]
    netloc = re.split(r"[/?]", rest, maxsplit=1)[0]
    _userinfo, at, hostport = netloc.rpartition("@")
    host = hostport if hostport and is_public_host(hostport) else (MARK if hostport else "")
    return scheme, host, bool(at), len(rest) > len(netloc) and rest[len(netloc) :] != "/"


def shown(url: str) -> str:
    """``ntfy://ntfy.sh/<redacted>``, ``json://<redacted>@127.0.0.1:8080/<redacted>``: the
    scheme and a public host, never a secret (whatever its length)."""
    scheme, host, userinfo, more = _split(url)
    safe_scheme = scheme if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", scheme) else MARK
    return f"{safe_scheme}://{f'{MARK}@' if userinfo else ''}{host}{f'/{MARK}' if more else ''}"


def label(url: str, index: int) -> str:
    """``URL 2 (ntfy://ntfy.sh)``: how status lines, logs and ``notify --test`` name a URL."""
    scheme, host, _, _ = _split(url)
    return untrusted(f"URL {index} ({scheme}://{host})", 80)


def apprise_said(text: str, url: str) -> str:
    """apprise's words about ``url``, fit to show: any URL in them written as ``shown(url)``
    (apprise's own privacy form keeps a token's first and last characters), the URL's
    parts out, escaped, capped."""
    text = _ANY_URL.sub(lambda _: shown(url), text.strip())
    return untrusted(scrub_parts(text, url), REASON_LIMIT)


def apprise_module() -> Any:
    """apprise, imported late (it takes a while on a Pi) and untyped: one place says so.

    Its logger stops at itself: its messages name the URL's parts, so they reach the log
    only through ``quiet()``'s capture and ``apprise_said``."""
    import apprise

    logging.getLogger("apprise").propagate = False
    return apprise


@contextlib.contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[list[str]]:
    """Capture apprise's log lines at ``level`` and above; the list fills when the block ends."""
    apprise = apprise_module()
    lines: list[str] = []
    with apprise.LogCapture(level=level, fmt="%(message)s") as captured:
        try:
            yield lines
        finally:
            lines.extend(ln.strip() for ln in captured.getvalue().splitlines() if ln.strip())


def _known_schemes(apprise: Any) -> Any:
    """apprise's plugin manager (``scheme in`` it, ``[scheme].setup_url``), None if moved."""
    return getattr(getattr(apprise, "apprise", None), "N_MGR", None)


def load(url: str) -> Any:
    """apprise's plugin for ``url``; ``UnusableURL`` (in our words) when apprise cannot use it.

    Registers the URL's parts for redaction first, so nothing said afterwards shows them.
    """
    register_url(url)
    apprise = apprise_module()
    scheme = url.strip().partition("://")[0].lower()
    manager = _known_schemes(apprise)
    if manager is not None and scheme not in manager:
        raise UnusableURL(
            f"apprise knows no service {untrusted(scheme, 30)}:// ({shown(url)}): check the "
            f"spelling of the scheme; {SERVICES_PAGE} lists the services and their URLs"
        )
    reason = ""
    plugin = None
    with quiet() as said:
        try:
            plugin = apprise.Apprise.instantiate(url, suppress_exceptions=False)
        except Exception as exc:  # a plugin refusing its arguments raises what it likes
            reason = str(exc)
    if plugin:
        return plugin
    reason = reason or (said[-1] if said else "")
    guide = SERVICES_PAGE
    if manager is not None:
        guide = getattr(manager[scheme], "setup_url", None) or SERVICES_PAGE
    because = f": {apprise_said(reason, url)}" if reason else ""
    raise UnusableURL(
        f"apprise cannot use this {untrusted(scheme, 30)}:// URL ({shown(url)}){because}; "
        f"write it as {untrusted(guide, 100)} shows"
    )
