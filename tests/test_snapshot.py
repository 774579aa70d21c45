"""The typed Snapshot of the State, its JSON form, and the one renderer of the status line."""

from __future__ import annotations

import json

import pytest

from gateway import status_line
from gateway.snapshot import Snapshot
from gateway.state import State
from gateway.vocabulary import Health, RuntimeState

NOW = 1_800_000_000.0


def busy_state() -> State:
    state = State()
    state.started_at = NOW - 600
    state.set_health("tunnel", Health.OK, "listening")
    state.set_health("browser", Health.OK, "keeping the notebook connected")
    state.set_health("ddns", Health.OK, "published", brief="ddns home.example.net=203.0.113.7")
    state.update_tunnel("colab", up=True, peer="198.51.100.4:50000", forwards=[20022])
    state.session("colab").tunnel.since = NOW - 7980
    state.update_runtime("colab", state="connected", gpu=True, vm_id="vm-1")
    return state


def test_the_json_round_trip_keeps_every_fact() -> None:
    view = busy_state().view(now=NOW)
    again = Snapshot.from_json(json.loads(json.dumps(view.to_json())))
    assert again == view
    assert again.sessions["colab"].runtime.state is RuntimeState.CONNECTED
    assert again.health is Health.OK


def test_one_line_for_systemctl_status() -> None:
    assert busy_state().summary(now=NOW) == (
        "colab: tunnel up 2h13m · runtime connected (GPU) · ddns home.example.net=203.0.113.7"
    )


def test_colab_gateway_status_says_the_same_about_the_session() -> None:
    view = busy_state().view(now=NOW)
    lines = status_line.report(view).splitlines()
    assert lines[0] == f"colab-gateway: ok — {view.summary}"
    assert "  session colab: tunnel up 2h13m · runtime connected (GPU)" in lines
    assert "    Colab dialed in from 198.51.100.4:50000" in lines


def test_a_tunnel_that_never_came_up_and_a_failing_component() -> None:
    state = State()
    state.started_at = NOW - 300
    state.set_health("tunnel", Health.DEGRADED, "waiting for Colab to dial in")
    state.session("colab")
    assert state.summary(now=NOW) == (
        "colab: tunnel not up yet · tunnel degraded: waiting for Colab to dial in"
    )
    assert state.overall() is Health.DEGRADED


def test_a_made_up_runtime_state_fails_where_it_is_published() -> None:
    with pytest.raises(ValueError, match="'conected'"):
        State().update_runtime("colab", state="conected")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "the snapshot is list, not an object"),
        ({"now": "soon"}, "now is 'soon', not a number"),
        ({"components": {"tunnel": {"health": "fine"}}}, "components.tunnel.health is 'fine'"),
        ({"sessions": {"colab": {"tunnel": {"up": "yes"}}}}, "sessions.colab.tunnel.up is 'yes'"),
        (
            {"sessions": {"colab": {"runtime": {"state": "dancing"}}}},
            "sessions.colab.runtime.state is 'dancing', not one of unknown, loading",
        ),
    ],
)
def test_malformed_json_names_the_field(data: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        Snapshot.from_json(data)
    assert message in str(error.value)


def test_missing_fields_take_their_defaults() -> None:
    snapshot = Snapshot.from_json({"now": NOW, "sessions": {"colab": {}}})
    assert snapshot.sessions["colab"].runtime.state is RuntimeState.UNKNOWN
    assert snapshot.sessions["colab"].tunnel.up is False
    assert snapshot.summary == status_line.NOTHING_ENABLED
