"""End to end: the real daemon samples the simulated Colab VM (its stand-in nvidia-smi
prints recorded answers) over one ssh connection; the facts reach ``status --json``, the
status report and /metrics; garbage costs one warning."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sim import scenarios
from gateway.sim.harness import LoopHarness, missing_parts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopHarness]:
    missing = missing_parts()
    if missing:
        pytest.skip("parts of the loop are not here: " + "; ".join(missing))
    h = LoopHarness(tmp_path_factory.mktemp("vmstats"), top="vm_stats:\n  every: 1s\n")
    with h:
        step = scenarios.bring_up(h)
        assert step.ok, step.detail
        yield h


def _vm(h: LoopHarness) -> dict[str, object]:
    return dict(h.session_facts().get("vm", {}))


def _series(metrics: str, accelerator: str) -> bool:
    return any(
        line.startswith("colab_gateway_vm_gpu_utilization_ratio{")
        and f'accelerator="{accelerator}"' in line
        and 'session="colab"' in line
        for line in metrics.splitlines()
    )


def test_facts_of_each_recorded_gpu_reach_status_and_metrics(harness: LoopHarness) -> None:
    h = harness
    assert h.vm is not None
    for recorded, name, ratio in [
        ("nvidia-smi-t4.csv", "Tesla T4", 0.87),
        ("nvidia-smi-a100.csv", "NVIDIA A100-SXM4-40GB", 0.0),
        ("nvidia-smi-l4.csv", "NVIDIA L4", 0.42),
    ]:
        h.vm.set_nvidia_smi((FIXTURES / recorded).read_text())
        h.wait(f"{name} in status --json", lambda n=name: _vm(h).get("accelerator") == n, 30)
        vm = _vm(h)
        assert vm["gpu_utilization"] == pytest.approx(ratio)
        assert isinstance(vm["memory_total"], int) and vm["memory_total"] > 0
        assert isinstance(vm["uptime_seconds"], float)
        assert vm["disk_used"] is None  # the sim VM has no /content: absent, not 0
        h.wait(f"{name} in /metrics", lambda n=name: _series(h.scrape(), n), 15)
    report = h.cli("status")
    assert "L4 42 %" in report and "VM L4 42 %" in report


def test_garbage_costs_one_warning_and_no_gpu_facts(harness: LoopHarness) -> None:
    h = harness
    assert h.vm is not None
    log = Path(h.logs_dir / "daemon.log")
    h.vm.set_nvidia_smi((FIXTURES / "nvidia-smi-garbage.csv").read_text())
    h.wait("the garbage noticed", lambda: "has not 4 fields" in str(_vm(h).get("problem")), 30)
    first = _vm(h)["sampled_at"]
    h.wait("two more samples", lambda: (_vm(h)["sampled_at"] or 0) > first + 1.5, 30)  # type: ignore[operator]
    vm = _vm(h)
    assert vm["accelerator"] is None and vm["gpu_utilization"] is None
    assert isinstance(vm["memory_total"], int)
    warnings = [ln for ln in log.read_text().splitlines() if "VM facts:" in ln and "WARNING" in ln]
    assert len(warnings) <= 1
    assert all("\x1b" not in ln for ln in log.read_text().splitlines())
    assert h.cli("status").count("vm_stats") >= 1
