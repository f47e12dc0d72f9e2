"""Dual-stack's pure parts: IPALLOC_RANGE with a range of each family, the desired datapath (the bridge's IPv6
address, IPv6 sysctls, ip6tables' chains) planned to convergence, and the IPAM families' all-or-none allocation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from weave_node.config import from_env_and_flags
from weave_node.core.address import parse_range
from weave_node.core.clock import FakeClock
from weave_node.core.errors import ConfigError
from weave_node.datapath.model import Link, Observed
from weave_node.datapath.ops import Announce, DelAddress, RestoreTable
from weave_node.datapath.plan import apply_to_model, plan, plan_removal
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.errors import Unavailable
from weave_node.ipam.families import Ipam
from weave_node.ipam.model import Key, parse_init
from weave_node.ipam.service import IpamService
from weave_node.ipam.store import Store
from weave_node.overlay.desired import SYSCTL_FORWARD6, Settings, desired_state, with_bridge_nf

ME = 0x020000000001


def test_ipalloc_range_takes_one_range_of_each_family_ipv4_first() -> None:
    config = from_env_and_flags({"IPALLOC_RANGE": "fd32:57::/64, 10.40.0.0/16"}, {})
    assert str(config.ipalloc_range) == "10.40.0.0/16" and str(config.ipalloc_range6) == "fd32:57::/64"
    assert from_env_and_flags({}, {}).ipalloc_range6 is None
    alone = from_env_and_flags({"IPALLOC_RANGE": "fd32:57::/64"}, {})  # IPv6 alone: the first (overlay's) range
    assert str(alone.ipalloc_range) == "fd32:57::/64" and alone.ipalloc_range6 is None
    for bad, why in (
        ("10.32.0.0/12,10.48.0.0/12", "at most one range of each family"),
        ("10.32.0.0/12,fe80::/64", "link-local"),
    ):
        with pytest.raises(ConfigError, match=why):
            from_env_and_flags({"IPALLOC_RANGE": bad}, {})


SETTINGS = Settings(ME, "10.32.0.0/12", 1450, pod_range6="fd32:57::/64")


def test_the_bridge_s_addresses_are_managed_family_by_family() -> None:
    assert desired_state(SETTINGS, None, frozenset(), frozenset()).bridge.addresses is None  # nothing known: kept
    v4_first = desired_state(SETTINGS, "10.32.0.1/12", frozenset(), frozenset()).bridge
    assert v4_first.addresses == ("10.32.0.1/12",) and not v4_first.managed6  # IPv4 (heartbeats) need not wait
    bridge = Link("weave", "bridge", addresses=("10.32.0.1/12", "2001:db8::5/64", "fd32:57::9/64"))
    ops = plan(desired_state(SETTINGS, "10.32.0.1/12", frozenset(), frozenset()), Observed(links={"weave": bridge})).ops
    assert not [op for op in ops if isinstance(op, DelAddress)]  # IPv6's left alone until ours is known
    ops = plan(desired_state(SETTINGS, "10.32.0.1/12", frozenset(), frozenset(), bridge_cidr6="fd32:57::1/64"),
               Observed(links={"weave": bridge})).ops  # fmt: skip
    assert {op.cidr for op in ops if isinstance(op, DelAddress)} == {"2001:db8::5/64", "fd32:57::9/64"}
    ipv4_only = desired_state(Settings(ME, "10.32.0.0/12", 1450), "10.32.0.1/12", frozenset(), frozenset())
    ops = plan(ipv4_only, Observed(links={"weave": bridge})).ops
    assert not [op for op in ops if isinstance(op, DelAddress)]  # an IPv4-only router never touches IPv6's
    both = desired_state(SETTINGS, "10.32.0.1/12", frozenset(), frozenset(), bridge_cidr6="fd32:57::1/64")
    assert both.bridge.addresses == ("10.32.0.1/12", "fd32:57::1/64") and both.bridge.ipv6
    assert (SYSCTL_FORWARD6, "1") in both.sysctls
    assert ("net/ipv6/conf/weave/disable_ipv6", "0") in both.bridge.sysctls()
    v6_chains = [c for c in both.chains if c.family == "ip6"]
    assert [c.table for c in v6_chains] == ["filter", "nat"]
    assert "-s fd32:57::/64 ! -d fd32:57::/64 -j MASQUERADE" in v6_chains[1].rules
    off = with_bridge_nf(both, "0")
    assert ("net/bridge/bridge-nf-call-ip6tables", "0") in off.sysctls  # both families' hooks alike
    ipv4_only = desired_state(Settings(ME, "10.32.0.0/12", 1450), "10.32.0.1/12", frozenset(), frozenset())
    assert not ipv4_only.bridge.ipv6 and all(c.family != "ip6" for c in ipv4_only.chains)


def test_a_dual_stack_plan_converges_and_removal_takes_ip6tables_chains_too() -> None:
    desired = desired_state(SETTINGS, "10.32.0.1/12", frozenset(), frozenset(), bridge_cidr6="fd32:57::1/64")
    empty = {"filter": {"FORWARD": ()}, "nat": {"POSTROUTING": ()}}
    start = Observed(iptables=empty, ip6tables=empty, ebtables={})
    ops = plan(desired, start).ops
    assert {op.family for op in ops if isinstance(op, RestoreTable)} == {"ip", "ip6"}
    built = apply_to_model(start, ops)
    assert plan(desired, built).ops == ()
    assert "fd32:57::1/64" in built.links["weave"].addresses
    removal = plan_removal(built).ops
    assert {op.family for op in removal if isinstance(op, RestoreTable)} == {"ip", "ip6"}
    flushed = desired_state(SETTINGS, "10.32.0.1/12", frozenset(), frozenset(), 1, bridge_cidr6="fd32:57::1/64")
    announced = [op.ip for op in plan(flushed, built).ops if isinstance(op, Announce)]
    assert announced == ["10.32.0.1", "fd32:57::1"]  # after a path change: a gratuitous ARP and an advertisement
    missing = plan(desired, Observed(iptables=empty, ebtables={})).problems  # no ip6tables on the host
    assert any("ip6tables is not available" in p for p in missing)


def _service(tmp_path: Path, text: str, clock: FakeClock) -> IpamService:
    span = parse_range(text, ipv6=True)
    alloc = Allocator(ME, span, parse_init("consensus=1", 1), reclaim_after=600.0, now=clock.now())
    return IpamService(alloc, Store(tmp_path / f"{span.bits}.db", me=ME, span=span), clock)


def test_a_pod_gets_an_address_of_each_family_or_none(tmp_path: Path) -> None:
    async def run() -> None:
        clock = FakeClock(100.0)
        v4, v6 = _service(tmp_path, "10.32.0.0/30", clock), _service(tmp_path, "fd32:57::/120", clock)
        held = [""]
        ipam = Ipam(v4, v6, lambda: held[0])
        for s in ipam.services:
            s.alloc.tick(clock.now())
        a, a6 = await ipam.allocate(Key("a", "eth0"), wait=0)
        assert a in v4.range and a6 in v6.range and a6 >= 2**32
        assert await ipam.allocate(Key("a", "eth0"), wait=0) == (a, a6)  # idempotent
        await ipam.allocate(Key("b", "eth0"), wait=0)  # the /30's second and last address
        with pytest.raises(Unavailable):
            await ipam.allocate(Key("c", "eth0"), wait=0)  # IPv4 is full: no IPv6 address is kept either
        assert [h.ip for h in ipam.lookup(Key("c", "eth0"))] == [None, None]
        assert sorted(ipam.release("a")) == sorted([a, a6])
        held[0] = "connected peer(s) x carry no IPv6 range"
        with pytest.raises(Unavailable, match="no IPv6 address: connected peer"):
            await ipam.allocate(Key("d", "eth0"), wait=0)
        assert ipam.status()["ipv6"]["waiting"] == held[0] and ipam.ready() == (False, held[0])
        await ipam.stop()

    asyncio.run(run())
