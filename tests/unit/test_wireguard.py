"""WireGuard for fastdp (pure parts and the service with a fake kernel): keys, tunnel addresses, the KEY message,
the pairs' exchange under loss and reconnection, the device plan, the runtime's sync, and the service's choice of
VXLAN in WireGuard per peer. The kernel side runs on the lab's VMs (tests/vm)."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
from dataclasses import replace
from typing import Any

import nacl.public
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_overlay_service import ME, PODS, B, FakeForwarder, FakeKernel
from weave_node.datapath import wireguard as wg
from weave_node.datapath.model import ALIAS, Fdb, bridge_mac
from weave_node.mesh.crypto import SessionKeys
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.neighbours import Neighbour
from weave_node.overlay import mtu as overlay_mtu
from weave_node.overlay.config import OverlayConfig
from weave_node.overlay.peers import PeerInfo
from weave_node.overlay.service import OverlayService
from weave_node.overlay.wireguard import keys, wire
from weave_node.overlay.wireguard.pairs import RESEND, Link, WgPairs
from weave_node.overlay.wireguard.runtime import FEATURE, WgInput, WgRuntime

KEYS = SessionKeys(send=bytes(range(32)), receive=bytes(range(32, 64)))
MIRROR = SessionKeys(send=KEYS.receive, receive=KEYS.send)  # the same connection as the peer sees it


def test_tunnel_addresses_embed_the_peer_name_and_nothing_else_reads_as_one() -> None:
    name = 0x12_34_56_78_9A_BC
    addr = keys.address(name)
    assert ipaddress.IPv6Address(addr) in keys.PREFIX and keys.name_of(addr) == name
    assert keys.address(1) != keys.address(2)
    assert keys.name_of("fd57:6561:7665:0:1:0:0:1") is None  # beyond 48 bits
    assert keys.name_of("10.0.0.1") is None and keys.name_of("fe80::1") is None


def test_both_ends_of_a_connection_derive_one_preshared_key_and_another_connection_another() -> None:
    ours, theirs = keys.wg_keys(KEYS), keys.wg_keys(MIRROR)
    assert keys.preshared_key(ours) == keys.preshared_key(theirs) and len(keys.preshared_key(ours)) == 32
    assert keys.session_id(ours) == keys.session_id(theirs)
    other = keys.wg_keys(SessionKeys(send=bytes(32), receive=bytes(range(32))))
    assert keys.preshared_key(other) != keys.preshared_key(ours)
    assert keys.preshared_key(ours) not in (KEYS.send, KEYS.receive)  # never a key of the mesh's own
    private = keys.new_private_key()
    assert keys.public_key(private) == bytes(nacl.public.PrivateKey(private).public_key)


def test_the_key_message_round_trips_and_anything_else_is_refused() -> None:
    msg = wire.Key(b"s" * 8, b"k" * 32, reply=True)
    assert wire.decode(wire.encode(msg)) == msg
    good = wire.encode(msg)
    for bad in (b"", good[:-1], good + b"x", b"\x02" + good[1:], good[:1] + b"\x02" + good[2:],
                good[:2] + b"\x04" + good[3:], good[:11] + bytes(32)):  # fmt: skip
        with pytest.raises(ProtocolError):
            wire.decode(bad)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_hostile_bytes_raise_protocol_error_or_decode(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        assert len(wire.decode(data).public_key) == 32


def _pair() -> tuple[WgPairs, WgPairs]:
    a = WgPairs(keys.public_key(keys.new_private_key()))
    b = WgPairs(keys.public_key(keys.new_private_key()))
    return a, b


@settings(max_examples=150, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_two_routers_learn_each_others_keys_through_any_losses(delivered: list[bool]) -> None:
    """A and B (names 1 and 2) exchange KEYs; each message is delivered or lost as drawn; ticks resend. Once
    messages flow again, both know the other's key, and their kernels' peers agree on the preshared key."""
    a, b = _pair()
    now = 0.0
    queue = [(1, 2, m) for _, m in a.set_links(now, {2: Link("198.19.0.2", keys.wg_keys(KEYS))})]
    queue += [(2, 1, m) for _, m in b.set_links(now, {1: Link("198.19.0.1", keys.wg_keys(MIRROR))})]
    draws = iter(delivered)
    for _ in range(200):
        if a.keyed(2) and b.keyed(1):
            break
        if queue:
            src, dst, data = queue.pop(0)
            if next(draws, True):
                router = b if dst == 2 else a
                queue += [(dst, src, m) for _, m in router.on_message(now, src, data)]
        else:
            now += RESEND
            queue += [(1, 2, m) for _, m in a.tick(now)] + [(2, 1, m) for _, m in b.tick(now)]
    assert a.keyed(2) and b.keyed(1)
    (pa,), (pb,) = a.peers(), b.peers()
    assert pa.public_key == b.public_key and pb.public_key == a.public_key
    assert pa.preshared_key == pb.preshared_key and pa.allowed == f"{keys.address(2)}/128"
    assert pa.endpoint == "198.19.0.2" and pb.endpoint == "198.19.0.1"


def test_a_key_for_another_connection_is_ignored_and_a_new_connection_forgets_the_old_key() -> None:
    a, b = _pair()
    a.set_links(0.0, {2: Link("198.19.0.2", keys.wg_keys(KEYS))})
    stale = wire.encode(wire.Key(b"x" * 8, b.public_key, reply=False))
    assert a.on_message(0.0, 2, stale) == [] and a.ignored == 1 and not a.keyed(2)
    assert a.on_message(0.0, 3, stale) == [] and a.ignored == 2  # no link with that peer at all
    mine = wire.encode(wire.Key(keys.session_id(keys.wg_keys(MIRROR)), a.public_key, reply=False))
    assert a.on_message(0.0, 2, mine) == [] and a.ignored == 3 and not a.keyed(2)  # our own key: never a peer's
    (_, hello), *_ = b.set_links(0.0, {1: Link("198.19.0.1", keys.wg_keys(MIRROR))})
    assert a.on_message(0.0, 2, hello) and a.keyed(2)  # answered: it asked for ours
    other = SessionKeys(send=bytes(32), receive=bytes(range(32)))
    sends = a.set_links(1.0, {2: Link("198.19.0.2", keys.wg_keys(other))})  # reconnected: new keys
    assert not a.keyed(2) and a.peers() == frozenset() and len(sends) == 1
    assert a.on_message(1.0, 2, hello) == [] and not a.keyed(2)  # the old connection's KEY no longer counts
    assert a.tick(1.5) == [] and len(a.tick(1.0 + RESEND)) == 1  # asked again, not more often than RESEND


PEER = wg.WgPeer(b"p" * 32, "198.19.0.2", f"{keys.address(2)}/128", b"s" * 32)
DEVICE = wg.WgDevice(b"k" * 32, f"{keys.address(1)}/64", 1440, peers=frozenset({PEER}))


def test_the_plan_builds_a_device_once_and_changes_only_what_differs() -> None:
    first, last = wg.plan(DEVICE, wg.WgObserved())
    assert [type(op) for op in first] == [wg.CreateDevice, wg.SetDevice, wg.SetLink, wg.SetPeer] and last == []
    same = wg.WgObserved(kind="wireguard", alias=ALIAS, private_key=b"k" * 32, port=wg.PORT, mtu=1440, up=True,
                         addresses=(DEVICE.address,), peers=(wg.PeerState(PEER),))  # fmt: skip
    assert wg.plan(DEVICE, same) == ([], [])
    rekeyed = replace(DEVICE, peers=frozenset({replace(PEER, preshared_key=b"t" * 32)}))
    assert wg.plan(rekeyed, same)[0] == [wg.SetPeer(next(iter(rekeyed.peers)))]
    gone = replace(DEVICE, peers=frozenset())
    assert wg.plan(gone, same) == ([], [wg.RemovePeer(PEER.public_key)])
    assert wg.plan(gone, same, keep={keys.address(2)}) == ([], [])  # an FDB entry still sends to it
    for foreign in (wg.WgObserved(kind="dummy"), wg.WgObserved(kind="wireguard", alias="someone else's")):
        assert wg.plan(DEVICE, foreign) == ([], [])  # never touched (the runtime says so)
    # WireGuard moves an endpoint after authenticated packets (NAT, another source address): kept while current
    roamed = replace(same, peers=(wg.PeerState(replace(PEER, endpoint="203.0.113.9", port=40000), handshake=1000.0),))
    assert wg.plan(DEVICE, roamed, now=1100.0) == ([], [])
    assert wg.plan(DEVICE, roamed, now=1000.0 + wg.FRESH + 1) == ([wg.SetPeer(PEER)], [])
    moved = replace(same, mtu=1500, addresses=(DEVICE.address, "fd00::1/64"))
    assert wg.plan(DEVICE, moved)[0] == [wg.SetLink(1440, DEVICE.address, ("fd00::1/64",))]
    secrets = [b"k" * 32, b"s" * 32]  # no key in a log line or a repr, raw or in base64
    shown = [repr(DEVICE), repr(PEER), repr(wg.SetPeer(PEER)), repr(wg.SetDevice(b"k" * 32, 1)),
             wg.describe(wg.SetPeer(PEER)), repr(same), repr(WgInput(DEVICE, frozenset()))]  # fmt: skip
    for text in shown:
        for secret in secrets:
            assert str(secret)[2:10] not in text and base64.b64encode(secret).decode()[:8] not in text, text


def _runtime(observed: list[wg.WgObserved], fail: str = "") -> tuple[WgRuntime, list[list[wg.WgOp]]]:
    applied: list[list[wg.WgOp]] = []

    def apply(ops: list[wg.WgOp]) -> tuple[int, list[str]]:
        applied.append(list(ops))
        errors = [f"{wg.describe(op)}: refused" for op in ops if type(op).__name__ == fail]
        return len(ops) - len(errors), errors

    rt = WgRuntime(1, lambda: observed[0], apply, lambda: 0.0, lambda: None)
    rt.prepare()
    return rt, applied


def test_the_runtime_keeps_its_device_key_across_a_restart_and_blocks_what_failed() -> None:
    before = wg.WgObserved(kind="wireguard", alias=ALIAS, private_key=b"k" * 32, port=wg.PORT, mtu=1440, up=True)
    rt, applied = _runtime([before])
    assert rt.private_key == b"k" * 32 and rt.core.public_key == keys.public_key(b"k" * 32)
    other, _ = _runtime([replace(before, alias="")])  # another's device: its key is never taken
    assert other.private_key != b"k" * 32
    given = WgInput(replace(DEVICE, private_key=other.private_key), frozenset({keys.address(2)}))
    assert other.sync_first(given, frozenset()) == ([], given.tunnel) and "did not create" in other.errors[0]
    fresh, _ = _runtime([wg.WgObserved()])
    assert len(fresh.private_key) == 32 and fresh.private_key != b"k" * 32
    given = WgInput(replace(DEVICE, private_key=b"k" * 32), frozenset({keys.address(2)}))
    last, blocked = rt.sync_first(given, frozenset())
    assert blocked == frozenset() and isinstance(applied[-1][-1], wg.SetPeer) and last == []
    rt, applied = _runtime([before], fail="SetPeer")
    assert rt.sync_first(given, frozenset())[1] == {keys.address(2)}
    rt, applied = _runtime([before], fail="SetLink")
    assert rt.sync_first(given, frozenset())[1] == given.tunnel  # the device itself failed: every peer waits

    def broken(_ops: list[wg.WgOp]) -> tuple[int, list[str]]:
        raise OSError("netlink went away")

    rt.apply = broken
    assert rt.sync_first(given, frozenset()) == ([], given.tunnel) and "netlink went away" in rt.errors[0]


def test_with_wireguard_vxlan_runs_between_tunnel_addresses_to_peers_that_offer_it_only() -> None:
    c = 0xC
    calls: list[str] = []
    fake = FakeKernel()
    state = [wg.WgObserved()]

    def wg_apply(ops: list[wg.WgOp]) -> tuple[int, list[str]]:
        calls.append("wireguard")
        peers = {p.peer.public_key: p for p in state[0].peers}
        for op in ops:
            if isinstance(op, wg.SetDevice):
                state[0] = replace(state[0], kind="wireguard", private_key=op.private_key, port=op.port)
            elif isinstance(op, wg.SetPeer):
                peers[op.peer.public_key] = wg.PeerState(op.peer)
            elif isinstance(op, wg.RemovePeer):
                peers.pop(op.public_key, None)
        state[0] = replace(state[0], peers=tuple(peers.values()))
        return len(ops), []

    def apply(ops: Any) -> tuple[int, list[str]]:
        calls.append("datapath")
        return fake.apply(ops)

    kernel = replace(fake.kernel(), apply=apply, wg_apply=wg_apply, wg_observe=lambda: state[0])
    neighbours = {
        B: Neighbour(B, "198.19.0.2", "198.19.0.1", frozenset({FEATURE}), KEYS),
        c: Neighbour(c, "198.19.0.3", "198.19.0.1", frozenset(), KEYS),  # its kernel has no WireGuard
    }

    async def bridge_address(_current: str | None) -> str:
        return "10.32.0.5/12"

    svc = OverlayService(ME, OverlayConfig(pod_range=PODS, encrypt=True, wireguard=True), bridge_address,
                         clock=lambda: 0.0, kernel=kernel, neighbour=neighbours.get)  # fmt: skip
    try:
        rt = svc.esp
        assert svc.fastdp and isinstance(rt, WgRuntime)
        rt.prepare()
        sent: list[tuple[int, bytes]] = []
        rt.channel = type("C", (), {"unicast": lambda _self, dst, data: sent.append((dst, data))})()  # type: ignore[assignment]
        svc.sleeve.forwarder = FakeForwarder()  # type: ignore[assignment]
        svc.topology_changed({ME: "me", B: "b", c: "c"}, {B: "198.19.0.2", c: "198.19.0.3"}, ["198.19.0.1"])
        svc.table.merge([PeerInfo(B, 5, "10.40.0.1", 12, bridge_mac(B), "198.19.0.2"),
                         PeerInfo(c, 5, "10.44.0.1", 12, bridge_mac(c), "198.19.0.3")])  # fmt: skip
        desired = svc.desired()
        assert {e.dst for e in desired.fdb} == {keys.address(B)}  # no VXLAN at all to C
        assert desired.vxlan is not None and desired.vxlan.local == keys.address(ME)
        assert svc.no_esp == {c} and svc.sleeve_peers() == {c}
        assert not any(ch.name.startswith("WEAVE-NODE-ESP") for ch in desired.chains)
        guard = {
            ch.name: ch for ch in desired.chains if ch.name.startswith("WEAVE-NODE-WG")
        }  # VXLAN only in the tunnel
        assert guard["WEAVE-NODE-WG-OUT"].rules == ("! -o weave-wg -p udp -m udp --dport 6784 -j DROP",)
        assert guard["WEAVE-NODE-WG-IN"].rules == ("! -i weave-wg -p udp -m udp --dport 6784 -j DROP",)
        assert {ch.family for ch in guard.values()} == {"ip6"}
        assert [dst for dst, _ in sent] == [B] and wire.decode(sent[0][1]).reply  # our key, asking for theirs
        theirs = keys.public_key(keys.new_private_key())
        rt.on_unicast(B, wire.encode(wire.Key(keys.session_id(keys.wg_keys(MIRROR)), theirs, reply=True)))
        assert [dst for dst, _ in sent] == [B, B]  # answered
        svc._sync(svc.desired(), rt.sync_input())
        assert calls == ["wireguard", "datapath"]  # the peer in place before the FDB entries that send to it
        (peer,) = (p.peer for p in state[0].peers)
        assert peer.public_key == theirs and peer.endpoint == "198.19.0.2" and peer.allowed == f"{keys.address(B)}/128"
        assert peer.preshared_key == keys.preshared_key(keys.wg_keys(KEYS))
        rt.synced(state[0])
        doc = svc.status()
        peers_doc = {p["nickname"]: p for p in doc["peers"]}
        assert peers_doc["c"]["mode"] == "sleeve" and "does not offer WireGuard" in peers_doc["c"]["reason"]
        assert doc["encryption"]["kind"] == "wireguard" and doc["encryption"]["esp"] is False
        assert doc["encryption"]["peers"] == 1
    finally:
        svc.executor.shutdown()
        svc.pods.executor.shutdown()


def test_the_mtu_with_wireguard_fits_vxlan_over_ipv6_inside_it() -> None:
    m = overlay_mtu.from_underlay([("eth0", 1500)], encrypt=True, wireguard=True)
    assert m.mtu == 1500 - 130 and "WireGuard" in m.source
    assert overlay_mtu.from_underlay([("eth0", 1500)], encrypt=True, ipv6=True, wireguard=True).mtu == 1350
    sleeve = overlay_mtu.from_underlay([("eth0", 1500)], encrypt=True)
    assert m.mtu < sleeve.mtu  # (the sleeve's frames, for the other peers, fit too)


def test_fdb_entries_of_another_kind_of_run_are_not_adopted() -> None:
    """At a start with WireGuard, entries to underlay addresses (a run without it) would send outside the tunnel
    (or fail on the IPv6 VXLAN device); at a start without it, entries to tunnel addresses would lead nowhere."""
    from weave_node.overlay.desired import adoptable

    tunnel, underlay = Fdb("aa:bb:cc:00:00:01", keys.address(2)), Fdb("aa:bb:cc:00:00:02", "198.19.0.2")
    assert adoptable(frozenset({tunnel, underlay}), keys.in_tunnel, tunnelled=True) == {tunnel}
    assert adoptable(frozenset({tunnel, underlay}), keys.in_tunnel, tunnelled=False) == {underlay}
