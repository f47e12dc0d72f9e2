"""An IPv6 underlay, the pure parts and the small shells: the MTU with IPv6's 20 bytes more, the VXLAN device of
one family (planned anew when the family or source changes), FDB entries only for VTEPs of the device's family
(the others go through the sleeve), the sleeve's datagram size and its dual-stack socket's addresses, and the
mesh listening on both families."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest

from tests.unit.test_overlay_service import FakeKernel, _service
from weave_node.datapath.model import FLOOD_MAC, Fdb, Link, Observed, Vxlan, bridge_mac
from weave_node.datapath.ops import CreateVxlan, DeleteLink
from weave_node.datapath.plan import plan
from weave_node.mesh import listen
from weave_node.overlay import mtu
from weave_node.overlay.desired import Settings, desired_state, other_family, peer_entries, vteps_in_use
from weave_node.overlay.health import Mode
from weave_node.overlay.peers import PeerInfo, choose_underlay, underlay_of
from weave_node.overlay.service import OverlayService
from weave_node.overlay.sleeve.forwarder import Link as SleeveLink
from weave_node.overlay.sleeve.forwarder import open_socket
from weave_node.overlay.sleeve.plan import link_specs
from weave_node.overlay.status import Snapshot, peer_mode, status

A, B, C = 0x020000000001, 0x020000000002, 0x020000000003


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this kernel has no IPv6 (or no ::1)")


def test_the_mtu_of_an_ipv6_underlay_leaves_20_bytes_more() -> None:
    v4 = mtu.from_underlay([("eth0", 1500)], encrypt=False)
    v6 = mtu.from_underlay([("eth0", 1500)], encrypt=False, ipv6=True)
    assert (v4.mtu, v6.mtu) == (1450, 1430) and "VXLAN over IPv6" in v6.source
    sealed4 = mtu.from_underlay([("eth0", 1500)], encrypt=True)
    sealed6 = mtu.from_underlay([("eth0", 1500)], encrypt=True, ipv6=True)
    assert sealed4.mtu - sealed6.mtu == 20 and "over IPv6" in sealed6.source


def test_the_vxlan_device_is_made_anew_for_another_family_or_source() -> None:
    ipv6 = Settings(A, "fd32:58::/64", 1430, vxlan_local="2001:db8:19::1")
    want = desired_state(ipv6, "fd32:58::1/64", frozenset(), frozenset())
    assert want.vxlan == Vxlan(mtu=1430, local="2001:db8:19::1")
    ours = {"weave": Link("weave", "bridge", mtu=1430, mac=bridge_mac(A), up=True, alias="weave-node")}
    v4_device = Link("vxlan-6784", "vxlan", mtu=1430, up=True, master="weave", alias="weave-node", vni=26500,
                     port=6784, learning=True)  # fmt: skip
    ops = plan(want, Observed(links={**ours, "vxlan-6784": v4_device})).ops
    assert DeleteLink("vxlan-6784") in ops
    assert [op.local for op in ops if isinstance(op, CreateVxlan)] == ["2001:db8:19::1"]
    same = Link(**{**v4_device.__dict__, "local": "2001:db8:19::1"})
    assert not [op for op in plan(want, Observed(links={**ours, "vxlan-6784": same})).ops if isinstance(
        op, DeleteLink | CreateVxlan)]  # fmt: skip


def test_only_vteps_of_the_device_s_family_get_entries() -> None:
    infos = {
        B: PeerInfo(B, 1, "fd32:58::2", 64, bridge_mac(B), "2001:db8:19::2"),
        C: PeerInfo(C, 1, "fd32:58::3", 64, bridge_mac(C), "198.19.0.3"),
    }
    fdb, neigh, bridges = peer_entries({A, B, C}, infos, {}, A, ipv6=True)
    assert Fdb(FLOOD_MAC, "2001:db8:19::2") in fdb and not any(e.dst == "198.19.0.3" for e in fdb)
    assert set(bridges) == {B} and len(neigh) == 1
    vteps = vteps_in_use({}, {B, C}, {A, B, C}, infos, {}, ipv6=True)
    assert vteps == {B: "2001:db8:19::2", C: "198.19.0.3"} and other_family({B, C}, vteps, ipv6=True) == {C}
    assert other_family({B, C}, vteps, ipv6=False) == {B}
    # A dual-stack peer we reach over IPv6 (a name with an AAAA record) but that says it is at an IPv4 address:
    # with an IPv4 device, its IPv4 address is the VTEP, and it keeps the fast datapath
    direct = {C: "2001:db8:19::3"}
    assert underlay_of(C, infos, direct, ipv6=False) == "198.19.0.3" and underlay_of(C, infos, direct) == direct[C]
    assert not other_family({C}, vteps_in_use({}, {C}, {C}, infos, direct, ipv6=False), ipv6=False)


@pytest.mark.parametrize(
    ("local", "current", "chosen"),
    [
        ([], "", ""),  # nothing known yet
        ([], "198.19.0.1", "198.19.0.1"),  # no connection now: keep what we had
        (["198.19.0.1", "2001:db8::1"], "", "198.19.0.1"),  # a tie: IPv4
        (["2001:db8::1", "2001:db8::1", "198.19.0.1"], "", "2001:db8::1"),  # the most common
        (["2001:db8::1", "198.19.0.1", "198.19.0.1"], "2001:db8::1", "2001:db8::1"),  # sticky while still in use
        (["2001:db8::2", "198.19.0.1", "198.19.0.1"], "2001:db8::1", "2001:db8::2"),  # sticky to its family
        (["198.19.0.1"], "2001:db8::1", "198.19.0.1"),  # that family is gone
    ],
)
def test_the_underlay_address_is_sticky(local: list[str], current: str, chosen: str) -> None:
    assert choose_underlay(local, current) == chosen


def test_a_peer_of_the_other_family_shows_in_the_sleeve_with_why() -> None:
    snap = Snapshot(fastdp=True, encrypt=False, sleeve_running=True, sleeve_error=None, mtu=1430, mtu_source="x",
                    peers=frozenset({C}), infos={C: PeerInfo(C, 1, "", 0, bridge_mac(C), "198.19.0.3")},
                    sleeving=frozenset({C}), vxlan_local="2001:db8:19::1")  # fmt: skip
    mode, reason = peer_mode(snap, C)
    assert mode is Mode.SLEEVE and "not of our VXLAN device's family (IPv6)" in reason
    assert status(snap, 0.0)["underlay"] == "ipv6"


@needs_ipv6
def test_the_sleeve_s_datagrams_and_addresses_over_ipv6() -> None:
    specs = link_specs({B: "2001:db8:19::2", C: "198.19.0.3"}, None, 1500)
    assert specs[B].max_datagram == 1452 and specs[C].max_datagram == 1472
    assert SleeveLink(specs[C], 0, socket.AF_INET6).addr == ("::ffff:198.19.0.3", 6783)
    assert SleeveLink(specs[B], 0, socket.AF_INET6).addr == ("2001:db8:19::2", 6783)
    assert SleeveLink(specs[C], 0, socket.AF_INET).addr == ("198.19.0.3", 6783)
    sock = open_socket(0)  # the default: one dual-stack socket
    try:
        assert sock.family == socket.AF_INET6 and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        sock.close()


@needs_ipv6
def test_the_mesh_listens_on_both_families_on_one_port() -> None:
    async def run() -> None:
        async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        servers = await listen.listen(accept, "0.0.0.0", 0)  # noqa: S104 - loopback below; the test's own port
        try:
            ports = {s.sockets[0].getsockname()[1] for s in servers}
            assert [s.sockets[0].family for s in servers] == [socket.AF_INET, socket.AF_INET6] and len(ports) == 1
            (port,) = ports
            for host in ("127.0.0.1", "::1"):  # each family reaches us on the one port
                _r, w = await asyncio.open_connection(host, port)
                w.close()
        finally:
            await listen.close(servers)

    asyncio.run(run())


def test_the_mtu_and_the_family_follow_the_underlay_learned_before_and_after_start() -> None:
    """Mesh connections may come before the overlay starts: an IPv6 underlay learned then still lowers the MTU
    chosen at start (peers given by name: IPv4's assumed); an IPv6 VXLAN device found at start keeps its family
    and source across a restart while its address is in use, whatever the first connection's family."""

    async def run(observed: Observed, local: list[str], before: bool) -> OverlayService:
        svc = _service(FakeKernel(observed).kernel(), [0.0], sleeve=False, peer_hosts=("node2.example",))
        if before:
            svc.topology_changed({A: "a", B: "b"}, {B: "2001:db8::2"}, local)
        await svc.start()
        if not before:
            svc.topology_changed({A: "a", B: "b"}, {B: "2001:db8::2"}, local)
        await svc.stop()
        return svc

    plain = Observed(sysctls={"net/ipv4/ip_forward": "1"}, iptables={})
    for before in (True, False):
        svc = asyncio.run(run(plain, ["2001:db8::1"], before))
        assert (svc.mtu, svc.settings.vxlan_local) == (1430, "2001:db8::1"), (before, svc.mtu_choice)
    device = Link("vxlan-6784", "vxlan", local="2001:db8::1", vni=26500, port=6784, learning=True)
    kept = replace(plain, links={"vxlan-6784": device})
    svc = asyncio.run(run(kept, ["198.19.0.1", "2001:db8::1"], True))  # a tie, the adopted device wins it
    assert svc.settings.vxlan_local == "2001:db8::1" and svc.mtu == 1430
