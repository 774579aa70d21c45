"""Client Hints of the headless shell, made those of the full Chromium.

The shell names itself to pages: navigator.userAgentData and the Sec-CH-UA headers carry a
brand "HeadlessChrome" that the full Chromium does not send (the user agent string itself
is set by --user-agent, see launch.user_agent). A user agent that says Chrome while its
hints say HeadlessChrome would be a contradiction no real browser shows. So the shell's own
hints, read once, are set again without that brand for each window through CDP
(Emulation.setUserAgentOverride; launch.Browser.present_as_chromium).
"""

from __future__ import annotations

from typing import Any

HEADLESS_BRAND = "HeadlessChrome"
_HINTS_SCRIPT = """
const done = arguments[arguments.length - 1];
if (!navigator.userAgentData) { done(null); return; }
navigator.userAgentData.getHighEntropyValues(
  ["architecture", "bitness", "model", "platformVersion", "fullVersionList", "wow64"]
).then(done, () => done(null));
"""


def user_agent_override(driver: Any, agent: str) -> dict[str, Any] | None:
    """Emulation.setUserAgentOverride's argument: the shell's own hints, read on a secure
    page (file:///dev/null: hints exist only in secure contexts, and data: is not one),
    with the headless brand left out; None if the shell offers no hints."""
    driver.get("file:///dev/null")
    hints = driver.execute_async_script(_HINTS_SCRIPT)
    if not isinstance(hints, dict):
        return None

    def without_headless(brands: Any) -> list[dict[str, str]]:
        return [b for b in brands or [] if b.get("brand") != HEADLESS_BRAND]

    return {
        "userAgent": agent,
        "userAgentMetadata": {
            "brands": without_headless(hints.get("brands")),
            "fullVersionList": without_headless(hints.get("fullVersionList")),
            "platform": hints.get("platform", ""),
            "platformVersion": hints.get("platformVersion", ""),
            "architecture": hints.get("architecture", ""),
            "model": hints.get("model", ""),
            "mobile": bool(hints.get("mobile", False)),
            "bitness": hints.get("bitness", ""),
            "wow64": bool(hints.get("wow64", False)),
        },
    }
