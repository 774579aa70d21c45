"""The one gate for text from outside: escaped, bounded, idempotent."""

from __future__ import annotations

import pytest

from gateway.untrusted import quoted, untrusted

HOSTILE = [
    "\x1b]0;owned\x07\x1b[2J\x1b[H",  # retitle the terminal, clear the screen
    "line one\nforged: ok\r",
    "\u202eexe.txt",  # right-to-left override
    "zero\u200bwidth\u2028sep",
    "\x00\x7f\x9b31m",  # NUL, DEL, C1 CSI
    "\ud800lone",
    "\U000e0041tag",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_nothing_that_does_not_print_as_itself_survives(text: str) -> None:
    shown = untrusted(text)
    assert shown.isprintable(), shown
    assert "\x1b" not in shown and "\n" not in shown and "\u202e" not in shown
    assert untrusted(shown) == shown


def test_named_escapes_read_like_python() -> None:
    assert untrusted("a\nb\rc\td\x1b") == "a\\nb\\rc\\td\\x1b"


def test_length_is_capped_including_the_ellipsis_and_stays_capped_when_escaped_again() -> None:
    shown = untrusted("\x1b" * 1000, limit=50)
    assert len(shown) == 50 and shown.endswith("…")
    assert untrusted(shown, limit=50) == shown
    assert untrusted("x" * 50, limit=50) == "x" * 50
    assert untrusted("x" * 51, limit=50) == "x" * 49 + "…"


def test_printable_text_of_any_script_is_left_alone() -> None:
    assert untrusted("Laufzeit getrennt – 実行時間 ✓") == "Laufzeit getrennt – 実行時間 ✓"


def test_bytes_and_other_objects() -> None:
    assert untrusted(b"ok\xff\n") == "ok\ufffd\\n"
    assert untrusted(404) == "404"


def test_quoted_marks_where_the_peer_string_starts_and_ends() -> None:
    assert quoted("it's\n") == "'it\\'s\\n'"
