"""The gossip core (mesh/node.py) on its own: no sockets, no asyncio, no kernel; events in, effects out."""

from __future__ import annotations

import random

import pytest

from weave_node.core.address import PeerAddress
from weave_node.mesh.node import (
    DUPLICATE,
    OURSELF,
    Changed,
    Close,
    Dial,
    Link,
    Node,
    SendDigest,
    SendRecords,
    SendStates,
)
from weave_node.mesh.topology import ConnectionInfo, PeerRecord

pytestmark = pytest.mark.unit
ME, A, B, C = 0x0200000000A0, 0x0200000000A1, 0x0200000000A2, 0x0200000000A3
ADDR_A = PeerAddress("192.0.2.1", 6783)


def node(*, conn_limit: int = 10, initial: tuple[PeerAddress, ...] = ()) -> Node[str]:
    record = PeerRecord(ME, "me", 1, 1, ())
    return Node(record, conn_limit=conn_limit, gossip_interval=10.0, rng=random.Random(1), initial=initial)


def link(key: str, peer: int, *, outbound: bool = False, uid: int = 7, since: float = 0.0) -> Link[str]:
    target = PeerAddress(f"192.0.2.{peer & 0xFF}", 6783) if outbound else None
    address = str(target) if target else f"192.0.2.{peer & 0xFF}:40000"
    return Link(key, peer, uid, outbound, address, since, target)


def record(name: int, version: int, *conns: ConnectionInfo) -> PeerRecord:
    return PeerRecord(name, f"n{name & 0xFF}", 9, version, tuple(conns))


def test_a_new_connection_is_announced_then_fingerprints_are_compared() -> None:
    n = node()
    out = n.established(link("a", A))
    assert isinstance(out[-1], SendStates) and out[-1].to == "a"
    digest = out[-2]
    assert isinstance(digest, SendDigest) and digest.echo and digest.fingerprint == n.topology.fingerprint()
    (delta,) = [e for e in out if isinstance(e, SendRecords)]
    assert delta.to == ("a",) and delta.records == (n.topology.local,)
    assert n.topology.local.established == {A}


def test_duplicates_keep_the_connection_initiated_by_the_greater_name() -> None:
    n = node()
    n.established(link("theirs", A))  # A (greater than ME) initiated it
    assert n.established(link("mine", A, outbound=True, since=1.0)) == [Close("mine", DUPLICATE)]
    assert n.links[A].key == "theirs"
    lower = 0x020000000001
    n.established(link("theirs-low", lower))
    out = n.established(link("mine-low", lower, outbound=True, since=1.0))
    assert out[0] == Close("theirs-low", DUPLICATE) and n.links[lower].key == "mine-low"


def test_a_restarted_peer_replaces_its_old_connection() -> None:
    n = node()
    n.established(link("old", A, uid=7))
    out = n.established(link("new", A, uid=8, since=5.0))
    assert out[0] == Close("old", DUPLICATE) and n.links[A].key == "new"


def test_the_connection_limit_counts_established_connections() -> None:
    n = node(conn_limit=1)
    n.established(link("a", A))
    (close,) = n.established(link("b", B))
    assert isinstance(close, Close) and close.key == "b" and close.refused == "conn_limit"
    assert set(n.links) == {A}


def test_digests_are_answered_only_when_they_differ() -> None:
    n = node()
    n.established(link("a", A))
    assert n.on_digest("a", n.topology.fingerprint(), echo=True) == []
    out = n.on_digest("a", 12345, echo=True)
    assert out == [
        SendRecords(("a",), tuple(n.topology.records.values())),
        SendDigest("a", n.topology.fingerprint(), echo=False),
    ]
    assert n.on_digest("a", 12345, echo=False) == out[:1]  # never a digest for a digest without echo


def test_news_go_to_every_neighbour_but_its_source_and_teach_dial_targets() -> None:
    n = node()
    n.established(link("a", A))
    n.established(link("b", B))
    rec_a = record(
        A, 5, ConnectionInfo(ME, "192.0.2.160:40000", False, True), ConnectionInfo(C, "192.0.2.163:6783", True, True)
    )
    out = n.on_topology("a", [rec_a])
    assert out[0] == SendRecords(("b",), (rec_a,))
    changed = out[-1]
    assert isinstance(changed, Changed) and changed.learned
    target = n.connector.targets[PeerAddress("192.0.2.163", 6783)]
    assert (target.origin, target.peer) == ("learned", C)
    assert n.on_topology("b", [rec_a]) == []  # nothing new: nothing sent
    assert n.routes == {A: A}  # (B sent no record yet, and C lists no connection back: neither is reachable)


