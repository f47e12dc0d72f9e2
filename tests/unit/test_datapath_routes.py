"""Direct mode's kernel objects in plan(): routes, the policy rule, ebtables chains and the bridge's proxy ARP are
converged in one plan, left alone when they match, and removed with the rest (only ours: protocol, priority,
chain names)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from weave_node.datapath.model import (
    ALIAS,
    BRIDGE,
    DIRECT_TABLE,
    Bridge,
    Chain,
    Desired,
    Link,
    Observed,
    Route,
    Rule,
)
from weave_node.datapath.ops import AddRule, DelRoute, DelRule, ReplaceRoute, RestoreTable, SetSysctl
from weave_node.datapath.plan import apply_to_model, plan, plan_removal

PROXY = "net/ipv4/conf/weave/proxy_arp"
DELAY = "net/ipv4/neigh/weave/proxy_delay"
ROUTES = [
    Route("10.40.0.0/14", via="198.19.0.2", dev="eth0"),
    Route("10.40.0.0/14", via="198.19.0.3", dev="eth0"),  # the same destination, another next hop
    Route("10.40.0.1/32", dev=BRIDGE),
    Route("10.40.0.1/32", via="198.19.0.2", dev="eth0", table=DIRECT_TABLE),
    Route("0.0.0.0/0", table=DIRECT_TABLE, kind="unreachable"),
]
ARP = Chain(
    "filter", "WEAVE-NODE-DIRECT", ("-p ARP -o vxlan-6784 --arp-ip-dst 10.40.0.0/14 -j DROP",), "FORWARD", "eth"
)
BR = Link(BRIDGE, "bridge", up=True, mac="02:00:00:00:00:01", mtu=1450, alias=ALIAS, mcast_snooping=False)
LINKS = {BRIDGE: BR, "eth0": Link("eth0", "veth")}


def _one_per_key(routes: frozenset[Route]) -> frozenset[Route]:
    return frozenset({r.key: r for r in sorted(routes)}.values())


def desired(routes: frozenset[Route], rules: frozenset[Rule], direct: bool) -> Desired:
    return Desired(
        bridge=Bridge(mtu=1450, mac="02:00:00:00:00:01", proxy_arp=direct),
        vxlan=None,
        routes=_one_per_key(routes),
        rules=rules,
        chains=(ARP,) if direct else (),
    )


@given(
    want=st.frozensets(st.sampled_from(ROUTES)),
    have=st.frozensets(st.sampled_from(ROUTES)),
    rules=st.frozensets(st.just(Rule())),
    had_rules=st.frozensets(st.sampled_from([Rule(), Rule(mark=7)])),
    direct=st.booleans(),
    proxy=st.sampled_from(["0", "1"]),
)
def test_one_plan_converges_and_a_second_is_empty(  # noqa: PLR0917 - hypothesis gives each by name
    want: frozenset[Route],
    have: frozenset[Route],
    rules: frozenset[Rule],
    had_rules: frozenset[Rule],
    direct: bool,
    proxy: str,
) -> None:
    d = desired(want, rules, direct)
    observed = Observed(
        links=LINKS,
        sysctls={PROXY: proxy, DELAY: "80"},
        iptables={},
        routes=_one_per_key(have),
        rules=had_rules,
        ebtables={"filter": {"FORWARD": ()}},
    )
    after = apply_to_model(observed, plan(d, observed).ops)
    assert after.routes == d.routes and after.rules == d.rules
    assert after.sysctls[PROXY] == ("1" if direct else "0")
    assert plan(d, after).ops == ()


def test_a_changed_next_hop_is_replaced_in_place_and_a_missing_device_is_a_problem() -> None:
    old, new = ROUTES[0], ROUTES[1]
    observed = Observed(links=LINKS, iptables={}, routes=frozenset({old}), ebtables={})
    assert plan(desired(frozenset({new}), frozenset(), False), observed).ops == (ReplaceRoute(new),)
    gone = Route("10.44.0.0/14", via="198.19.0.4", dev="eth9")
    result = plan(desired(frozenset({gone}), frozenset(), False), observed)
    assert result.ops == (DelRoute(old),) and "no such device" in result.problems[0]


def test_ebtables_chains_are_restored_with_ebtables_headers_and_missing_ebtables_is_a_problem() -> None:
    d = desired(frozenset(), frozenset({Rule()}), True)
    observed = Observed(links=LINKS, sysctls={PROXY: "0"}, iptables={}, ebtables={"filter": {"FORWARD": ()}})
    ops = plan(d, observed).ops
    (restore,) = [op for op in ops if isinstance(op, RestoreTable)]
    assert restore.family == "eth" and ":WEAVE-NODE-DIRECT RETURN" in restore.text()
    assert "-I FORWARD 1 -j WEAVE-NODE-DIRECT" in restore.text()
    assert SetSysctl(PROXY, "1") in ops and SetSysctl(DELAY, "0") in ops and AddRule(Rule()) in ops
    without = plan(d, Observed(links=LINKS, iptables={}, ebtables=None))
    assert any("ebtables is not available" in p for p in without.problems)


def test_removal_takes_our_routes_rules_and_chains_only() -> None:
    observed = Observed(
        routes=frozenset(ROUTES[:1]),
        rules=frozenset({Rule()}),
        iptables={},
        ebtables={"filter": {"FORWARD": ("-j WEAVE-NODE-DIRECT", "-j SOMEONE"), "WEAVE-NODE-DIRECT": ARP.rules}},
    )
    ops = plan_removal(observed).ops
    assert DelRoute(ROUTES[0]) in ops and DelRule(Rule()) in ops
    (restore,) = [op for op in ops if isinstance(op, RestoreTable)]
    assert restore.drop_chains == ("WEAVE-NODE-DIRECT",) and restore.del_jumps == (("FORWARD", "-j WEAVE-NODE-DIRECT"),)
    after = apply_to_model(observed, ops)
    assert after.routes == frozenset() and after.rules == frozenset()
    assert after.ebtables == {"filter": {"FORWARD": ("-j SOMEONE",)}}
