"""The healer: when to ask the browser to re-run the bootstrap, and when not to."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.component import Context
from gateway.config import load_config_text
from gateway.healer.component import Healer
from gateway.paths import Paths
from gateway.state import State
from gateway.vocabulary import Command, Health, RerunBootstrap

CONFIG = """
sessions:
  - {name: colab, notebook_url: 'https://colab.research.google.com/drive/abc'}
browser: {rerun_after: 1m}
"""


def make(tmp_path: Path, text: str = CONFIG) -> tuple[Healer, Context, State]:
    state = State()
    ctx = Context(
        "healer", load_config_text(text).config, Paths(tmp_path, tmp_path, tmp_path), state
    )
    return Healer(), ctx, state


def commands(state: State) -> list[RerunBootstrap]:
    """What the healer posted to the browser; the only command it may post is a re-run."""
    queue = state.queue("browser")
    posted = [queue.get_nowait() for _ in range(queue.qsize())]
    assert all(isinstance(c, RerunBootstrap) for c in posted), posted
    return [c for c in posted if isinstance(c, RerunBootstrap)]


def test_reruns_after_the_tunnel_stays_down_while_connected(tmp_path: Path) -> None:
    healer, ctx, state = make(tmp_path)
    state.update_runtime("colab", state="connected")
    state.session("colab").runtime.since = 1000.0
    healer.check(ctx, now=1030.0)
    assert commands(state) == [], "30 s is less than rerun_after"
    healer.check(ctx, now=1061.0)
    (command,) = commands(state)
    assert isinstance(command, RerunBootstrap) and command.session == "colab"
    assert command.reason == "tunnel down for 1m01s while the runtime is connected"
    healer.check(ctx, now=1090.0)
    assert commands(state) == [], "one request per rerun_after"
    healer.check(ctx, now=1125.0)
    assert len(commands(state)) == 1


def test_no_rerun_while_the_tunnel_is_up_or_the_runtime_is_not_connected(tmp_path: Path) -> None:
    healer, ctx, state = make(tmp_path)
    state.update_runtime("colab", state="disconnected")
    state.session("colab").runtime.since = 0.0
    healer.check(ctx, now=5000.0)
    state.update_runtime("colab", state="connected")
    state.update_tunnel("colab", up=True)
    state.session("colab").runtime.since = 0.0
    healer.check(ctx, now=5000.0)
    assert commands(state) == []


def test_a_new_vm_is_bootstrapped_at_once(tmp_path: Path) -> None:
    healer, ctx, state = make(tmp_path)
    state.update_runtime("colab", state="connected", vm_id="vm-1")
    state.session("colab").runtime.since = 100.0
    healer.check(ctx, now=101.0)
    (first,) = commands(state)
    assert first.reason == "the runtime has no tunnel yet"
    state.update_tunnel("colab", up=True)
    healer.check(ctx, now=200.0)
    state.update_runtime("colab", state="connected", vm_id="vm-2")
    state.update_tunnel("colab", up=False)
    healer.check(ctx, now=300.0)
    (second,) = commands(state)
    assert second.reason == "Colab assigned a new VM"


def test_a_second_new_vm_soon_after_a_request_is_not_dropped(tmp_path: Path) -> None:
    healer, ctx, state = make(tmp_path)
    state.update_runtime("colab", state="connected", vm_id="vm-1")
    healer.check(ctx, now=100.0)
    assert len(commands(state)) == 1
    healer.check(ctx, now=101.0)
    assert commands(state) == [], "the same VM is not asked for twice in a row"
    state.update_runtime("colab", vm_id="vm-2")  # reset again before vm-1 dialed in
    healer.check(ctx, now=103.0)
    (command,) = commands(state)
    assert isinstance(command, RerunBootstrap)
    assert command.reason == "Colab assigned a new VM"


def test_rerun_never_and_placeholders(tmp_path: Path) -> None:
    text = CONFIG.replace("drive/abc", "drive/XXXXXXXX").replace(
        "{rerun_after: 1m}", "{rerun: never}"
    )
    healer, ctx, state = make(tmp_path, text)
    state.update_runtime("colab", state="connected", vm_id="vm-1")
    state.session("colab").runtime.since = 0.0
    healer.check(ctx, now=10_000.0)
    assert commands(state) == []
    status = state.components["healer"]
    assert status.health == Health.DEGRADED
    assert "notebook_url is still the example's placeholder" in status.message


def test_runs_as_a_component_and_reacts_to_state_changes(tmp_path: Path) -> None:
    healer, ctx, state = make(tmp_path)

    async def scenario() -> Command:
        state.attach(asyncio.get_running_loop())
        task = asyncio.create_task(healer.run(ctx))
        await asyncio.sleep(0.05)
        state.update_runtime("colab", state="connected", vm_id="vm-9")
        command = await asyncio.wait_for(state.queue("browser").get(), 2)
        task.cancel()
        return command

    assert asyncio.run(scenario()).session == "colab"
