"""The demo's own logic that needs no root: its messages, its timeline and its table."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from gateway import cli, demo
from gateway.sim import netns
from gateway.sim.scenarios import Step
from gateway.sim.vm import SimNetwork


def test_without_root_the_demo_says_so_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["demo"]) == demo.EXIT_CANNOT_RUN
    err = capsys.readouterr().err
    assert "needs root" in err and "sudo make demo" in err


def test_without_root_the_vm_harness_refuses_before_touching_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(netns.NamespaceError, match=r"needs root.*sudo"):
        SimNetwork().create()


def test_unknown_fault_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--faults", "tunnel,meteor"]) == demo.EXIT_CANNOT_RUN
    err = capsys.readouterr().err
    assert "'meteor'" in err and "tunnel, reset, dialog, chromium" in err


def test_table_shows_each_step_against_its_bound() -> None:
    steps = [
        Step("tunnel killed", "pane connected again", 5.0, 1.84, True, extra={"tunnel up": 1.3}),
        Step("VM reset", "pane connected in the new VM", 30.0, None, False, "not within 30s"),
        Step("slow one", "x", 5.0, 7.0, True),
    ]
    table = demo.render_table(steps).splitlines()
    assert table[0].split() == ["step", "recovered", "when", "measured", "bound", "result"]
    assert set(table[1]) <= {"-", " "}
    assert table[2].endswith("ok") and "1.8 s" in table[2]
    assert "tunnel up" in table[3] and "1.3 s" in table[3]
    assert table[4].endswith("FAILED") and " - " in table[4]
    assert table[5].endswith("SLOW")


def test_timeline_stamps_lines_with_elapsed_seconds() -> None:
    out = io.StringIO()
    timeline = demo.Timeline(out)
    timeline("first\nsecond")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[") and lines[0].endswith("s] first")
    assert lines[1] == " " * 10 + "second"


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_the_demo_shows_one_gw_run_message_as_the_inbox_got_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo`'s own path, without its faults: the loop comes up, then gw-run in the VM
    and the message the local json:// inbox received, printed on the timeline."""
    from gateway.sim.harness import missing_parts

    if missing_parts():
        pytest.skip("parts of the loop are not here: " + "; ".join(missing_parts()))
    # The demo's exit-on-signal cleanup is for its own process, not for pytest's.
    monkeypatch.setattr("gateway.sim.vm.install_signal_guard", lambda: None)
    out = io.StringIO()
    status = demo.run_demo([], tmp_path / "demo", keep=False, out=out)
    printed = out.getvalue()
    assert status == demo.EXIT_OK, printed
    assert "the inbox on the Pi received:" in printed
    shown = printed.split("the inbox on the Pi received:", 1)[1]
    assert "echo epoch 3/3 loss 0.12" in shown and "finished with exit 0 after" in shown
    assert "| saved /root/model.pt" in shown, "the last line of the job's output"
    rows = [line for line in printed.splitlines() if line.startswith("a job's end reaches")]
    assert len(rows) == 1 and rows[0].endswith("ok"), "its row in the final table"
