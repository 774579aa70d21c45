"""A Chromium that died or was killed leaves no descriptor behind in the daemon.

Found by `make soak` (docs/soak.md): the daemon's open descriptors grew by two or three with
every Chromium restart, the pipe to chromedriver's stdin and the HTTP connection to it
among them: `Browser.kill()` ended the processes but not what the daemon held of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.browser import launch
from gateway.config import BrowserConfig

pytestmark = pytest.mark.slow


def open_descriptors() -> list[str]:
    """What this process holds open, by target (pipe:[…], socket:[…], a path)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own descriptor, closed meanwhile
            continue
    return sorted(found)


@pytest.mark.parametrize("polite", [False, True], ids=["killed", "closed"])
def test_restarting_chromium_leaves_no_descriptor_behind(tmp_path: Path, polite: bool) -> None:
    config = BrowserConfig(profile_dir=str(tmp_path / "profile"), engine="chromium")
    # One start first: Selenium's and psutil's own lazy set-up is not a leak.
    launch.launch(config, tmp_path / "state").close(polite=polite)
    before = open_descriptors()
    for _ in range(3):  # bounded: three restarts, each would leave its own
        browser = launch.launch(config, tmp_path / "state")
        browser.driver.get("about:blank")  # an HTTP connection to chromedriver in the pool
        browser.close(polite=polite)
    after = open_descriptors()
    assert len(after) <= len(before), sorted(set(after) - set(before))
