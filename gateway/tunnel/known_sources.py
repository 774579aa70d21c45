"""The sources that logged in to the endpoint before, remembered across restarts.

The guard reserves unauthenticated places for them (guard.py), so strangers holding every
place cannot keep Colab from re-dialling after a drop. Only the order matters (least
recently seen first, evicted first), never the stored time: a Pi has no battery clock.
The file is small and bounded (``tunnel.known_sources_max`` entries), written atomically,
and a damaged or hostile one is ignored with a warning, never fatal.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from pathlib import Path

from gateway.atomic import atomic_write

log = logging.getLogger("gateway.tunnel")

FILE_NAME = "tunnel-sources.json"
MAX_FILE_BYTES = 1 << 20  # far above 4096 entries; a bigger file is not ours
MAX_SOURCE_CHARS = 64  # an IPv4 address or an IPv6 /64 in text
REWRITE_AFTER = 3600.0  # seconds: a source seen again is rewritten at most this often


class KnownSources:
    def __init__(self, path: Path | None, limit: int) -> None:
        self.path = path
        self.limit = limit
        # source -> wall-clock time of the last login (for a human reading the file)
        self.sources: OrderedDict[str, float] = OrderedDict()
        self._written: dict[str, float] = {}  # monotonic time each source was last saved
        if path is not None and limit > 0:
            self._load(path)

    def __contains__(self, source: object) -> bool:
        return source in self.sources

    def __len__(self) -> int:
        return len(self.sources)

    def remember(self, source: str) -> None:
        """``source`` logged in: make it the most recently seen, and save if that changed."""
        if self.limit <= 0 or len(source) > MAX_SOURCE_CHARS:
            return
        newest = next(reversed(self.sources), None) if self.sources else None
        now = time.monotonic()
        self.sources[source] = time.time()
        self.sources.move_to_end(source)
        while len(self.sources) > self.limit:
            self.sources.popitem(last=False)
        if newest == source and now - self._written.get(source, -REWRITE_AFTER) < REWRITE_AFTER:
            return  # nothing a restart would miss: spare the SD card
        self._written[source] = now
        self._save()

    def _load(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s; ignoring it", path, exc.strerror or exc)
            return
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            document = json.loads(raw.decode("utf-8"))
            entries = document["sources"]
            if not isinstance(entries, list):
                raise ValueError("'sources' is not a list")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            log.warning(
                "%s is damaged (%s); ignoring it: the sources that logged in before get no "
                "reserved place until they log in again",
                path,
                exc,
            )
            return
        for entry in entries[-self.limit :]:
            source, seen = _parse_entry(entry)
            if source is not None:
                self.sources[source] = seen
                self.sources.move_to_end(source)

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "version": 1,
            "sources": [
                {"source": source, "last_login": round(seen)}
                for source, seen in self.sources.items()
            ],
        }
        try:
            atomic_write(self.path, json.dumps(document, indent=1) + "\n")
        except OSError as exc:
            log.warning(
                "cannot write %s: %s; the sources that logged in are remembered until the "
                "next restart only",
                self.path,
                exc.strerror or exc,
            )


def _parse_entry(entry: object) -> tuple[str | None, float]:
    """``{"source": …, "last_login": …}`` or a bare string; anything else is skipped."""
    if isinstance(entry, dict):
        source, seen = entry.get("source"), entry.get("last_login", 0)
    else:
        source, seen = entry, 0
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE_CHARS:
        return None, 0.0
    if not isinstance(seen, int | float) or isinstance(seen, bool):
        seen = 0
    return source, float(seen)
