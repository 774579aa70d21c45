"""The sessions budget (issue 26, item 4): the config check warns when the sessions need
more Chromium memory than browser.max_memory_mb allows or the machine has."""

from __future__ import annotations

from gateway.config import (
    CHROMIUM_EXTRA_SESSION_MB,
    CHROMIUM_FIRST_SESSION_MB,
    chromium_estimate_mb,
    load_config_text,
    sessions_budget_warnings,
    sessions_carried,
)


def config_with(sessions: int, max_memory_mb: int = 800) -> str:
    lines = ["sessions:"]
    for i in range(sessions):
        lines += [
            f"  - name: s{i}",
            f"    notebook_url: https://colab.research.google.com/drive/n{i}",
            f"    forwards: {{ssh: {{colab: 22, local: {20022 + i}}}}}",
        ]
    lines += [f"browser: {{max_memory_mb: {max_memory_mb}}}", "ddns: {provider: none}"]
    return "\n".join(lines) + "\n"


def test_estimate_and_carried_agree() -> None:
    assert chromium_estimate_mb(1) == CHROMIUM_FIRST_SESSION_MB
    assert chromium_estimate_mb(3) == CHROMIUM_FIRST_SESSION_MB + 2 * CHROMIUM_EXTRA_SESSION_MB
    for sessions in (1, 2, 4, 8):
        assert sessions_carried(chromium_estimate_mb(sessions)) == sessions
    assert sessions_carried(CHROMIUM_FIRST_SESSION_MB - 1) == 0


def test_more_sessions_than_max_memory_mb_carries_warns_with_the_key_and_a_count() -> None:
    limit = chromium_estimate_mb(3)  # room for three
    config = load_config_text(config_with(4, max_memory_mb=limit)).config
    warnings = sessions_budget_warnings(config, memory_mb=None)
    assert len(warnings) == 1
    assert "browser.max_memory_mb" in warnings[0] and "at most 3 sessions" in warnings[0]


def test_more_sessions_than_the_machine_carries_warns() -> None:
    config = load_config_text(config_with(8, max_memory_mb=4000)).config
    small = chromium_estimate_mb(2) + 300  # room for two beside the system
    warnings = sessions_budget_warnings(config, memory_mb=small)
    assert len(warnings) == 1 and "at most 2 sessions" in warnings[0], warnings


def test_a_budget_that_fits_says_nothing() -> None:
    config = load_config_text(config_with(2)).config
    assert sessions_budget_warnings(config, memory_mb=8192) == []
    assert sessions_budget_warnings(load_config_text(config_with(1)).config, 100) == []
