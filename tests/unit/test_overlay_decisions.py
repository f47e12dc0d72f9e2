"""The overlay shell's decisions as pure functions: gossip merge and re-assertion, the sleeve's links and routes,
the MTU, the adoption of the bridge address, and each peer's mode in `status`."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.test_mesh_routes import graph
from weave_node.core.address import parse_range
from weave_node.datapath.model import bridge_mac
from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay import mtu
from weave_node.overlay.desired import adopted_bridge_cidr, vteps_in_use
from weave_node.overlay.health import Mode
from weave_node.overlay.peers import PeerInfo, PeerTable, accepted, in_range, merge, updated
from weave_node.overlay.sleeve import plan as sleeve_plan
from weave_node.overlay.sleeve.codec import MODE_AESGCM, MODE_SECRETBOX
from weave_node.overlay.sleeve.config import Config, LinkSpec, LinkStatus
from weave_node.overlay.status import PeerHealthView, Snapshot, peer_mode, status

ME, B, C = 0xA, 0xB, 0xC
PODS = parse_range("10.32.0.0/12")
KEYS = SessionKeys(b"s" * 32, b"r" * 32)


def _mine(version: int = 100, ip: str = "10.32.0.1") -> PeerInfo:
    return PeerInfo(ME, version, ip, 12, bridge_mac(ME), "198.19.0.1")


# --- gossip --------------------------------------------------------------------------------------------


def test_an_older_incarnation_of_ourselves_is_answered_with_a_higher_version() -> None:
    table, mine = PeerTable(), _mine()
    table.merge([mine])
    ghost = PeerInfo(ME, 500, "10.32.0.9", 12, bridge_mac(ME), "198.19.0.7")  # from before a clock went back
    merged = merge(table, [ghost, PeerInfo(B, 1, "", 0, "", "198.19.0.2")], mine, PODS)
    assert merged.mine == replace(mine, version=501)
    assert table.infos[ME] == merged.mine
    assert [i.name for i in merged.news] == [B]  # our own entry is never news to gossip on


def test_nothing_about_us_in_gossip_reasserts_nothing() -> None:
    table, mine = PeerTable(), _mine()
    table.merge([mine])
    assert merge(table, [mine], mine, PODS).mine is None
    assert merge(table, [replace(mine, version=1)], mine, PODS) == merge(table, [], mine, PODS)


def test_bridge_addresses_outside_the_pod_range_or_ours_are_dropped() -> None:
    mine = _mine()
    infos = [
        PeerInfo(B, 1, "192.168.1.1", 24, bridge_mac(B), "198.19.0.2"),  # outside
        PeerInfo(C, 1, "10.32.0.1", 12, bridge_mac(C), "198.19.0.3"),  # ours
        PeerInfo(0xD, 1, "10.40.0.1", 12, bridge_mac(0xD), "198.19.0.4"),
        PeerInfo(0xE, 1, "", 0, "", "198.19.0.5"),  # none yet
    ]
    assert [i.name for i in accepted(infos, mine, PODS)] == [0xD, 0xE]
    table = PeerTable()
    assert {i.name for i in merge(table, infos, mine, PODS).news} == {0xD, 0xE} and B not in table.infos


def test_our_info_changes_with_a_newer_version_and_only_when_it_changed() -> None:
    mine = _mine(version=100)
    assert updated(mine, mine, wall_ns=5000) is None
    assert updated(mine, replace(mine, underlay="198.19.0.9"), wall_ns=5000) == replace(
        mine, underlay="198.19.0.9", version=5000
    )
    assert updated(mine, replace(mine, prefix=16), wall_ns=7).version == 101  # type: ignore[union-attr]


def test_range_membership_takes_addresses_and_cidrs() -> None:
    assert in_range("10.32.0.1", PODS) and in_range("10.47.255.254/12", PODS)
    assert not in_range("10.48.0.1/12", PODS) and not in_range("192.168.0.1", PODS)


# --- the datapath's inputs ---------------------------------------------------------------------------------


def test_the_bridge_address_is_adopted_only_when_exactly_one_is_in_the_range() -> None:
    assert adopted_bridge_cidr(("10.32.0.5/12", "192.168.0.1/24"), PODS) == "10.32.0.5/12"
    assert adopted_bridge_cidr(("10.32.0.5/12", "10.33.0.1/12"), PODS) is None
    assert adopted_bridge_cidr(("192.168.0.1/24",), PODS) is None


def test_a_departed_peer_keeps_its_vtep_and_a_forgotten_one_loses_it() -> None:
    infos = {B: PeerInfo(B, 1, "", 0, "", "198.19.0.99")}
    vteps = {B: "198.19.0.2", C: "198.19.0.3"}
    assert vteps_in_use(vteps, [], {B}, infos, {}) == {B: "198.19.0.2"}  # B away but kept: not what it says now
    assert vteps_in_use(vteps, [B], {B}, infos, {B: "198.19.0.22"}) == {B: "198.19.0.22"}


def test_the_mtu_is_the_smallest_underlay_minus_the_encapsulation() -> None:
    assert mtu.configured(None) == mtu.Mtu(1450, "default") and mtu.configured(9000).source == "WEAVE_MTU"
    assert mtu.probe_hosts(["198.19.0.2", "node-2.example", "2001:db8::1"]) == ["198.19.0.2", "2001:db8::1"]
    found = [("eth0", 1500), ("eth1", 9000)]
    assert mtu.from_underlay(found, encrypt=False) == mtu.Mtu(1450, "underlay eth0 1500 - 50 (VXLAN)", 1500)
    sealed = mtu.from_underlay(found, encrypt=True)
    assert sealed.underlay == 1500 and sealed.mtu == 1500 - 52 - 52
    assert sealed.source == "underlay eth0 1500 - 104 (encrypted sleeve)"
    assert mtu.from_underlay([], encrypt=False).source == "underlay (no route found) 1500 - 50 (VXLAN)"


# --- the sleeve ------------------------------------------------------------------------------------------


def test_with_a_password_a_link_without_keys_gets_no_link_spec() -> None:
    direct = {B: "198.19.0.2", C: "198.19.0.3"}
    links = sleeve_plan.link_specs(direct, {B: (KEYS, MODE_AESGCM)}, underlay_mtu=1500)
    assert links == {B: LinkSpec(B, "198.19.0.2", KEYS, max_datagram=1472, cipher=MODE_AESGCM)}
    clear = sleeve_plan.link_specs(direct, None, underlay_mtu=9000)
    assert clear == {B: LinkSpec(B, "198.19.0.2", None, 8972), C: LinkSpec(C, "198.19.0.3", None, 8972)}


def test_with_a_password_a_plaintext_connection_gets_a_clear_link_and_an_encrypted_one_never_does() -> None:
    """While encryption is being turned on or off: C (no password) is reached in the clear, B only sealed, even if
    B were (wrongly) reported plain too."""
    direct = {B: "198.19.0.2", C: "198.19.0.3"}
    links = sleeve_plan.link_specs(direct, {B: (KEYS, MODE_AESGCM)}, 1500, plain=frozenset({B, C}))
    assert links[B].keys is KEYS and links[C] == LinkSpec(C, "198.19.0.3", None, max_datagram=1472)


def test_routes_take_only_links_that_answer_and_bridges_stay_in_vxlan() -> None:
    links = sleeve_plan.link_specs({B: "198.19.0.2", C: "198.19.0.3"}, None, 1500)
    records = graph([(ME, B), (B, C), (ME, C)])
    kw = {"me": ME, "links": links, "records": records, "sleeve": frozenset({C}), "peers": {B, C}}
    config = sleeve_plan.sleeve_config(up={B, 0x99}, fastdp=True, **kw)  # type: ignore[arg-type]
    assert config.routes == {B: B, C: B} and config.sleeve == {C}
    assert config.blocked_macs == {bytes.fromhex(bridge_mac(n).replace(":", "")) for n in (ME, B, C)}
    assert sleeve_plan.sleeve_config(up=set(), fastdp=False, **kw).blocked_macs == frozenset()  # type: ignore[arg-type]
    # Late sleeve frames are dropped only from peers confirmed in the kernel's modes, and only with fastdp (with a
    # password every peer takes the sleeve): never from one pending, down or in the sleeve.
    modes = {B: Mode.FASTDP, C: Mode.SLEEVE, 0x99: Mode.PENDING, 0x98: Mode.DIRECT, 0x97: Mode.DOWN}
    assert sleeve_plan.sleeve_config(up={B}, fastdp=True, modes=modes, **kw).kernel_peers == {B, 0x98}  # type: ignore[arg-type]
    assert sleeve_plan.sleeve_config(up={B}, fastdp=False, modes=modes, **kw).kernel_peers == frozenset()  # type: ignore[arg-type]


def test_which_peers_take_the_sleeve() -> None:
    modes = {B: Mode.SLEEVE, C: Mode.FASTDP}
    assert sleeve_plan.sleeve_peers(False, True, {B, C}, modes) == frozenset()
    assert sleeve_plan.sleeve_peers(True, False, {B, C}, {}) == {B, C}
    assert sleeve_plan.sleeve_peers(True, True, {B, C}, modes) == {B}


def test_what_the_log_announces_once() -> None:
    one = Config({B: LinkSpec(B, "a", KEYS)}, {C: B}, frozenset({B, C}))
    assert sleeve_plan.newly_sealed(None, one) == [(B, MODE_SECRETBOX)]
    assert sleeve_plan.newly_sealed(one, one) == []
    aes = replace(one, links={B: LinkSpec(B, "a", KEYS, cipher=MODE_AESGCM)})
    assert sleeve_plan.newly_sealed(one, aes) == [(B, MODE_AESGCM)]
    assert sleeve_plan.new_routes(one, {}) == [(C, B)]  # B has no route: nothing to say yet
    assert sleeve_plan.new_routes(one, {C: B}) == []


# --- status ----------------------------------------------------------------------------------------------


def _snap(**kw: object) -> Snapshot:
    base = Snapshot(fastdp=True, encrypt=False, sleeve_running=True, sleeve_error=None, mtu=1450, mtu_source="default")
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "mode", "reason"),
    [
        ({"fastdp": False, "sleeve_running": False, "sleeve_error": "cannot bind UDP 6783: Address in use"},
         "down", "sleeve unavailable: cannot bind UDP 6783: Address in use"),
        ({"fastdp": False, "sleeve_running": False}, "down", "fast datapath disabled"),
        ({"fastdp": False, "encrypt": True, "sleeving": frozenset({B}), "routes": {B: B}},
         "sleeve", "encrypted: the kernel's VXLAN cannot encrypt"),
        ({"fastdp": False, "sleeving": frozenset({B})}, "sleeve", "fast datapath disabled; no sleeve route yet"),
        ({}, "pending", "no underlay address known yet"),
        ({"direct": {B: "198.19.0.2"}}, "pending", "no bridge address known yet"),
        ({"health": {B: PeerHealthView(Mode.SLEEVE, "no hb", 1.0)}}, "sleeve", "no hb; no sleeve route yet"),
        ({"health": {B: PeerHealthView(Mode.FASTDP, "both ways", 1.0)}}, "fastdp", "both ways"),
        # The heartbeats decided, the kernel datapath not yet (flood entries, flush): the mode it has, "switching".
        ({"health": {B: PeerHealthView(Mode.SLEEVE, "no hb", 1.0)}, "applied_sleeve": frozenset()},
         "fastdp", "switching to sleeve (datapath update pending): no hb"),
        ({"health": {B: PeerHealthView(Mode.FASTDP, "both ways", 1.0)}, "applied_sleeve": frozenset({B})},
         "sleeve", "switching to fastdp (datapath update pending): both ways; no sleeve route yet"),
        ({"health": {B: PeerHealthView(Mode.SLEEVE, "no hb", 1.0)}, "applied_sleeve": frozenset({B}), "routes": {B: B}},
         "sleeve", "no hb"),
    ],
)  # fmt: skip
def test_each_peers_mode_and_reason(kw: dict[str, object], mode: str, reason: str) -> None:
    snap = _snap(peers=frozenset({B}), **kw)
    assert peer_mode(snap, B) == (Mode(mode), reason)
    (peer,) = status(snap, now=10.0)["peers"]
    assert (peer["mode"], peer["reason"]) == (mode, reason)


def test_the_status_document() -> None:
    snap = _snap(
        bridge_cidr="10.32.0.1/12",
        peers=frozenset({B}),
        heartbeat_peers={B: "10.40.0.1", C: "10.44.0.1"},  # C: departed, still retained
        health={B: PeerHealthView(Mode.FASTDP, "ok", 7.25)},
        infos={B: PeerInfo(B, 1, "10.40.0.1", 12, bridge_mac(B), "198.19.0.2")},
        nicknames={B: "b", C: "c"},
        routes={B: B, C: B},
        links={B: LinkStatus(True, 1472, 1472, 0.5, "none (no password)")},
        counters={"tx": 3},
        drops={"replay": 1},
        flood_entries=2,
        problems=("x",),
        last_sync={"at": 8.0, "ops": 0, "error": None, "seconds": 0.01},
    )
    doc = status(snap, now=10.0)
    assert doc["fastdp"] == {"device": "vxlan-6784", "port": 6784, "vni": 0x6784, "flood_entries": 2}
    assert doc["sleeve"] == {"device": "weave-sleeve", "port": 6783, "encrypted": False, "counters": {"tx": 3},
                             "drops": {"replay": 1}}  # fmt: skip
    assert doc["last_sync"] == {"at": 2.0, "ops": 0, "error": None, "seconds": 0.01}
    b, c = doc["peers"]
    assert b == {
        "name": "00:00:00:00:00:0b",
        "nickname": "b",
        "vtep": "198.19.0.2",
        "bridge_ip": "10.40.0.1",
        "mode": "fastdp",
        "reason": "ok",
        "last_heartbeat_ago": 2.8,
        "in_topology": True,
        "direct": None,
        "sleeve": {"via": "direct", "link": {"up": True, "verified_mtu": 1472, "last_ack_ago": 0.5,
                                             "cipher": "none (no password)"}},
        "encryption": None,  # (no password)
    }  # fmt: skip
    assert c["in_topology"] is False and c["sleeve"] == {"via": "b", "link": None} and c["mode"] == "pending"
    assert status(_snap(sleeve_running=False, sleeve_error="no TAP"), 0.0)["sleeve"] == {"error": "no TAP"}
    assert status(_snap(sleeve_running=False), 0.0)["sleeve"] is None


def test_a_peer_with_a_password_connected_to_us_in_plaintext_is_reached_through_the_sleeve() -> None:
    """While encryption is switched: we (no password, fastdp) reach a peer that has one (no VXLAN there) through
    the sleeve, whatever the heartbeats say."""
    modes = {B: Mode.FASTDP}
    assert sleeve_plan.sleeve_peers(True, True, {B, C}, modes, frozenset({C})) == {C}
    assert sleeve_plan.sleeve_peers(True, True, {B}, modes, frozenset({C})) == frozenset()  # C is gone


def test_with_a_password_a_plain_link_carries_only_its_own_peers_traffic() -> None:
    """A (us, with a password) - B (plaintext, no password) - C (with a password): C is never reached through B,
    where its frames would cross the wire in the clear; with the sealed link to C down, C is unreachable."""
    records = graph([(ME, B), (B, C), (ME, C)])
    links = {B: LinkSpec(B, "198.19.0.2", None, 1472), C: LinkSpec(C, "198.19.0.3", KEYS, 1472)}
    kw = {"me": ME, "links": links, "records": records, "sleeve": frozenset({B, C}), "peers": {B, C}}
    assert sleeve_plan.sleeve_config(up={B}, fastdp=False, encrypt=True, **kw).routes == {B: B}  # type: ignore[arg-type]
    assert sleeve_plan.sleeve_config(up={B, C}, fastdp=False, encrypt=True, **kw).routes == {B: B, C: C}  # type: ignore[arg-type]
    assert sleeve_plan.sleeve_config(up={B}, fastdp=False, encrypt=False, **kw).routes == {B: B, C: B}  # type: ignore[arg-type]
