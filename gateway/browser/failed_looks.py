"""When failed looks at a page mean a hung page rather than a navigation in progress.

A look fails quickly while a page is being replaced (no document to run a script in), and
slowly when the renderer is stuck: chromedriver then answers "Timed out receiving message
from renderer" after the script timeout, page_timeout. Counting failures alone misses the
slow kind (twenty of them took over three minutes with page_timeout 5 s), so the time since
the first failure of the row counts too.
"""

from __future__ import annotations

MAX_FAILED_LOOKS = 20  # quick failures in a row (0.5 s apart): no navigation takes that long


class FailedLooks:
    """Failed looks in a row; ``failed()`` says when they add up to a hung page."""

    def __init__(self, hung_after: float, max_count: int = MAX_FAILED_LOOKS) -> None:
        self.hung_after = hung_after  # seconds of failing in a row
        self.max_count = max_count
        self.count = 0
        self.since: float | None = None

    def ok(self) -> None:
        self.count = 0
        self.since = None

    def failed(self, now: float) -> bool:
        """Record a failed look at monotonic time ``now``; True when the page is hung."""
        self.count += 1
        if self.since is None:
            self.since = now
        return self.count >= self.max_count or now - self.since >= self.hung_after
