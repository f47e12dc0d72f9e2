"""plan(): converges in one step from any observed state, is empty when nothing differs, and never touches what
is not ours."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.datapath.iptables import FORWARD_CHAIN, NAT_CHAIN, parse_save, weave_chains
from weave_node.datapath.model import (
    ALIAS,
    BRIDGE,
    CHAIN_PREFIX,
    FLOOD_MAC,
    VXLAN,
    VXLAN_PORT,
    Bridge,
    Desired,
    Fdb,
    Link,
    Neigh,
    Observed,
    Port,
    Vxlan,
    bridge_mac,
    overlay_mtu,
)
from weave_node.datapath.ops import (
    Announce,
    CreateBridge,
    CreateVxlan,
    DeleteLink,
    FlushLearned,
    RestoreTable,
    SetLink,
)
from weave_node.datapath.plan import apply_to_model, plan, plan_removal

MACS = ["aa:00:00:00:00:01", "aa:00:00:00:00:02", "aa:00:00:00:00:03", FLOOD_MAC]
IPS = ["198.19.0.1", "198.19.0.2", "198.19.0.3"]
CIDRS = ["10.32.0.1/12", "10.32.0.2/12", "10.40.0.1/16"]
KEYS = ["net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"]
TAP = "weave-sleeve"

fdbs = st.frozensets(st.builds(Fdb, st.sampled_from(MACS), st.sampled_from(IPS)), max_size=6)
neighs = st.frozensets(st.builds(Neigh, st.sampled_from(["10.32.0.9", "10.33.0.1"]), st.sampled_from(MACS[:3])))


@st.composite
def desireds(draw: st.DrawFn) -> Desired:
    mtu = draw(st.sampled_from([1376, 1450, 8950]))
    addrs = draw(st.none() | st.lists(st.sampled_from(CIDRS), unique=True, max_size=2).map(tuple))
    sleeve = draw(st.booleans())
    vxlan = draw(
        st.none() | st.builds(Vxlan, mtu=st.just(mtu), vni=st.sampled_from([1, 0x6784]), isolated=st.just(sleeve))
    )
    return Desired(
        bridge=Bridge(mtu=mtu, mac=bridge_mac(draw(st.integers(0, 2**48 - 1))), addresses=addrs),
        vxlan=vxlan,
        fdb=draw(fdbs),
        neigh=draw(neighs),
        sysctls=tuple((k, "1") for k in draw(st.lists(st.sampled_from(KEYS), unique=True))),
        chains=weave_chains(draw(st.sampled_from(["10.32.0.0/12", "10.40.0.0/16"])), masquerade=draw(st.booleans())),
        ports=(Port(TAP, mtu),) if sleeve else (),
        flush=draw(st.integers(0, 2)),
    )


@st.composite
def observeds(draw: st.DrawFn) -> Observed:
    links: dict[str, Link] = {"eth0": Link("eth0", "veth", mtu=1500, up=True, addresses=("198.19.0.1/24",))}
    if draw(st.booleans()):
        links[BRIDGE] = Link(
            BRIDGE,
            "bridge",
            mtu=draw(st.sampled_from([1376, 1500, 9000])),
            mac=draw(st.sampled_from(MACS[:3])),
            up=draw(st.booleans()),
            alias=draw(st.sampled_from(["", ALIAS])),
            addresses=tuple(sorted(draw(st.lists(st.sampled_from(CIDRS), unique=True, max_size=2)))),
            mcast_snooping=draw(st.booleans()),
        )
    if BRIDGE in links and draw(st.booleans()):
        links[VXLAN] = Link(
            VXLAN,
            "vxlan",
            mtu=draw(st.sampled_from([1376, 1450])),
            up=draw(st.booleans()),
            master=draw(st.sampled_from(["", BRIDGE])),
            alias=ALIAS,
            vni=draw(st.sampled_from([1, 0x6784])),
            port=VXLAN_PORT,
            learning=draw(st.booleans()),
            isolated=draw(st.none() | st.booleans()),
        )
    links[TAP] = Link(  # the sleeve's TAP exists whenever the sleeve runs (it is opened before the first sync)
        TAP,
        "tun",
        mtu=draw(st.sampled_from([1450, 1500])),
        up=draw(st.booleans()),
        master=draw(st.sampled_from(["", BRIDGE])) if BRIDGE in links else "",
        isolated=draw(st.none() | st.booleans()),
    )
    present = [k for k in KEYS if draw(st.booleans())] + ["net/ipv4/ip_forward"]
    tables = {
        "filter": {
            "INPUT": (),
            "FORWARD": tuple(draw(st.lists(st.sampled_from(["-j KUBE-FORWARD", f"-j {FORWARD_CHAIN}"]), max_size=3))),
            "KUBE-FORWARD": ("-m comment --comment kube -j ACCEPT",),
        },
        "nat": {"POSTROUTING": tuple(draw(st.lists(st.sampled_from([f"-j {NAT_CHAIN}", "-j KUBE-POSTROUTING"]))))},
    }
    if draw(st.booleans()):
        tables["filter"][FORWARD_CHAIN] = ("-j ACCEPT",)
    if draw(st.booleans()):
        tables["nat"][CHAIN_PREFIX + "OLD"] = ("-j RETURN",)
        tables["nat"]["POSTROUTING"] += (f"-j {CHAIN_PREFIX}OLD",)
    return Observed(
        links=links,
        fdb=draw(fdbs) if VXLAN in links else frozenset(),
        neigh=draw(neighs) if BRIDGE in links else frozenset(),
        sysctls={k: draw(st.sampled_from(["0", "1"])) for k in present},
        iptables=tables,
        flushed=draw(st.integers(0, 2)),
    )


def _ours_only(ops: tuple[object, ...], observed: Observed) -> None:
    for op in ops:
        name = getattr(op, "name", None) or getattr(op, "link", None)
        if name is not None:
            assert name in (BRIDGE, VXLAN, TAP), op
        if isinstance(op, FlushLearned):
            assert op.bridge == BRIDGE and set(op.ports) <= {VXLAN, TAP}
        if isinstance(op, DeleteLink):
            assert observed.links[op.name].alias == ALIAS
        if isinstance(op, RestoreTable):
            assert all(c.name.startswith(CHAIN_PREFIX) for c in op.write)
            assert all(rule.startswith(f"-j {CHAIN_PREFIX}") for _, rule in op.del_jumps + op.add_jumps)
            assert all(n.startswith(CHAIN_PREFIX) for n in op.drop_chains)


@settings(max_examples=400)
@given(desireds(), observeds())
def test_one_plan_converges_and_only_touches_ours(desired: Desired, observed: Observed) -> None:
    first = plan(desired, observed)
    _ours_only(first.ops, observed)
    after = apply_to_model(observed, first.ops)
    again = plan(desired, after)
    assert again.ops == (), again
    assert again.problems == first.problems
    # Others' chains and rules are exactly as they were.
    assert observed.iptables is not None and after.iptables is not None
    assert after.iptables["filter"]["KUBE-FORWARD"] == observed.iptables["filter"]["KUBE-FORWARD"]
    kube = [r for r in after.iptables["filter"]["FORWARD"] if "KUBE" in r]
    assert kube == [r for r in observed.iptables["filter"]["FORWARD"] if "KUBE" in r]
    assert after.links["eth0"] == observed.links["eth0"]
    assert sum(isinstance(op, FlushLearned) for op in first.ops) <= 1
    # The host announces its bridge address (a gratuitous ARP) last, once, after a flush or a new bridge address.
    announced = [op for op in first.ops if isinstance(op, Announce)]
    new_path = any(isinstance(op, FlushLearned) for op in first.ops) and desired.vxlan is not None
    assert len(announced) == int(new_path and bool(desired.bridge.addresses) and bool(desired.bridge.mac))
    if announced:
        assert (
            first.ops[-1]
            == announced[0]
            == Announce(BRIDGE, desired.bridge.addresses[0].split("/")[0], desired.bridge.mac)
        )


@given(desireds())
def test_plan_of_a_host_that_already_matches_is_empty(desired: Desired) -> None:
    built = apply_to_model(
        Observed(sysctls=dict.fromkeys(KEYS, "0"), iptables={"filter": {"FORWARD": ()}, "nat": {"POSTROUTING": ()}}),
        plan(
            desired,
            Observed(sysctls=dict.fromkeys(KEYS, "0"), iptables={}),
        ).ops,
    )
    assert plan(desired, built).ops == ()


def test_a_fresh_host_gets_bridge_then_vxlan_then_entries_then_rules() -> None:
    desired = Desired(
        Bridge(mtu=1450, mac="02:00:00:00:00:01", addresses=("10.32.0.1/12",)),
        Vxlan(mtu=1450),
        fdb=frozenset({Fdb(FLOOD_MAC, "198.19.0.2")}),
        chains=weave_chains("10.32.0.0/12"),
    )
    ops = plan(desired, Observed(iptables={})).ops
    kinds = [type(op).__name__ for op in ops]
    assert kinds == [
        "CreateBridge",
        "SetLink",
        "AddAddress",
        "CreateVxlan",
        "SetLink",
        "AddFdb",
        "RestoreTable",
        "RestoreTable",
    ]


def test_a_stale_bridge_is_repaired_in_place() -> None:
    stale = Link(BRIDGE, "bridge", mtu=9000, mac="aa:00:00:00:00:09", up=False, addresses=("10.99.0.1/16",))
    desired = Desired(Bridge(mtu=1450, mac="02:00:00:00:00:01", addresses=("10.32.0.1/12",)), None)
    ops = plan(desired, Observed(links={BRIDGE: stale})).ops
    assert not any(isinstance(op, DeleteLink | CreateBridge) for op in ops)
    assert SetLink(BRIDGE, mtu=1450, mac="02:00:00:00:00:01", up=True, alias=ALIAS, mcast_snooping=False) in ops


def test_a_foreign_vxlan_on_our_port_is_reported_and_left_alone() -> None:
    foreign = Link("flannel.1", "vxlan", vni=1, port=VXLAN_PORT, up=True)
    desired = Desired(Bridge(mtu=1450), Vxlan(mtu=1450), fdb=frozenset({Fdb(FLOOD_MAC, "198.19.0.2")}))
    result = plan(desired, Observed(links={"flannel.1": foreign}))
    assert not any(isinstance(op, CreateVxlan) or getattr(op, "name", "") == "flannel.1" for op in result.ops)
    assert not any("Fdb" in type(op).__name__ for op in result.ops)
    assert any("flannel.1 already uses UDP port 6784" in p for p in result.problems)


def test_a_non_bridge_called_weave_is_reported_not_destroyed() -> None:
    result = plan(Desired(Bridge(), Vxlan()), Observed(links={BRIDGE: Link(BRIDGE, "dummy")}))
    assert not any(isinstance(op, DeleteLink | CreateBridge | CreateVxlan) for op in result.ops)
    assert "is a dummy, not a bridge" in result.problems[0]


def test_a_vxlan_of_ours_with_other_parameters_is_recreated() -> None:
    bridge = Link(BRIDGE, "bridge", mtu=1450, up=True, alias=ALIAS, mcast_snooping=False)
    old = Link(VXLAN, "vxlan", mtu=1450, up=True, master=BRIDGE, alias=ALIAS, vni=7, port=VXLAN_PORT, learning=True)
    ops = plan(Desired(Bridge(), Vxlan()), Observed(links={BRIDGE: bridge, VXLAN: old})).ops
    assert ops[:2] == (DeleteLink(VXLAN), CreateVxlan(VXLAN, 0x6784, VXLAN_PORT, 1450, True, BRIDGE))


def test_removal_takes_only_ours() -> None:
    observed = Observed(
        links={
            BRIDGE: Link(BRIDGE, "bridge", alias=ALIAS),
            VXLAN: Link(VXLAN, "vxlan", alias=ALIAS, port=VXLAN_PORT),
            "flannel.1": Link("flannel.1", "vxlan", port=8472),
        },
        iptables={"nat": {"POSTROUTING": (f"-j {NAT_CHAIN}", "-j KUBE-POSTROUTING"), NAT_CHAIN: ("-j RETURN",)}},
    )
    ops = plan_removal(observed).ops
    assert ops[:2] == (DeleteLink(VXLAN), DeleteLink(BRIDGE))
    after = apply_to_model(observed, ops)
    assert set(after.links) == {"flannel.1"}
    assert after.iptables == {"nat": {"POSTROUTING": ("-j KUBE-POSTROUTING",)}}


def test_restore_text_flushes_only_our_chains() -> None:
    op = RestoreTable("nat", write=weave_chains("10.32.0.0/12")[1:], add_jumps=(("POSTROUTING", f"-j {NAT_CHAIN}"),))
    text = op.text()
    assert text.splitlines()[0] == "*nat" and text.endswith("COMMIT\n")
    assert f":{NAT_CHAIN} - [0:0]" in text and "-I POSTROUTING 1 -j WEAVE-NODE-NAT" in text
    assert "KUBE" not in text and "-F" not in text


def test_parse_save() -> None:
    text = """# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -j RETURN
