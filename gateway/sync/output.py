"""Reading what rsync, ssh and the VM print, with a bound on every part of it.

The VM writes into these streams (ssh passes the remote side's stderr through; a remote
rsync sends its own messages, which ours prints): it can print gigabytes, lines without
an end, escape codes. Nothing here keeps more than a bounded tail, and every line handed on
is cut at ``MAX_LINE`` bytes. Escaping is the consumer's business (``untrusted()`` where
a text reaches the State, a log or a terminal).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

MAX_LINE = 4096  # bytes; rsync's own lines are far shorter, a longer one is cut
TAIL_LINES = 50  # what is kept of a stream to explain a failure
CHUNK = 64 * 1024


class Tail:
    """The last ``TAIL_LINES`` lines of a stream (each at most ``MAX_LINE`` bytes)."""

    def __init__(self, lines: int = TAIL_LINES) -> None:
        self.lines: deque[str] = deque(maxlen=lines)
        self.total = 0  # lines seen, kept or not

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.total += 1

    def text(self) -> str:
        return "\n".join(self.lines)

    def last(self) -> str:
        """The last line that is not blank, or ''."""
        return next((ln.strip() for ln in reversed(self.lines) if ln.strip()), "")


async def read_lines(
    stream: asyncio.StreamReader | None, on_line: Callable[[str], None], sep: bytes = b"\n"
) -> None:
    """Call ``on_line`` for every line of ``stream`` until its end, never holding more than
    one chunk and one (cut) line in memory. A line longer than ``MAX_LINE`` is handed on
    cut to that length; the rest of it, up to the next separator, is dropped."""
    if stream is None:
        return
    pending = bytearray()
    dropping = False  # inside the part of an over-long line that is dropped
    while chunk := await stream.read(CHUNK):
        start = 0
        while start < len(chunk):
            end = chunk.find(sep, start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not dropping:
                pending += piece[: MAX_LINE - len(pending)]
                if end < 0 and len(pending) >= MAX_LINE:
                    on_line(pending.decode(errors="replace"))
                    pending.clear()
                    dropping = True
            if end < 0:
                break
            if not dropping:
                on_line(pending.decode(errors="replace"))
            pending.clear()
            dropping = False
            start = end + len(sep)
    if pending and not dropping:
        on_line(pending.decode(errors="replace"))
