"""The selector canary: does Colab's page still have the structures the keep-alive needs?

Colab changes its markup without notice. Rather than failing silently (a Connect button
never found, a dialog never answered, a cell never run), every look at the page
(``colab_dom.PROBE_JS``) also reports which selectors match, and this module decides which
missing ones are news:

* Structures every loaded notebook shows (the connect button and its tooltip, the cells):
  judged once the page has had ``grace`` seconds to render, and again on every look, so a
  late-rendering page clears its own warning. A reload keeps the last verdict until the
  new page has one.
* Structures that exist only at times (a dialog, the reCAPTCHA prompt): absent at load is
  normal, so they are judged only while one is on the page: a dialog that the ``dialog``
  selector does not match, or one whose buttons match nothing. Such a finding stays until
  the next load (the dialog is usually gone by then, answered by a reload).

Pure Python, no browser: ``keepalive.py`` feeds it probes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.browser.colab_dom import DEFAULTS

GRACE = 10.0  # seconds after a load before missing structures count (Colab renders late)
DIALOG_GRACE = 1.0  # a dialog being built is not a dialog of another shape

# Always there once the notebook has rendered (``page_marker`` is the gate, not a finding).
CONNECT_NAMES = ("connect_host", "connect_button", "connect_tooltip_attr")
# Shown only at times: judged while present.
SHAPE_NAMES = ("dialog", "dialog_buttons", "dialog_primary", "recaptcha_button")

DOC = "docs/browser.md"


def load_names(rerun: str) -> tuple[str, ...]:
    """The selectors a loaded page must match, for this ``browser.rerun`` setting: the
    cell's selectors matter only to a keep-alive that re-runs it."""
    if rerun == "bootstrap":
        return (*CONNECT_NAMES, "run_button", "first_cell_editor")
    if rerun == "all":
        return (*CONNECT_NAMES, "notebook_focus")
    return CONNECT_NAMES


def message(names: list[str]) -> str:
    return f"Colab's page changed: {', '.join(names)} match nothing; see {DOC}"


@dataclass
class Canary:
    names: tuple[str, ...]
    grace: float = GRACE
    dialog_grace: float = DIALOG_GRACE
    loaded_at: float = 0.0
    checked: bool = False  # a verdict on the load-time structures exists for this page
    shapes_checked: bool = False  # a dialog or prompt was on the page long enough to judge
    _at_load: list[str] = field(default_factory=list)
    _shape_first_seen: dict[str, float] = field(default_factory=dict)
    _shapes: set[str] = field(default_factory=set)
    _showing_since: float | None = None

    def page_loaded(self, now: float) -> None:
        self.loaded_at = now
        self.checked = False
        self.shapes_checked = False
        # The last page's verdict stands until this page has its own: a page that never
        # renders is reloaded with backoff, and the warning should not blink each time.
        self._shape_first_seen.clear()
        self._shapes.clear()
        self._showing_since = None

    def look(self, probe: dict[str, Any], kind: str, now: float) -> None:
        """Take in one probe of the page; ``kind`` is what ``classify`` made of it."""
        if kind in ("signed_out", "load_failed"):
            return  # not the notebook: nothing to judge
        found = probe.get("found") or {}
        if not found.get("page_marker"):
            return  # not rendered (yet): the load timeout speaks for that
        # None = could not be checked (the connect button's tooltip without the button)
        missing = [n for n in self.names if found.get(n) is False]
        if not missing:
            self.checked, self._at_load = True, []
        elif now - self.loaded_at >= self.grace:
            self.checked, self._at_load = True, missing
        self._look_at_shapes(probe, now)

    def _look_at_shapes(self, probe: dict[str, Any], now: float) -> None:
        showing = bool(probe.get("dialogs") or probe.get("stray_dialogs") or probe.get("recaptcha"))
        if not showing:
            self._showing_since = None
        elif self._showing_since is None:
            self._showing_since = now
        elif now - self._showing_since >= self.dialog_grace:
            self.shapes_checked = True
        seen: set[str] = set()
        if probe.get("stray_dialogs"):
            seen.add("dialog")  # an open dialog the `dialog` selector does not match
        for dialog in probe.get("dialogs") or []:
            buttons = dialog.get("buttons") or []
            if not buttons:
                seen.add("dialog_buttons")
            elif not any(b.get("primary") for b in buttons):
                seen.add("dialog_primary")
        if probe.get("recaptcha") and probe.get("recaptcha_button") is False:
            seen.add("recaptcha_button")
        for name in list(self._shape_first_seen):
            if name not in seen:
                del self._shape_first_seen[name]
        for name in seen:
            first = self._shape_first_seen.setdefault(name, now)
            if now - first >= self.dialog_grace:
                self._shapes.add(name)

    @property
    def missing(self) -> list[str]:
        """Names of the selectors that match nothing, in the order of ``DEFAULTS``."""
        names = set(self._at_load) | self._shapes
        return [n for n in DEFAULTS if n in names]

    @property
    def warning(self) -> str:
        missing = self.missing
        return message(missing) if missing else ""
