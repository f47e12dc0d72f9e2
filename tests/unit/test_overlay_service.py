"""The overlay shell built and driven without a kernel: a fake `Kernel`, a fake forwarder, a hand-moved clock."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from weave_node.core.address import parse_range
from weave_node.datapath.model import BRIDGE, Desired, Link, Observed, bridge_mac
from weave_node.datapath.ops import FlushLearned, Op, SetLink, SetSysctl
from weave_node.datapath.plan import plan
from weave_node.overlay import peers
from weave_node.overlay.config import OverlayConfig
from weave_node.overlay.desired import SYSCTL_BRIDGE_NF, TAP
from weave_node.overlay.kernel import Kernel
from weave_node.overlay.peers import PeerInfo
from weave_node.overlay.service import OverlayService
from weave_node.overlay.sleeve.config import Config

ME, B = 0xA, 0xB
PODS = parse_range("10.32.0.0/12")


class FakeKernel:
    def __init__(self, observed: Observed | None = None) -> None:
        self.observed = observed or Observed(sysctls={"net/ipv4/ip_forward": "1"}, iptables={})
        self.applied: list[tuple[Op, ...]] = []

    def kernel(self) -> Kernel:
        return Kernel(
            observe=lambda: self.observed,
            apply=self.apply,
            route_mtu=lambda _host: ("eth0", 1500),
            default_route_mtu=lambda: None,
            attach_pod=lambda _pod: {},
            detach_pod=lambda _pod: True,
            pod_state=lambda _pod: {},
        )

    def apply(self, ops: Any) -> tuple[int, list[str]]:
        self.applied.append(tuple(ops))
        return len(ops), []


class FakeChannel:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def gossip(self, data: bytes) -> None:
        self.sent.append(data)


class FakeForwarder:
    def __init__(self) -> None:
        self.configs: list[Config] = []

    def snapshot(self) -> tuple[dict[int, Any], dict[str, int], dict[str, int]]:
        return {}, {}, {}

    def configure(self, config: Config) -> None:
        self.configs.append(config)


def _service(kernel: Kernel, now: list[float], **config: Any) -> OverlayService:
    async def bridge_address(_current: str | None) -> str:
        return "10.32.0.5/12"

    return OverlayService(
        ME, OverlayConfig(pod_range=PODS, **config), bridge_address, clock=lambda: now[0], wall_ns=lambda: 1000,
        kernel=kernel,
    )  # fmt: skip


def test_construction_touches_no_kernel_and_status_has_its_shape() -> None:
    def refuse(*_a: Any) -> Any:
        raise AssertionError("the kernel was touched")

    kernel = Kernel(refuse, refuse, refuse, refuse, refuse, refuse, refuse)
    svc = _service(kernel, [0.0])
    try:
        doc = svc.status()
        assert doc["bridge"] == BRIDGE and doc["mtu"] == 1450 and doc["mtu_source"] == "default"
        assert doc["sleeve"] is None and doc["peers"] == [] and doc["fastdp"]["flood_entries"] == 0
    finally:
        svc.executor.shutdown()
        svc.pods.executor.shutdown()


def test_gossip_merges_others_and_reasserts_us() -> None:
    svc = _service(FakeKernel().kernel(), [0.0])
    channel = FakeChannel()
    svc.gossip.attach(channel)  # type: ignore[arg-type]
    other = PeerInfo(B, 5, "10.40.0.1", 12, bridge_mac(B), "198.19.0.2")
    outside = PeerInfo(0xC, 5, "192.168.0.1", 24, bridge_mac(0xC), "198.19.0.3")
    assert peers.decode(svc.gossip.on_gossip(B, peers.encode([other, outside])) or b"") == [other]
    assert channel.sent == []
    svc.gossip.on_broadcast(B, peers.encode([PeerInfo(ME, 5000, "", 0, bridge_mac(ME), "198.19.0.9")]))
    (sent,) = channel.sent
    assert peers.decode(sent)[0].version == 5001 and svc.gossip.mine.version == 5001 and svc.gossip.mine.underlay == ""
    svc.executor.shutdown()
    svc.pods.executor.shutdown()


def test_start_adopts_the_bridge_address_reconciles_and_stops() -> None:
    bridge = Link(BRIDGE, "bridge", addresses=("10.32.0.5/12",))
    fake = FakeKernel(Observed(links={BRIDGE: bridge}, sysctls={"net/ipv4/ip_forward": "1"}, iptables={}))
    now = [0.0]
    svc = _service(fake.kernel(), now, sleeve=False, fastdp=False, peer_hosts=("198.19.0.2", "node-3"))

    async def run() -> None:
        await svc.start()
        assert svc.bridge_cidr == "10.32.0.5/12"
        assert svc.mtu_choice.source == "underlay eth0 1500 - 50 (VXLAN)"
        for _ in range(100):
            if svc.last_sync:
                break
            await asyncio.sleep(0.01)
        await svc.stop()

    asyncio.run(run())
    assert fake.applied and svc.last_sync["error"] is None
    assert not any(isinstance(op, SetLink) and op.name == TAP for ops in fake.applied for op in ops)  # no sleeve


def test_a_switch_to_the_sleeve_flushes_learned_macs_through_the_plan() -> None:
    now = [0.0]
    svc = _service(FakeKernel().kernel(), now, heartbeat_timeout=4.0)
    forwarder = FakeForwarder()
    svc.sleeve.forwarder = forwarder  # type: ignore[assignment]
    svc.settings = replace(svc.settings, sleeve=True)  # what start() sets once the sleeve runs
    svc.health.sleeve_available = True
    svc.topology_changed({ME: "me", B: "b"}, {B: "198.19.0.2"}, ["198.19.0.1"])
    svc.table.merge([PeerInfo(B, 5, "10.40.0.1", 12, bridge_mac(B), "198.19.0.2")])
    desired: Desired = svc.desired()
    assert svc.heartbeats.peers == {B: "10.40.0.1"} and desired.flush == 0
    svc.health.watch({B}, now[0])
    now[0] = 10.0  # no heartbeat for longer than the timeout
    svc._heartbeat_step()
    assert forwarder.configs[-1].sleeve == {B}  # (the flush comes with the next desired state: below)
    # Status says what the kernel has: until a sync applies the switch, B is still shown in fastdp, switching.
    (shown,) = svc.status()["peers"]
    assert shown["mode"] == "fastdp" and shown["reason"].startswith("switching to sleeve"), shown
    desired = svc.desired()
    assert desired.flush == 1 and TAP in [p.name for p in desired.ports] and svc.planned_sleeve == {B}
    assert svc.desired().flush == 1  # the same sleeve peers again: no second flush
    svc.applied_sleeve = svc.planned_sleeve  # what the reconcile loop records once that state is applied
    assert svc.status()["peers"][0]["mode"] == "sleeve"
    observed = Observed(links={BRIDGE: Link(BRIDGE, "bridge"), TAP: Link(TAP, "tun")}, iptables={})
    flushes = [op for op in plan(desired, observed).ops if isinstance(op, FlushLearned)]
    assert flushes == [FlushLearned(BRIDGE, ("vxlan-6784", TAP), 1)]
    svc.executor.shutdown()
    svc.pods.executor.shutdown()


def test_a_sync_decides_bridge_netfilter_from_the_host_and_status_says_why() -> None:
    observed = Observed(sysctls={"net/ipv4/ip_forward": "1", SYSCTL_BRIDGE_NF: "1"}, iptables={"nat": {}})
    fake = FakeKernel(observed)
    svc = _service(fake.kernel(), [0.0], sleeve=False)
    svc._sync(svc.desired())
    assert svc.status()["bridge_netfilter"]["value"] == "0"
    assert SetSysctl(SYSCTL_BRIDGE_NF, "0") in fake.applied[-1]
    sysctls = {**observed.sysctls, SYSCTL_BRIDGE_NF: "0"}  # as applied; then kube-proxy arrives
    fake.observed = replace(observed, sysctls=sysctls, iptables={"nat": {"KUBE-SERVICES": ()}})
    svc._sync(svc.desired())
    assert SetSysctl(SYSCTL_BRIDGE_NF, "1") in fake.applied[-1]
    assert "kube-proxy" in svc.status()["bridge_netfilter"]["reason"]
    svc.executor.shutdown()
    svc.pods.executor.shutdown()


def test_with_esp_a_peer_that_offers_it_gets_vxlan_under_policies_and_one_that_does_not_gets_the_sleeve() -> None:
    from weave_node.datapath import xfrm
    from weave_node.mesh.crypto import SessionKeys
    from weave_node.mesh.neighbours import Neighbour
    from weave_node.overlay.esp.runtime import FEATURE

    c = 0xC
    calls: list[tuple[str, tuple[Any, ...]]] = []
    fake = FakeKernel()

    def xfrm_apply(ops: list[xfrm.XfrmOp]) -> tuple[int, list[str]]:
        calls.append(("xfrm", tuple(ops)))
        return len(ops), []

    def apply(ops: Any) -> tuple[int, list[str]]:
        calls.append(("datapath", tuple(ops)))
        return fake.apply(ops)

    kernel = replace(fake.kernel(), apply=apply, xfrm_apply=xfrm_apply)
    keys = SessionKeys(send=bytes(32), receive=bytes(range(32)))
    neighbours = {
        B: Neighbour(B, "198.19.0.2", "198.19.0.1", frozenset({FEATURE}), keys),
        c: Neighbour(c, "198.19.0.3", "198.19.0.1", frozenset(), keys),  # an older router, or a kernel without ESP
    }
    now = [0.0]

    async def bridge_address(_current: str | None) -> str:
        return "10.32.0.5/12"

    svc = OverlayService(ME, OverlayConfig(pod_range=PODS, encrypt=True, esp=True), bridge_address,
                         clock=lambda: now[0], kernel=kernel, neighbour=neighbours.get)  # fmt: skip
    try:
        assert svc.fastdp and svc.esp is not None
        svc.sleeve.forwarder = FakeForwarder()  # type: ignore[assignment]
        svc.topology_changed({ME: "me", B: "b", c: "c"}, {B: "198.19.0.2", c: "198.19.0.3"}, ["198.19.0.1"])
        svc.table.merge([PeerInfo(B, 5, "10.40.0.1", 12, bridge_mac(B), "198.19.0.2"),
                         PeerInfo(c, 5, "10.44.0.1", 12, bridge_mac(c), "198.19.0.3")])  # fmt: skip
        desired = svc.desired()
        assert {e.dst for e in desired.fdb} == {"198.19.0.2"}  # no VXLAN at all to C
        assert svc.sleeve_peers() == {c} and svc.no_esp == {c}
        chains = {ch.name: ch for ch in desired.chains}
        assert chains["WEAVE-NODE-ESP-OUT"].hook == "OUTPUT" and chains["WEAVE-NODE-ESP-IN"].hook == "INPUT"
        plan_input = svc.esp.sync_input()
        want = plan_input.desired
        assert want.policies == {xfrm.Policy("198.19.0.1", "198.19.0.2", "out", 6784),
                                 xfrm.Policy("198.19.0.2", "198.19.0.1", "in", 6784)}  # fmt: skip
        assert [(sa.src, sa.dst) for sa in want.sas] == [("198.19.0.2", "198.19.0.1")]  # our inbound, first
        svc._sync(desired, plan_input)
        assert [kind for kind, _ in calls] == ["xfrm", "datapath", "xfrm"]
        first = calls[0][1]
        assert isinstance(first[0], xfrm.AddPolicy) and isinstance(first[-1], xfrm.AddSa)  # blocked, then keyed
        peers_doc = {p["nickname"]: p for p in svc.status()["peers"]}
        assert peers_doc["c"]["mode"] == "sleeve" and "does not offer ESP" in peers_doc["c"]["reason"]
        assert peers_doc["b"]["encryption"]["by"] == "esp" and not peers_doc["b"]["encryption"]["established"]
        assert svc.status()["encryption"]["esp"] is True
    finally:
        svc.executor.shutdown()
        svc.pods.executor.shutdown()


def test_without_esp_a_password_keeps_every_peer_in_the_sealed_sleeve_and_says_why() -> None:
    svc = _service(FakeKernel().kernel(), [0.0], encrypt=True, esp=False, esp_note="WEAVE_ENCRYPTION=sleeve")
    try:
        assert not svc.fastdp and svc.esp is None
        assert svc.status()["encryption"] == {"esp": False, "kind": None, "reason": "WEAVE_ENCRYPTION=sleeve"}
        assert not any(ch.name.startswith("WEAVE-NODE-ESP") for ch in svc.desired().chains)
    finally:
        svc.executor.shutdown()
        svc.pods.executor.shutdown()


def test_a_peer_with_a_password_connected_in_plaintext_gets_no_vxlan_entry_and_the_sleeve_carries_its_bridge() -> None:
    """While encryption is switched on host by host: that peer runs no VXLAN, so a frame to its bridge's MAC (an
    ARP reply to its host routing a pod's packet, say) must flood to the sleeve, not go into a tunnel nobody ends
    (a day-2 test lost ~25 s of pings to it in CI)."""
    from weave_node.mesh.neighbours import Neighbour

    neighbours = {B: Neighbour(B, "198.19.0.2", "198.19.0.1", frozenset(), None, encrypted=False, peer_password=True)}
    now = [0.0]

    async def bridge_address(_current: str | None) -> str:
        return "10.32.0.5/12"

    svc = OverlayService(ME, OverlayConfig(pod_range=PODS), bridge_address, clock=lambda: now[0],
                         kernel=FakeKernel().kernel(), neighbour=neighbours.get)  # fmt: skip
    try:
        svc.sleeve.forwarder = FakeForwarder()  # type: ignore[assignment]
        svc.topology_changed({ME: "me", B: "b"}, {B: "198.19.0.2"}, ["198.19.0.1"])
        svc.table.merge([PeerInfo(B, 5, "10.40.0.1", 12, bridge_mac(B), "198.19.0.2")])
        desired = svc.desired()
        assert desired.fdb == frozenset() and svc.sleeve_peers() == {B} and svc.heartbeats.peers == {}
        # Nor does the sleeve drop frames from or to its bridge's MAC: the sleeve is its only way to our pods (its
        # host's ARP for a pod it routes to; a day-2 run lost 275 pings while ours dropped them)
        blocked = svc.sleeve_config().blocked_macs
        assert bytes.fromhex(bridge_mac(B).replace(":", "")) not in blocked
        assert bytes.fromhex(bridge_mac(ME).replace(":", "")) in blocked
    finally:
        svc.executor.shutdown()
        svc.pods.executor.shutdown()
