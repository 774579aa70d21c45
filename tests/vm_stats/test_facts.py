"""The VM's facts: recorded nvidia-smi / free / df / uptime outputs parsed, shown in the
status words and the metrics, and the gpu_idle notification sent once and resolved once
through a real json:// receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.alerts import Inbox
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from gateway import status_line
from gateway.alerts.events import Watcher
from gateway.alerts.sender import Sender
from gateway.config import Config, Duration, NotifyConfig, Secret, SessionConfig
from gateway.metrics.collector import StateCollector
from gateway.state import State
from gateway.vm_stats.component import facts_of
from gateway.vm_stats.parse import MARK, parse
from gateway.vocabulary import Health

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1_800_000_000.0


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def output(gpu: str | None) -> str:
    """What SAMPLE_SCRIPT prints on a VM whose nvidia-smi answers ``gpu`` (None: none)."""
    return (
        f"{MARK}gpu\n{gpu or ''}\n{MARK}free\n{fixture('free-b.txt')}"
        f"{MARK}df\n{fixture('df-content.txt')}{MARK}uptime\n{fixture('proc-uptime.txt')}"
        f"{MARK}end\n"
    )


@pytest.mark.parametrize(
    ("recorded", "accelerator", "utilization", "used", "total", "short"),
    [
        ("nvidia-smi-t4.csv", "Tesla T4", 0.87, 11468, 15360, "T4 87 % · 11.2/15 GB"),
        ("nvidia-smi-a100.csv", "NVIDIA A100-SXM4-40GB", 0.0, 3, 40960,
         "A100-SXM4-40GB 0 % · 0.0/40 GB"),
        ("nvidia-smi-l4.csv", "NVIDIA L4", 0.42, 9871, 23034, "L4 42 % · 9.6/22.5 GB"),
    ],
)  # fmt: skip
def test_recorded_gpus_are_parsed_and_shown_short(
    recorded: str, accelerator: str, utilization: float, used: int, total: int, short: str
) -> None:
    sample = parse(output(fixture(recorded)))
    assert sample.problems == []
    facts = facts_of(sample)
    assert facts["accelerator"] == accelerator
    assert facts["gpu_utilization"] == pytest.approx(utilization)
    assert facts["gpu_memory_used"] == used * 1024**2
    assert facts["gpu_memory_total"] == total * 1024**2
    assert facts["memory_total"] == 13609431040
    assert facts["memory_used"] == 13609431040 - 12163637248  # total - available
    assert facts["disk_used"] == 39254433792
    assert facts["uptime_seconds"] == pytest.approx(8123.45)
    state = State()
    state.update_vm("colab", sampled_at=T0, **facts)
    assert status_line.vm_words(state.view().sessions["colab"].vm) == short


def test_garbage_from_nvidia_smi_is_absent_not_zero_and_escaped() -> None:
    sample = parse(output(fixture("nvidia-smi-garbage.csv")))
    facts = facts_of(sample)
    assert facts["accelerator"] is None and facts["gpu_utilization"] is None
    assert facts["gpu_memory_used"] is None and facts["gpus"] == 0
    assert facts["memory_total"] == 13609431040  # the rest of the sample still counts
    assert len(sample.problems) == 1
    assert "\x1b" not in sample.problems[0] and "\x07" not in sample.problems[0]
    assert "\\x1b" in sample.problems[0]
    assert "\\\\x1b" not in sample.problems[0]  # escaped once, not escaped and then repr'd


def test_a_cpu_runtime_has_no_gpu_facts_and_says_its_ram() -> None:
    sample = parse(output(None))
    assert sample.problems == [] and sample.gpus == []
    state = State()
    state.update_vm("colab", sampled_at=T0, **facts_of(sample))
    assert status_line.vm_words(state.view().sessions["colab"].vm) == "VM RAM 1.3/12.7 GB"


@pytest.mark.parametrize(
    "text",
    ["", "\x00\xff" * 500, "@@gw-gpu\n" + "9" * 5000 + "\n@@gw-free\nMem: x y z\n",
     "@@gw-uptime\n-5 3\n@@gw-end\n", "@@gw-gpu\nX, 101, -1, 1e9\n@@gw-end\n"],
)  # fmt: skip
def test_garbage_output_never_raises_and_gives_no_made_up_numbers(text: str) -> None:
    sample = parse(text)
    assert sample.problems
    facts = facts_of(sample)
    assert facts["gpu_utilization"] is None and facts["memory_used"] is None
    assert facts["uptime_seconds"] is None


def test_metrics_carry_session_and_accelerator_and_skip_absent_values() -> None:
    state = State()
    state.update_vm("colab", sampled_at=T0, **facts_of(parse(output(fixture("nvidia-smi-t4.csv")))))
    state.update_vm("cpu", sampled_at=T0, **facts_of(parse(output(None))))
    registry = CollectorRegistry()
    registry.register(StateCollector(state.view))
    text = generate_latest(registry).decode()
    assert (
        'colab_gateway_vm_gpu_utilization_ratio{accelerator="Tesla T4",session="colab"} 0.87'
        in text
    )
    used = 'colab_gateway_vm_gpu_memory_used_bytes{accelerator="Tesla T4",session="colab"} '
    assert float(text.split(used)[1].split()[0]) == 11468 * 1024**2
    assert 'colab_gateway_vm_memory_used_bytes{accelerator="none",session="cpu"}' in text
    assert 'colab_gateway_vm_disk_used_bytes{accelerator="none",session="cpu"}' in text
    assert 'colab_gateway_vm_uptime_seconds{accelerator="Tesla T4",session="colab"}' in text
    assert 'session="cpu"' not in text.split("colab_gateway_vm_gpu_utilization_ratio")[2]


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    box.close()


def test_gpu_idle_notifies_once_then_resolves_once(inbox: Inbox) -> None:
    config = Config(
        sessions=[SessionConfig(name="colab", notebook_url="https://colab.example/drive/1")],
        notify=NotifyConfig(
            urls=[Secret(inbox.url)],
            gpu_idle_after=Duration(1200),
            repeat_after=Duration(86400),
        ),
    )
    state = State()
    state.set_health("vm_stats", Health.OK, "fine")
    idle = facts_of(parse(output(fixture("nvidia-smi-t4.csv").replace(", 87,", ", 0,"))))
    state.update_vm("colab", sampled_at=T0, gpu_idle_since=T0, **idle)
    watcher = Watcher(config, host="pi")
    sender = Sender([inbox.url])
    sender.start()
    try:
        sent = []
        for minutes in range(0, 60, 5):  # idle for an hour, looked at every five minutes
            now = T0 + minutes * 60
            sent += watcher.evaluate(state.view(now), now)
        assert [(a.event, a.resolved) for a in sent] == [("gpu_idle", False)]
        state.update_vm("colab", gpu_idle_since=None, gpu_utilization=0.9)
        resolved = watcher.evaluate(state.view(T0 + 3700), T0 + 3700)
        resolved += watcher.evaluate(state.view(T0 + 3800), T0 + 3800)
        assert [(a.event, a.resolved) for a in resolved] == [("gpu_idle", True)]
        for alert in sent + resolved:
            sender.put(alert)
        inbox.wait_for("resolved")
    finally:
        sender.stop()
    post = inbox.wait_for("T4 idle")
    assert post["title"] == "colab-gateway on pi: T4 idle for 20m"
    assert "T4 idle for 20m (session colab), since" in post["message"]
    assert "11.2 GB of VRAM held" in post["message"]
    assert inbox.count("T4 idle") == 2


def test_every_0s_is_the_off_switch() -> None:
    from gateway import registry
    from gateway.config import load_config_text

    def runs(text: str) -> bool:
        config = load_config_text(
            "sessions: [{name: colab, notebook_url: 'https://colab.research.google.com/drive/1'}]\n"
            + text,
            "c.yaml",
        ).config
        spec = next(s for s in registry.all_specs() if s.name == "vm_stats")
        return spec.enabled(config)

    assert runs("")  # on by default, every 30s
    assert not runs("vm_stats: {every: 0s}\n")
