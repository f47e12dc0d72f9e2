"""An IPv6 range alone, the pure parts: the overlay's gossip with IPv6 bridge addresses (format 2, only when one
is IPv6's: IPv4 clusters keep sending format 1, which older routers read), the desired datapath (IPv6's sysctls,
ip6tables' chains only, the bridge's one address, no direct mode) planned to convergence, and IPAM with no IPv4
ring (its status names the family)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from pathlib import Path

import pytest

from tests.unit.test_dual_stack import _service
from weave_node.core.clock import FakeClock
from weave_node.datapath.model import Fdb, Neigh, Observed, bridge_mac
from weave_node.datapath.ops import Announce, RestoreTable
from weave_node.datapath.plan import apply_to_model, plan
from weave_node.ipam.errors import Unavailable
from weave_node.ipam.families import Ipam
from weave_node.ipam.model import Key
from weave_node.overlay import direct
from weave_node.overlay.desired import SYSCTL_FORWARD, SYSCTL_FORWARD6, Settings, desired_state, peer_entries
from weave_node.overlay.direct import Entries
from weave_node.overlay.peers import FORMAT, FORMAT2, DecodeError, PeerInfo, decode, encode

A, B, C = 0x020000000001, 0x020000000002, 0x020000000003


def _info(name: int, bridge: str, prefix: int, underlay: str = "198.19.0.1") -> PeerInfo:
    return PeerInfo(name, 1000 + name % 7, bridge, prefix, bridge_mac(name), underlay)


def test_gossip_stays_format_1_until_a_bridge_address_is_ipv6s() -> None:
    v4 = [_info(A, "10.32.0.1", 12), _info(B, "", 0)]
    data = encode(v4)
    assert data[0] == FORMAT and decode(data) == v4
    mixed = [_info(A, "10.32.0.1", 12), _info(B, "fd32:58::1", 64, "198.19.0.2"), _info(C, "", 0, "")]
    data = encode(mixed)
    assert data[0] == FORMAT2 and decode(data) == mixed  # IPv4 entries ride along (as ::ffff:a.b.c.d)
    zero = struct.pack(">BH", FORMAT2, 1) + struct.pack(
        ">QQ16sB6sB", A, 5, ipaddress.IPv6Address("::ffff:0.0.0.0").packed, 0, bytes(6), 0
    )
    assert decode(zero) == [PeerInfo(A, 5, "", 0, "", "")]  # (no address, as IPv4's 0.0.0.0 is none)


@pytest.mark.parametrize(
    ("bridge", "prefix"),
    [("fd32:58::1", 129), ("::ffff:10.32.0.1", 33)],  # beyond the family's width
)
def test_a_format_2_entry_with_a_prefix_too_long_for_its_family_is_refused(bridge: str, prefix: int) -> None:
    raw = struct.pack(">BH", FORMAT2, 1) + struct.pack(
        ">QQ16sB6sB",
        A,
        5,
        ipaddress.IPv6Address(bridge).packed,
        prefix,
        bytes.fromhex(bridge_mac(A).replace(":", "")),
        0,
    )
    with pytest.raises(DecodeError, match="malformed"):
        decode(raw)
    with pytest.raises(DecodeError, match="truncated"):
        decode(raw[:-3])


V6 = Settings(A, "fd32:58::/64", 1450, direct=True)


def test_the_desired_datapath_of_an_ipv6_range_alone() -> None:
    assert V6.ipv6_only and not Settings(A, "10.32.0.0/12", 1450).ipv6_only
    entries = Entries(frozenset(), frozenset(), (), frozenset({B}), ("198.19.0.2",))
    d = desired_state(V6, "fd32:58::1/64", frozenset(), frozenset(), direct=entries)
    assert d.bridge.addresses == ("fd32:58::1/64",) and d.bridge.ipv6 and d.bridge.managed6
    assert not d.bridge.proxy_arp  # direct mode is IPv4's: never on here
    assert (SYSCTL_FORWARD6, "1") in d.sysctls and all(k != SYSCTL_FORWARD for k, _ in d.sysctls)
    assert {c.family for c in d.chains} == {"ip6"}
    assert "-s fd32:58::/64 ! -d fd32:58::/64 -j MASQUERADE" in [r for c in d.chains for r in c.rules]
    empty = {"filter": {"FORWARD": ()}, "nat": {"POSTROUTING": ()}}
    old_v4 = desired_state(Settings(A, "10.32.0.0/12", 1450), "10.32.0.1/12", frozenset(), frozenset())
    start = apply_to_model(Observed(iptables=empty, ip6tables=empty, ebtables={}), plan(
        old_v4, Observed(iptables=empty, ip6tables=empty, ebtables={})).ops)  # fmt: skip
    ops = plan(d, start).ops  # from IPv4 to IPv6 alone: IPv4's chains and address go, IPv6's come
    assert {op.family for op in ops if isinstance(op, RestoreTable)} == {"ip", "ip6"}
    built = apply_to_model(start, ops)
    assert built.links["weave"].addresses == ("fd32:58::1/64",) and not built.iptables.get("nat", {}).get(
        "WEAVE"
    )  # fmt: skip
    assert plan(d, built).ops == ()
    flushed = desired_state(V6, "fd32:58::1/64", frozenset(), frozenset(), 1)
    assert [op.ip for op in plan(flushed, built).ops if isinstance(op, Announce)] == ["fd32:58::1"]


def test_peers_get_ndp_entries_for_ipv6_bridge_addresses() -> None:
    infos = {B: _info(B, "fd32:58::8000:0:0:0", 64, "198.19.0.2")}
    fdb, neigh, bridges = peer_entries({A, B}, infos, {}, A)
    assert Neigh("fd32:58::8000:0:0:0", bridge_mac(B)) in neigh and Fdb(bridge_mac(B), "198.19.0.2") in fdb
    assert bridges == {B: "fd32:58::8000:0:0:0"}


def test_direct_cidrs_of_ipv6_spans() -> None:
    start = int.from_bytes(bytes.fromhex("fd320058" + "00" * 12), "big")
    assert direct.cidrs([(start, start + 2**63)]) == ("fd32:58::/65",)


def test_ipam_with_an_ipv6_range_alone(tmp_path: Path) -> None:
    async def run() -> None:
        clock = FakeClock(100.0)
        v6 = _service(tmp_path, "fd32:58::/120", clock)
        ipam = Ipam(None, v6)
        assert ipam.primary is v6 and ipam.dual is None and ipam.ranges == (v6.range,)
        v6.alloc.tick(clock.now())
        (ip,) = await ipam.allocate(Key("a", "eth0"), wait=0)
        assert ip in v6.range
        status = ipam.status()
        assert status["family"] == "ipv6" and "ipv6" not in status and ipam.ready() == (True, "")
        assert ipam.release("a") == [ip]
        await ipam.stop()
        v4 = _service(tmp_path, "10.32.0.0/30", clock)
        held = Ipam(v4, v6, held4=lambda: "connected peer(s) x(h2) carry no IPv4 range (an IPv6 range alone)")
        with pytest.raises(Unavailable, match=r"no IPv4 address: connected peer\(s\) x\(h2\)"):
            await held.allocate(Key("b", "eth0"), wait=0)
        doc = held.status()
        assert doc["held"] and not doc["ready"] and doc["ipv6"]["ready"] and "held" not in doc["ipv6"], doc
        await held.stop()

    asyncio.run(run())
    with pytest.raises(ValueError, match="needs a range"):
        Ipam(None, None)


def test_the_health_gate_does_not_wait_on_a_held_back_ring() -> None:
    """A rolling change of the range's families: a ring held back by a peer without its family (and so the
    bridge's address of that family) does not stop the roll; anything else not ready does."""
    from weave_node.status_view import not_ready

    router = {"reachable": 2}
    held = {"ready": False, "waiting": "connected peer(s) x(h2) carry no IPv4 range", "held": True}
    assert not_ready({"router": router, "ipam": held, "datapath": {"bridge_address": None}}, peers=1) == ""
    waiting = {"ready": False, "waiting": "consensus"}
    assert not_ready({"router": router, "ipam": waiting, "datapath": {"bridge_address": None}}, 1) == "IPAM: consensus"
    ready = {"ready": True, "waiting": "", "ipv6": {"ready": False, "waiting": "held6", "held": True}}
    assert not_ready({"router": router, "ipam": ready, "datapath": {"bridge_address": None}}, 1) == (
        "the weave bridge has no address yet"
    )
