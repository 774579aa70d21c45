"""Screenshots and page state saved when something goes wrong, the newest N kept.

Each anomaly leaves ``<when>-<session>-<what>.png`` (when the browser can still take one)
and ``.json`` (what the page showed and what the gateway decided) in the screenshots
directory; the status shows the latest path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from gateway.atomic import atomic_write
from gateway.secrets import redact

log = logging.getLogger(__name__)


class Evidence:
    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep

    def save(
        self, session: str, what: str, facts: dict[str, Any], driver: Any | None = None
    ) -> str | None:
        """Write the evidence; return the screenshot's path (else the JSON's), or None."""
        if self.keep <= 0:
            return None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Explicitly: the unit's UMask=0077 would make mkdir's 0750 a 0700, and the
            # service user's group (the login user) copies screenshots from here.
            self.directory.chmod(0o750)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
            stem = f"{stamp}-{_safe(session)}-{_safe(what)}"
            json_path = self.directory / f"{stem}.json"
            # Page text and URLs may show a secret (a provider page echoing a token).
            text = redact(json.dumps(facts, indent=2, default=str))
            atomic_write(json_path, text, mode=0o640)
            result = str(json_path)
            if driver is not None:
                try:
                    png = driver.get_screenshot_as_png()
                except Exception as exc:  # a dying browser: the JSON must still be kept
                    log.debug("no screenshot for %s: %s", stem, exc)
                else:
                    png_path = self.directory / f"{stem}.png"
                    atomic_write(png_path, png, mode=0o640)
                    result = str(png_path)
            self.prune()
            return result
        except OSError as exc:
            log.warning("could not save evidence in %s: %s", self.directory, exc)
            return None

    def prune(self) -> None:
        """Keep the newest ``keep`` anomalies (a PNG and its JSON count as one)."""
        stems = sorted({p.stem for p in self.directory.glob("*.json")})
        for stem in stems[: max(0, len(stems) - self.keep)]:
            for suffix in (".json", ".png"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{stem}{suffix}").unlink()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:40] or "x"
