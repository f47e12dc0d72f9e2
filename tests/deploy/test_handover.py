"""The IPAM hand-over of a removal with the state (weave_node_deploy/handover.py), both engines: its shell script
run by the real sh against a fake `systemctl` and a fake `weave-node`, and what the engines make of its output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.conftest import HANDED, STATUS, HandoverHost
from weave_node.mesh.peer import format_name, name_from_host_id
from weave_node_deploy import handover


@pytest.fixture
def node(tmp_path: Path) -> HandoverHost:
    return HandoverHost(tmp_path)


def test_a_running_router_hands_its_space_over(node: HandoverHost) -> None:
    out, calls = node.run(LEAVE_OUT=HANDED)
    assert calls == [
        "systemctl is-active --quiet weave-node.service",
        "status --wait 7 --peers 0",
        f"ipam leave --force --wait {handover.LEAVE_WAIT}",
    ]
    result = handover.outcome(out, 600)
    assert (result.ok, result.changed, result.message) == (True, True, HANDED)


def test_a_stopped_router_is_started_from_its_state_to_hand_over(node: HandoverHost) -> None:
    out, calls = node.run(ACTIVE="no", LEAVE_OUT=HANDED)
    assert calls[:2] == ["systemctl is-active --quiet weave-node.service", "systemctl start weave-node.service"]
    result = handover.outcome(out, 600)
    assert result.ok and result.changed
    assert result.message == f"{HANDED} (the router was stopped: it was started for the hand-over)"


@pytest.mark.parametrize(("line", "peers"), [("WEAVE_PEERS=198.18.0.2 198.18.0.3", 1), ("WEAVE_PEERS=", 0)])
def test_the_router_is_given_time_to_reach_a_peer_when_it_has_any(node: HandoverHost, line: str, peers: int) -> None:
    node.env_file.write_text(f"# settings\n{line}\nIPALLOC_RANGE=10.32.0.0/12\n")
    _, calls = node.run(LEAVE_OUT=HANDED)
    assert f"status --wait 7 --peers {peers}" in calls


def test_nothing_to_hand_over_is_no_change(node: HandoverHost) -> None:
    out, _ = node.run(LEAVE_OUT="this peer owns no address space: nothing to hand over")
    result = handover.outcome(out, 600)
    assert (result.ok, result.changed) == (True, False)


def test_no_peer_to_take_it_warns_with_the_routers_reason_and_what_to_do(node: HandoverHost) -> None:
    error = (
        "no reachable peer to hand our 1024 addresses to. Once this host is gone, they return 600 s later if a "
        "majority of the space's owners stays connected, or at once with `weave-node ipam rmpeer "
        "0a:00:00:00:00:03` on a live host"
    )
    out, calls = node.run(
        NOT_READY="the router is not ready after 7 s: 0 of 1 expected peer(s)", LEAVE_ERROR=error, STATUS_JSON=STATUS
    )
    assert calls[-1] == "status --json"  # its name, for the advice
    result = handover.outcome(out, 600)
    assert (result.ok, result.changed) == (False, False)
    text = result.message
    assert text.startswith(f"the IPAM address space was not handed over to a peer: {error}"), text
    assert "weave-node: error" not in text
    assert "the router was not ready: the router is not ready after 7 s: 0 of 1 expected peer(s)" in text
    assert "the space is still owned by this host's peer 0a:00:00:00:00:03 (node3), which is gone" in text
    assert "run `weave-node ipam rmpeer 0a:00:00:00:00:03` on a live host" in text
    assert "600 s after this host is gone" in text


def test_a_router_that_does_not_answer_is_named_from_its_host_id(node: HandoverHost) -> None:
    host_id = "00112233445566778899aabbccddeeff"
    (node.state / "host-id").write_text(host_id + "\n")
    out, _ = node.run(
        NOT_READY="the router is not ready after 7 s: cannot reach the router's API",
        LEAVE_ERROR="cannot reach the router's API at unix:/run/weave-node/weave.sock: No such file or directory "
        "(is weave-node running?)",
    )
    name = format_name(name_from_host_id(bytes.fromhex(host_id)))
    result = handover.outcome(out, 600)
    assert not result.ok
    assert f"owned by this host's peer {name} ({os.uname().nodename})" in result.message
    assert f"`weave-node ipam rmpeer {name}`" in result.message


def test_a_router_that_does_not_start_is_a_warning_too(node: HandoverHost) -> None:
    out, _ = node.run(
        ACTIVE="no",
        START_ERROR="Job for weave-node.service failed because the control process exited with error code.",
        NOT_READY="the router is not ready after 7 s: no answer",
        LEAVE_ERROR="cannot reach the router's API (is weave-node running?)",
    )
    result = handover.outcome(out, 600)
    assert not result.ok and not result.changed
    assert "the router did not start: Job for weave-node.service failed" in result.message
    # Without a host-id or an answer there is no name: say where to find it.
    assert "`weave-node ipam rmpeer NAME` on a live host (NAME: the owner there in `weave-node status" in result.message


def test_a_missing_installation_is_a_warning(node: HandoverHost) -> None:
    (node.prefix / "venv/bin/weave-node").unlink()
    out, calls = node.run()
    assert calls == []
    result = handover.outcome(out, 600)
    assert not result.ok and "venv/bin/weave-node is not there, so the router cannot run" in result.message


def test_without_automatic_reclaim_only_rmpeer_gives_it_back() -> None:
    result = handover.outcome("weave-node-handover: failed no reachable peer\n", 0)
    assert "as automatic reclaim is off (weave_ipam_reclaim_after=0), only rmpeer gives it back." in result.message
    assert "s after this host is gone" not in result.message


def test_no_output_at_all_is_a_warning() -> None:
    result = handover.outcome("", 600)
    assert not result.ok and "the hand-over step reported nothing" in result.message