def test_a_learned_target_goes_when_no_record_lists_it() -> None:
    n = node()
    n.established(link("a", A))
    rec_a = record(A, 5, ConnectionInfo(ME, "", False, True), ConnectionInfo(C, "192.0.2.163:6783", True, True))
    n.on_topology("a", [rec_a])
    n.on_topology("a", [record(A, 6, ConnectionInfo(ME, "", False, True))])
    assert PeerAddress("192.0.2.163", 6783) not in n.connector.targets


def test_how_a_dialled_connection_ended_drives_the_connector() -> None:
    n = node(initial=(ADDR_A,))
    assert n.tick(0.0)[0] == Dial(ADDR_A)
    established = link("a", A, outbound=True)
    n.established(Link("a", A, 7, True, str(ADDR_A), 0.0, ADDR_A))
    assert n.connector.targets[ADDR_A].state == "connected"
    out, ended = n.lost("a", A, ADDR_A, "connection closed by peer", 3.0)
    assert ended.was_established and ended.retry_in is not None and n.connector.targets[ADDR_A].state == "retrying"
    assert not n.links and n.topology.local.connections == ()
    assert any(isinstance(e, Changed) for e in out)
    _, ended = n.lost("b", A, ADDR_A, DUPLICATE, 4.0)
    assert not ended.was_established and n.connector.targets[ADDR_A].state == "idle"
    _, ended = n.lost("c", None, ADDR_A, OURSELF, 5.0)
    assert ended.ourself and n.connector.targets[ADDR_A].state == "ourself"
    assert established.target is not None


def test_periodic_anti_entropy_sends_a_digest_and_each_channels_state() -> None:
    n = node()
    n.channels += ["ipam", "overlay"]
    assert n.tick(0.0) == [] and n.next_deadline() == 10.0  # nobody to gossip with
    n.established(link("a", A))
    assert n.tick(5.0) == []
    out = n.tick(10.0)
    assert out == [SendDigest("a", n.topology.fingerprint(), True), SendStates("a", "ipam"), SendStates("a", "overlay")]
    assert n.next_deadline() == 20.0


def test_unicast_and_broadcast_hops_are_connections() -> None:
    n = node()
    n.established(link("a", A))
    n.on_topology("a", [record(A, 5, ConnectionInfo(ME, "", False, True))])
    assert n.next_hop(A) == "a" and n.next_hop(B) is None
    assert n.broadcast_hops(ME) == ["a"] and n.neighbours_except("a") == []


def test_a_forgotten_learned_address_comes_back_while_a_record_teaches_it() -> None:
    n = node()
    n.established(link("a", A))
    teaching = ConnectionInfo(C, "192.0.2.163:6783", True, True)
    n.on_topology("a", [record(A, 5, ConnectionInfo(ME, "", False, True), teaching)])
    addr = PeerAddress("192.0.2.163", 6783)
    assert n.forget(addr) and addr not in n.connector.targets
    n.on_topology("a", [record(A, 6, ConnectionInfo(ME, "", False, True), teaching)])  # any change
    assert n.connector.targets[addr].origin == "learned"


@pytest.mark.parametrize("text", ["192.0.2.163", "192.0.2.163:6783"])
def test_a_forgotten_address_comes_back_with_its_peer_however_the_record_spells_it(text: str) -> None:
    n = node()
    n.established(link("a", A))
    teaching = ConnectionInfo(C, text, True, True)
    n.on_topology("a", [record(A, 5, ConnectionInfo(ME, "", False, True), teaching)])
    addr = PeerAddress("192.0.2.163", 6783)
    assert n.forget(addr)
    n.on_topology("a", [record(A, 6, ConnectionInfo(ME, "", False, True), teaching)])
    target = n.connector.targets[addr]
    assert (target.origin, target.peer) == ("learned", C)  # (with its peer: not dialled while C is connected)


def test_an_untaught_target_kept_while_connected_goes_at_the_next_change_after() -> None:
    n = node()
    n.established(link("a", A))
    addr = PeerAddress("192.0.2.163", 6783)
    n.on_topology("a", [record(A, 5, ConnectionInfo(ME, "", False, True), ConnectionInfo(C, str(addr), True, True))])
    n.established(Link("c", C, 3, True, str(addr), 1.0, addr))
    n.on_topology("a", [record(A, 6, ConnectionInfo(ME, "", False, True))])  # no longer taught, but connected
    assert n.connector.targets[addr].state == "connected"
    n.lost("c", C, addr, "connection closed by peer", 2.0)  # (our record changes while it is still connected)
    assert n.connector.targets[addr].state == "retrying"
    n.on_topology("a", [record(A, 7, ConnectionInfo(ME, "", False, True))])
    assert addr not in n.connector.targets
