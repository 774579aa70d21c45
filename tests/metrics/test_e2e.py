"""The simulated Colab disconnects, as seen on /metrics: the real daemon against the
simulated page and VM (gateway/sim/harness.py, as in `make demo`), scraped before and after
the "Runtime disconnected" dialog, parsed with prometheus-client's parser."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers.metrics import EXPECTED, family_names, samples, value

from gateway.sim import scenarios
from gateway.sim.harness import SESSION, LoopHarness, missing_parts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopHarness]:
    missing = missing_parts() if os.geteuid() == 0 else []
    if missing:
        pytest.skip("parts of the loop are not here yet: " + "; ".join(missing))
    lines: list[str] = []
    harness = LoopHarness(tmp_path_factory.mktemp("metrics-e2e"), log=lines.append)
    with harness:
        step = scenarios.bring_up(harness)
        assert step.ok, f"{step.detail}\n" + "\n".join(lines)
        yield harness


def test_a_colab_disconnect_moves_the_metrics(loop: LoopHarness) -> None:
    before = loop.scrape()
    assert family_names(before) >= set(EXPECTED)
    got = samples(before)
    assert value(got, "colab_gateway_runtime_connected", session=SESSION) == 1
    assert value(got, "colab_gateway_tunnel_up", session=SESSION) == 1
    (build,) = got["colab_gateway_build_info"]
    assert dict(build)["chromium"], "Chromium's version once the browser runs"
    assert dict(build)["chromium_engine"] in ("headless-shell", "chromium")

    def count(text: str, name: str, **labels: str) -> float:
        return value(text, name, session=SESSION, **labels) or 0.0

    dialogs = count(before, "colab_gateway_dialogs_total", kind="runtime_disconnected")
    reconnects = count(before, "colab_gateway_reconnects_total", reason="runtime_disconnected")
    resets = count(before, "colab_gateway_vm_resets_total")

    step = scenarios.disconnect_dialog(loop)
    assert step.ok, step.detail

    after = loop.scrape()
    assert count(after, "colab_gateway_dialogs_total", kind="runtime_disconnected") > dialogs
    assert (
        count(after, "colab_gateway_reconnects_total", reason="runtime_disconnected") > reconnects
    )
    assert count(after, "colab_gateway_vm_resets_total") > resets
    assert value(after, "colab_gateway_runtime_connected", session=SESSION) == 1
    # The textfile the harness configured holds the same metrics, for node_exporter.
    assert family_names(loop.metrics_textfile.read_text()) >= set(EXPECTED)


def test_a_chromium_crash_counts_a_restart(loop: LoopHarness) -> None:
    def restarts() -> float:
        # Summed over reasons: whether a dead Chromium is noticed as "exited" or as a
        # page that stopped answering depends on which call meets it first.
        return sum(samples(loop.scrape()).get("colab_gateway_browser_restarts_total", {}).values())

    before = restarts()
    step = scenarios.chromium_killed(loop)
    assert step.ok, step.detail
    assert restarts() > before
    assert value(loop.scrape(), "colab_gateway_runtime_connected", session=SESSION) == 1
