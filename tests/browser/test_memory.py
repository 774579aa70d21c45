"""The memory flags of launch.LEAN_FLAGS do what docs/browser.md measured them for."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.browser import launch
from gateway.config import BrowserConfig
from gateway.sim import SimColab

pytestmark = pytest.mark.slow

POPUP_FEATURES = ("WebUIOmniboxPopup", "WebUIOmniboxAimPopup")


def omnibox_popups(driver: Any) -> list[str]:
    """URLs of the address bar's WebUI popups Chromium has loaded (CDP targets)."""
    targets = driver.execute_cdp_cmd("Target.getTargets", {})["targetInfos"]
    return [t["url"] for t in targets if t["url"].startswith("chrome://omnibox-popup")]


def without_popup_features(flags: tuple[str, ...]) -> tuple[str, ...]:
    kept = []
    for flag in flags:
        if flag.startswith("--disable-features="):
            names = flag.split("=", 1)[1].split(",")
            flag = "--disable-features=" + ",".join(n for n in names if n not in POPUP_FEATURES)
        kept.append(flag)
    return tuple(kept)


def test_lean_flags_keep_chromium_from_preloading_the_omnibox_popups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A control Chromium with the same flags minus the two features shows that this
    # Chromium preloads the popups at all, and by when; ours, started first, must not.
    # The full browser (the snap's; the headless shell has no address bar at all).
    config = BrowserConfig(engine="chromium")
    with SimColab() as sim:
        ours = launch.launch(config, tmp_path / "ours")
        control = None
        try:
            monkeypatch.setattr(launch, "LEAN_FLAGS", without_popup_features(launch.LEAN_FLAGS))
            control = launch.launch(config, tmp_path / "control")
            monkeypatch.undo()
            ours.driver.get(sim.url)
            control.driver.get(sim.url)
            deadline = time.monotonic() + 60
            while not omnibox_popups(control.driver):
                if time.monotonic() > deadline:
                    pytest.skip("this Chromium does not preload the omnibox popups at all")
                time.sleep(0.2)
            assert omnibox_popups(ours.driver) == []
            assert ours.alive()
        finally:
            ours.close()
            if control is not None:
                control.close()
