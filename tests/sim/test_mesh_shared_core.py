"""The simulation runs the router's decisions: both drive the same gossip core (mesh/node.py), so a change to a
decision there changes both, and the same events make both send the same messages."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.test_mesh_dispatch import PEER, Rig, messages_to_peers
from weave_node.mesh import gossip
from weave_node.mesh.node import Node
from weave_node.mesh.sim import Network


@pytest.fixture
def core_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every decision the core is asked for, by whom (whatever drives it)."""
    calls: list[str] = []
    for method in ("established", "lost", "on_topology", "on_digest", "tick"):
        original = getattr(Node, method)

        def spy(self: Node[Any], *args: Any, _original: Any = original, _name: str = method) -> Any:
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(Node, method, spy)
    yield calls


def test_the_router_and_the_simulation_ask_the_same_core(core_calls: list[str]) -> None:
    rig = Rig()  # a router (never started) with an established connection from PEER
    assert isinstance(rig.router.node, Node) and "established" in core_calls
    core_calls.clear()
    rig.send(gossip.encode(gossip.encode_digest(12345, echo=True)))
    assert core_calls == ["on_digest"]
    rig.close()

    core_calls.clear()
    rng = random.Random(1)
    net = Network.build([1, 2, 3], [(2, 1), (3, 1)], rng)
    net.run_until_agreed(20)
    assert all(isinstance(p.node, Node) for p in net.peers.values())
    assert {"established", "on_topology", "on_digest", "tick"} <= set(core_calls)


def joined_late() -> Network:
    """Peers 1 and 2 agree; then 3 connects to 1 only: it can learn 2's record only from 1's answer to a digest."""
    net = Network.build([1, 2, 3], [(2, 1)], random.Random(1))
    net.run_until_agreed(20)
    net.connect(3, 1)
    for _ in range(20):
        net.step()
    return net


def test_a_changed_decision_changes_both(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the core never answer a digest: the router stops answering, and the simulation cannot converge."""
    assert joined_late().agreed()
    monkeypatch.setattr(Node, "on_digest", lambda self, key, fingerprint, echo: [])
    rig = Rig()
    ours = gossip.encode_digest(12345, echo=True)
    with messages_to_peers() as received:  # (what either end received: our digest, and any answer)
        rig.send(gossip.encode(ours))
    assert received == [ours]
    rig.close()
    net = joined_late()
    assert not net.agreed() and net.counters["full"] == 0


def test_a_new_connection_sends_what_the_router_sends() -> None:
    """The messages the core makes for a new connection (our record, then a digest asking for theirs) are what the
    router sends down a real connection and what the simulated peer sends."""
    with messages_to_peers() as sent:
        rig = Rig()
    kinds = [env.kind for env in sent if env.kind in (gossip.KIND_TOPOLOGY, gossip.KIND_DIGEST)]
    rig.close()
    net = Network.build([PEER.name + 1, PEER.name], [], random.Random(1), wire=True)
    net.connect(PEER.name, PEER.name + 1)
    first = [m for m in net._in_flight if m.src == PEER.name + 1]
    sim_kinds = [gossip.decode(m.payload).kind for m in first if m.payload is not None]
    assert kinds[:2] == sim_kinds[:2] == [gossip.KIND_TOPOLOGY, gossip.KIND_DIGEST]
