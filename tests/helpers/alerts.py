"""A local HTTP server that takes apprise's ``json://`` posts, as a phone service would:
gateway/sim/inbox.py's (the demo's and the soak's), waiting as a test does.

It can answer the first N posts with HTTP 500 (a service having a bad minute).
"""

from __future__ import annotations

from typing import Any

from gateway.sim import inbox


class Inbox(inbox.Inbox):
    def wait_for(self, text: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first accepted post whose title contains ``text``; fails the test if none
        comes within ``timeout``."""
        post = super().wait_for(text, timeout)
        if post is None:
            raise AssertionError(f"no post titled with {text!r} in {timeout}s; got {self.titles()}")
        return post
