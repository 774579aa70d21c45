"""The one gate for text that crossed in from outside: the VM's output, the Colab page's
texts, a provider's answer, a client's string, whatever a local socket said.

Such text may carry terminal escape codes (which repaint a terminal, retitle a tmux window
or hide the rest of a line), newlines (which forge log lines and break the one-line
STATUS=), bidi overrides (which make a name read backwards) and any length. Every place
where it enters the State or a log runs it through ``untrusted()``, and every renderer
(STATUS=, ``colab-gateway status``, the tmux waiting screen, notifications, heartbeat
reasons) runs what it shows through it again: escaping is idempotent, so twice is free
and a path that forgot the first pass is still safe.

Components, the daemon and the CLI all import this module; it imports nothing of theirs.
"""

from __future__ import annotations

import unicodedata

# Categories that never print as themselves: C0/C1 controls and DEL (Cc), format characters
# such as bidi overrides and zero-width joiners (Cf), line and paragraph separators (Zl, Zp),
# lone surrogates (Cs), private use (Co) and unassigned code points (Cn).
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
ELLIPSIS = "…"
DEFAULT_LIMIT = 200


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if unicodedata.category(char) not in _HIDDEN:
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def untrusted(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` fit to show anywhere on one line: every character that does not print as
    itself (escape codes, newlines, bidi overrides…) written as ``\\xNN``/``\\uNNNN``, and
    at most ``limit`` characters, the last one ``…`` when it was cut.

    Idempotent: ``untrusted(untrusted(t, n), n) == untrusted(t, n)``. Bytes are decoded
    as UTF-8 with invalid sequences replaced; anything else goes through ``str()``.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    raw = text if isinstance(text, str) else str(text)
    limit = max(1, limit)
    # Escaping can only lengthen, so look at no more than ``limit`` characters of the input
    # (a 96 MiB answer costs no more than a short one).
    head = raw[: limit + 1]
    escaped = "".join(_escape(c) for c in head)
    if len(escaped) <= limit and len(raw) <= limit:
        return escaped
    return escaped[: limit - 1] + ELLIPSIS


def quoted(text: object, limit: int = DEFAULT_LIMIT) -> str:
    """``untrusted(text)`` in single quotes, for a log line where the reader must see where
    the peer's string starts and ends (a client version, a user name)."""
    return "'" + untrusted(text, limit).replace("'", "\\'") + "'"


def shown_lines(text: str) -> str:
    """``text`` with every hidden character escaped but its line breaks kept, and no bound:
    the log's last line of defence (its formatter runs every record through this), for a
    message or traceback that quotes the outside without ``untrusted()``. Lines stay lines
    (the journal takes each as its own entry, under our own priority prefix), but no escape
    code reaches a terminal that shows the journal."""
    if text.isprintable():
        return text
    return "\n".join("".join(_escape(c) for c in line) for line in text.split("\n"))
