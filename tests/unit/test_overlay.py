"""The overlay's pure parts: PeerInfo gossip, forwarding entries with retention/adoption, heartbeat health."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weave_node.datapath.model import FLOOD_MAC, Fdb, Neigh, bridge_mac
from weave_node.overlay import health as hb
from weave_node.overlay import peers
from weave_node.overlay.desired import Retention, Settings, desired_state, merge_adopted, peer_entries
from weave_node.overlay.health import Health, Mode
from weave_node.overlay.peers import DecodeError, PeerInfo, PeerTable

A, B, C = 0xA, 0xB, 0xC


@st.composite
def infos_st(draw: st.DrawFn) -> PeerInfo:
    name = draw(st.integers(0, 2**48 - 1))
    return PeerInfo(
        name,
        draw(st.integers(0, 2**63 - 1)),
        draw(st.sampled_from(["", "10.32.0.1", "10.40.3.4"])),
        draw(st.integers(0, 32)),
        draw(st.sampled_from(["", bridge_mac(name)])),
        draw(st.sampled_from(["", "198.19.0.1"])),
    )


@given(st.lists(infos_st(), max_size=5))
def test_peer_info_round_trips(infos: list[PeerInfo]) -> None:
    assert peers.decode(peers.encode(infos)) == infos


@given(st.binary(max_size=200))
def test_garbage_gives_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        peers.decode(data)


@given(st.lists(infos_st(), max_size=6), st.randoms())
def test_merge_is_order_independent(infos: list[PeerInfo], rnd: object) -> None:
    one, two = PeerTable(), PeerTable()
    one.merge(infos)
    shuffled = list(infos)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    for info in shuffled:
        two.merge([info])
    assert one.infos == two.infos


def test_entries_per_peer_prefer_the_direct_address() -> None:
    infos = {
        B: PeerInfo(B, 1, "10.32.0.2", 12, bridge_mac(B), "198.19.0.99"),
        C: PeerInfo(C, 1, "", 0, "", "198.19.0.3"),
    }
    fdb, neigh, bridges = peer_entries({A, B, C}, infos, {B: "198.19.0.2"}, A)
    assert fdb == {
        Fdb(FLOOD_MAC, "198.19.0.2"),
        Fdb(bridge_mac(B), "198.19.0.2"),
        Fdb(FLOOD_MAC, "198.19.0.3"),
    }
    assert neigh == {Neigh("10.32.0.2", bridge_mac(B))}
    assert bridges == {B: "10.32.0.2"}  # C has no bridge address yet: no heartbeats to it


def test_adopted_entries_stay_while_the_mesh_reconnects_then_go() -> None:
    old = frozenset({Fdb(FLOOD_MAC, "198.19.0.7"), Fdb("02:00:00:00:00:0b", "198.19.0.7")})
    r = Retention(retain=60, started=100.0, adopted_fdb=old, adopted_neigh=frozenset({Neigh("10.32.0.2", "x")}))
    fresh = frozenset({Fdb("02:00:00:00:00:0b", "198.19.0.2")})
    fdb, neigh = merge_adopted(fresh, frozenset({Neigh("10.32.0.2", "y")}), r, now=110.0)
    assert fdb == {Fdb(FLOOD_MAC, "198.19.0.7"), Fdb("02:00:00:00:00:0b", "198.19.0.2")}  # fresh wins per MAC
    assert neigh == {Neigh("10.32.0.2", "y")}
    assert merge_adopted(fresh, frozenset(), r, now=160.0) == (fresh, frozenset())


def test_a_departed_peer_is_kept_for_the_retention_period() -> None:
    r = Retention(retain=60, started=0.0)
    r.present({B}, now=10.0)
    assert r.kept(69.0) == {B}
    assert r.kept(70.0) == set()
    assert r.next_deadline() is None


def test_desired_state_without_fastdp_has_no_vxlan() -> None:
    s = Settings(me=A, pod_range="10.32.0.0/12", mtu=1450, fastdp=False)
    d = desired_state(s, "10.32.0.1/12", frozenset({Fdb(FLOOD_MAC, "198.19.0.2")}), frozenset())
    assert d.vxlan is None and d.fdb == frozenset() and d.bridge.addresses == ("10.32.0.1/12",)
    assert ("net/ipv4/ip_forward", "1") in d.sysctls


def _pair(now: float, a: Health, b: Health, deliver_ab: bool = True, deliver_ba: bool = True) -> None:
    for _, msg, _direct in a.due(now):
        if deliver_ab:
            b.receive(msg, now)
    for _, msg, _direct in b.due(now):
        if deliver_ba:
            a.receive(msg, now)


def test_heartbeats_confirm_both_directions_and_detect_a_one_way_failure() -> None:
    a, b = Health(A, interval=1, timeout=3), Health(B, interval=1, timeout=3)
    a.watch({B}, 0.0)
    b.watch({A}, 0.0)
    assert a.evaluate(0.0) == []  # pending, no switch yet
    for t in range(3):
        _pair(float(t), a, b)
    assert [s.new for s in a.evaluate(2.0)] == [Mode.FASTDP]
    # B -> A is cut: A stops hearing B, and B learns from A's heartbeats that A no longer hears it.
    for t in range(3, 8):
        _pair(float(t), a, b, deliver_ba=False)
    assert a.peers[B].mode == Mode.FASTDP  # not re-evaluated yet
    switch = a.evaluate(7.0)
    assert switch and switch[0].new == Mode.DOWN and "UDP 6784" in switch[0].reason
    assert b.evaluate(7.0)[0].new == Mode.DOWN
    for t in range(8, 11):
        _pair(float(t), a, b)
    assert a.evaluate(10.0)[0].new == Mode.FASTDP


def test_a_failed_fast_path_falls_back_to_sleeve_when_available() -> None:
    a = Health(A, interval=1, timeout=3, sleeve_available=True)
    a.watch({B}, 0.0)
    assert a.evaluate(3.0)[0].new == Mode.SLEEVE


@pytest.mark.parametrize(
    "data", [b"", b"WNHB", hb.encode(B, C, True), hb.encode(B, A, True)[:-1], b"XXXX" + hb.encode(B, A, True)[4:]]
)
def test_stray_heartbeats_are_ignored(data: bytes) -> None:
    a = Health(A)
    a.watch({B}, 0.0)
    a.receive(data, 1.0)
    assert a.peers[B].last_rx is None


@pytest.mark.parametrize(
    "info",
    [
        PeerInfo(B, 2**63, "", 0, "", ""),  # a version no one can go above
        PeerInfo(B, 1, "", 0, "02:00:00:00:00:99", ""),  # a bridge MAC not derived from the name
    ],
)
def test_hostile_entries_are_refused(info: PeerInfo) -> None:
    with pytest.raises(DecodeError):
        peers.decode(peers.encode([info]))


UNUSABLE = ["fe80::1", "::1", "ff02::1", "127.0.0.1", "0.0.0.0", "224.0.0.1", "garbage"]  # noqa: S104 - data


@pytest.mark.parametrize(
    ("raw", "want"),
    [("198.19.0.1", "198.19.0.1"), ("::ffff:198.19.0.1", "198.19.0.1"), ("2001:db8::7", "2001:db8::7"),
     ("fd00::1", "fd00::1"), *[(u, "") for u in UNUSABLE]],
)  # fmt: skip
def test_only_usable_vteps(raw: str, want: str) -> None:
    assert peers.vtep_address(raw) == want


def test_adopted_entries_are_dropped_once_adoption_ends() -> None:
    r = Retention(retain=10, started=0.0, adopted_fdb=frozenset({Fdb(FLOOD_MAC, "198.19.0.7")}))
    assert r.next_deadline() == 10.0
    r.kept(10.0)
    assert r.adopted_fdb == frozenset() and r.next_deadline() is None


def test_a_peer_in_sleeve_mode_loses_its_flood_entry_but_keeps_its_bridge_entry() -> None:
    infos = {B: PeerInfo(B, 1, "10.32.0.2", 12, bridge_mac(B), "198.19.0.2")}
    fdb, neigh, bridges = peer_entries({A, B}, infos, {}, A, no_flood=frozenset({B}))
    assert fdb == {Fdb(bridge_mac(B), "198.19.0.2")}  # heartbeats still probe the tunnel
    assert neigh == {Neigh("10.32.0.2", bridge_mac(B))} and bridges == {B: "10.32.0.2"}