COMMIT
"""
    assert parse_save(text) == {
        "nat": {
            "PREROUTING": ('-m comment --comment "kubernetes service portals" -j KUBE-SERVICES',),
            "KUBE-SERVICES": ("-d 10.96.0.1/32 -j RETURN",),
        }
    }


def test_mtu_and_bridge_mac() -> None:
    assert overlay_mtu(1500) == 1450 and overlay_mtu(9000, ipv6_underlay=True) == 8930
    mac = bridge_mac(0xFFFFFFFFFFFF)
    assert mac == "fe:ff:ff:ff:ff:ff"  # unicast, locally administered
    assert int(bridge_mac(0)[:2], 16) & 0x03 == 0x02


def test_an_unlabelled_vxlan_with_our_parameters_is_adopted() -> None:
    bridge = Link(BRIDGE, "bridge", mtu=1450, up=True, alias=ALIAS, mcast_snooping=False)
    half = Link(VXLAN, "vxlan", mtu=1450, up=True, master=BRIDGE, vni=0x6784, port=VXLAN_PORT, learning=True)
    result = plan(Desired(Bridge(), Vxlan()), Observed(links={BRIDGE: bridge, VXLAN: half}))
    assert result.ops == (SetLink(VXLAN, alias=ALIAS),) and result.problems == ()


def test_a_stale_chain_of_ours_is_unhooked_wherever_it_is_referenced() -> None:
    old = f"{CHAIN_PREFIX}OLD"
    observed = Observed(
        iptables={"filter": {"FORWARD": (f"-i weave -j {old}", "-j KUBE-FORWARD"), old: ("-j ACCEPT",)}}
    )
    after = apply_to_model(observed, plan(Desired(Bridge(), None), observed).ops)
    assert after.iptables == {"filter": {"FORWARD": ("-j KUBE-FORWARD",)}}


def _host(
    *, tap_master: str = BRIDGE, tap_isolated: bool | None = True, vxlan_isolated: bool | None = True
) -> Observed:
    bridge = Link(BRIDGE, "bridge", mtu=1450, mac=bridge_mac(1), up=True, alias=ALIAS, mcast_snooping=False)
    vxlan = Link(VXLAN, "vxlan", mtu=1450, up=True, master=BRIDGE, alias=ALIAS, vni=0x6784, port=VXLAN_PORT,
                 learning=True, isolated=vxlan_isolated)  # fmt: skip
    tap = Link(TAP, "tun", mtu=1450, up=True, master=tap_master, isolated=tap_isolated if tap_master else None)
    return Observed(links={BRIDGE: bridge, VXLAN: vxlan, TAP: tap})


SLEEVE = Desired(Bridge(mtu=1450, mac=bridge_mac(1)), Vxlan(mtu=1450, isolated=True), ports=(Port(TAP, 1450),))


def test_the_sleeve_tap_is_put_on_the_bridge_isolated_and_both_overlay_ports_stay_isolated() -> None:
    fresh = plan(SLEEVE, _host(tap_master="", vxlan_isolated=False)).ops
    assert fresh == (SetLink(VXLAN, isolated=True), SetLink(TAP, master=BRIDGE, isolated=True))
    assert plan(SLEEVE, _host()).ops == ()
    after = apply_to_model(_host(tap_master="", vxlan_isolated=None), fresh)
    assert after.links[TAP].master == BRIDGE and after.links[TAP].isolated and after.links[VXLAN].isolated
    assert plan(SLEEVE, after).ops == ()


def test_a_recreated_vxlan_device_is_isolated_again() -> None:
    observed = _host()
    stale = replace(observed.links[VXLAN], vni=7)
    ops = plan(SLEEVE, replace(observed, links={**observed.links, VXLAN: stale})).ops
    assert ops[:3] == (
        DeleteLink(VXLAN),
        CreateVxlan(VXLAN, 0x6784, VXLAN_PORT, 1450, True, BRIDGE),
        SetLink(VXLAN, up=True, alias=ALIAS, isolated=True),
    )


def test_without_the_sleeve_the_vxlan_port_is_not_isolated() -> None:
    ops = plan(Desired(Bridge(mtu=1450, mac=bridge_mac(1)), Vxlan(mtu=1450)), _host()).ops
    assert ops == (SetLink(VXLAN, isolated=False),)


def test_a_missing_tap_is_a_problem_not_an_error() -> None:
    observed = _host()
    links = {k: v for k, v in observed.links.items() if k != TAP}
    result = plan(SLEEVE, replace(observed, links=links))
    assert result.ops == () and result.problems == (f"link {TAP} does not exist: it cannot be put on bridge weave",)


def test_learned_macs_are_flushed_once_per_generation() -> None:
    observed = _host()
    ops = plan(replace(SLEEVE, flush=3), observed).ops
    assert ops == (FlushLearned(BRIDGE, (VXLAN, TAP), 3),)
    after = apply_to_model(observed, ops)
    assert after.flushed == 3 and plan(replace(SLEEVE, flush=3), after).ops == ()  # applied twice: nothing
    # Without fastdp only the TAP is an overlay port; with a foreign `weave` link nothing is flushed.
    no_vxlan = replace(SLEEVE, vxlan=None, flush=1)
    assert FlushLearned(BRIDGE, (TAP,), 1) in plan(no_vxlan, observed).ops
    foreign = replace(observed, links={**observed.links, BRIDGE: Link(BRIDGE, "dummy")})
    assert not any(isinstance(op, FlushLearned) for op in plan(replace(SLEEVE, flush=1), foreign).ops)
