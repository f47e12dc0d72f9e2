"""plan(desired, observed) -> the ordered, minimal operations that make the kernel match (pure).

Applying a plan and observing again gives an empty plan. Order: sysctls, bridge, its addresses and sysctls, the
VXLAN device, FDB entries, neighbour entries, the other ports on the bridge (the sleeve's TAP), the flush of
learned MACs when its generation moved on, routes and rules (routes.py), iptables and ebtables (one transaction
per table). What is not ours is never in a
plan: a clash (a non-bridge link called `weave`, someone else's VXLAN device on our port) becomes a `problem`,
reported in `status`, and the parts that depend on it are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from weave_node.datapath.model import ALIAS, CHAIN_PREFIX, Chain, Desired, Fdb, Link, Neigh, Observed, Vxlan
from weave_node.datapath.ops import (
    AddAddress,
    AddFdb,
    AddNeigh,
    AddRule,
    Announce,
    CreateBridge,
    CreateVxlan,
    DelAddress,
    DeleteLink,
    DelFdb,
    DelNeigh,
    DelRoute,
    DelRule,
    FlushLearned,
    Op,
    ReplaceRoute,
    RestoreTable,
    SetLink,
    SetSysctl,
)
from weave_node.datapath.routes import apply_routes, route_ops, rule_ops


@dataclass(frozen=True)
class Plan:
    ops: tuple[Op, ...] = ()
    problems: tuple[str, ...] = ()  # what we will not fix because it is not ours; shown in status

    def summary(self) -> str:
        """For the log: "2 AddFdb, 1 SetLink"."""
        kinds: dict[str, int] = {}
        for op in self.ops:
            kinds[type(op).__name__] = kinds.get(type(op).__name__, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))


@dataclass
class _Builder:
    ops: list[Op] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plan(desired: Desired, observed: Observed) -> Plan:
    b = _Builder()
    _sysctls(b, desired, observed)
    bridge_ok = _bridge(b, desired, observed)
    vxlan_ok = bridge_ok and _vxlan(b, desired, observed)
    if vxlan_ok and desired.vxlan is not None:
        recreated = any(isinstance(op, CreateVxlan) for op in b.ops)
        current = frozenset() if recreated else observed.fdb
        _entries(b, desired.vxlan.name, want=desired.fdb, have=current, add=AddFdb, delete=DelFdb)
    if bridge_ok:
        created = any(isinstance(op, CreateBridge) for op in b.ops)
        have = frozenset() if created else observed.neigh
        _entries(b, desired.bridge.name, want=desired.neigh, have=have, add=AddNeigh, delete=DelNeigh)
        _ports(b, desired, observed)
        tunnel = (desired.vxlan.name,) if vxlan_ok and desired.vxlan is not None else ()
        ports = tunnel + tuple(p.name for p in desired.ports)
        if desired.flush != observed.flushed and ports:
            b.ops.append(FlushLearned(desired.bridge.name, ports, desired.flush))
    ops, problems = route_ops(desired.routes, observed.routes, devices=set(observed.links) | {desired.bridge.name})
    b.ops += ops
    b.problems += problems
    b.ops += rule_ops(desired.rules, observed.rules)
    _iptables(b, [c for c in desired.chains if c.family == "ip"], observed.iptables, "ip")
    _iptables(b, [c for c in desired.chains if c.family == "eth"], observed.ebtables, "eth")
    _iptables(b, [c for c in desired.chains if c.family == "ip6"], observed.ip6tables, "ip6")
    fastdp = desired.vxlan is not None  # (without it the announcement would cross the sleeve under the real MAC)
    if fastdp and desired.bridge.addresses and desired.bridge.mac and any(isinstance(op, FlushLearned) for op in b.ops):
        firsts = {":" in c: c for c in reversed(desired.bridge.addresses)}  # the first address of each family
        for cidr in sorted(firsts.values(), key=lambda c: ":" in c):  # last: once the paths are in place
            b.ops.append(Announce(desired.bridge.name, cidr.split("/")[0], desired.bridge.mac))
    return Plan(tuple(b.ops), tuple(b.problems))


def _sysctls(b: _Builder, desired: Desired, observed: Observed) -> None:
    for key, value in desired.sysctls:
        current = observed.sysctls.get(key)
        if current is None:
            b.problems.append(f"sysctl {key.replace('/', '.')} does not exist on this kernel")
        elif current != value:
            b.ops.append(SetSysctl(key, value))


def _bridge(b: _Builder, desired: Desired, observed: Observed) -> bool:
    want = desired.bridge
    link = observed.links.get(want.name)
    if link is None:
        b.ops.append(CreateBridge(want.name, want.mtu, want.mac, want.mcast_snooping))
        b.ops.append(SetLink(want.name, up=True, alias=ALIAS))
        current: tuple[str, ...] = ()
    elif link.kind != "bridge":
        b.problems.append(
            f"a link named {want.name!r} exists but is a {link.kind or 'plain link'}, not a bridge: "
            f"it is not ours, so it stays; remove it (ip link del {want.name}) and the router will create the bridge"
        )
        return False
    else:
        change = SetLink(
            want.name,
            mtu=want.mtu if link.mtu != want.mtu else None,
            mac=want.mac if want.mac and link.mac != want.mac else None,
            up=True if not link.up else None,
            alias=ALIAS if link.alias != ALIAS else None,
            mcast_snooping=want.mcast_snooping if link.mcast_snooping != want.mcast_snooping else None,
        )
        if change != SetLink(want.name):
            b.ops.append(change)
        current = link.addresses
    for key, value in want.sysctls():  # absent: a new bridge (or not asked for), where proxy ARP is off
        if observed.sysctls.get(key, "0" if key.endswith("/proxy_arp") else None) != value:
            b.ops.append(SetSysctl(key, value))  # (before the addresses: IPv6 may be off until then)
    if want.addresses is not None:
        managed = [c for c in current if ":" not in c or want.managed6]
        b.ops += [DelAddress(want.name, c) for c in managed if c not in want.addresses]
        b.ops += [AddAddress(want.name, c) for c in want.addresses if c not in current]
    return True


def _vxlan(b: _Builder, desired: Desired, observed: Observed) -> bool:
    want = desired.vxlan
    if want is None:
        ours = [link for link in observed.links.values() if link.kind == "vxlan" and link.alias == ALIAS]
        b.ops += [DeleteLink(link.name) for link in ours]
        return False
    link = observed.links.get(want.name)
    if link is not None and link.kind == "vxlan" and link.alias != ALIAS and _same_vxlan(link, want):
        # Ours, from a start that died between creating it and labelling it: adopt it.
        b.ops.append(SetLink(want.name, alias=ALIAS))
        link = replace(link, alias=ALIAS)
    if link is not None and (link.kind != "vxlan" or link.alias != ALIAS):
        b.problems.append(
            f"a {link.kind or 'link'} named {want.name!r} exists that weave-node did not create (no alias "
            f"{ALIAS!r}); it stays, and the fast datapath is off until it is removed"
        )
        return False
    clash = sorted(
        other.name
        for other in observed.links.values()
        if other.kind == "vxlan" and other.port == want.port and other.name != want.name and other.alias != ALIAS
    )
    if clash:
        b.problems.append(
            f"VXLAN device {', '.join(clash)} already uses UDP port {want.port} and is not ours: it stays, "
            "and the fast datapath is off until it is removed (or weave-node uses another port)"
        )
        return False
    if link is not None and not _same_vxlan(link, want):
        b.ops.append(DeleteLink(want.name))
        link = None
    if link is None:
        b.ops.append(
            CreateVxlan(want.name, want.vni, want.port, want.mtu, want.learning, desired.bridge.name, want.local)
        )
        b.ops.append(SetLink(want.name, up=True, alias=ALIAS, isolated=True if want.isolated else None))
        return True
    change = SetLink(
        want.name,
        mtu=want.mtu if link.mtu != want.mtu else None,
        master=desired.bridge.name if link.master != desired.bridge.name else None,
        up=True if not link.up else None,
        isolated=want.isolated if bool(link.isolated) != want.isolated else None,
    )
    if change != SetLink(want.name):
        b.ops.append(change)
    return True


def _same_vxlan(link: Link, want: Vxlan) -> bool:
    same = link.vni == want.vni and link.port == want.port and link.learning == want.learning
    return same and link.local == want.local  # (another underlay family or source: a new device)


def _ports(b: _Builder, desired: Desired, observed: Observed) -> None:
    """Links made elsewhere (the sleeve's TAP) on the bridge: MTU, master, up, isolation."""
    bridge = desired.bridge.name
    for want in desired.ports:
        link = observed.links.get(want.name)
        if link is None:
            b.problems.append(f"link {want.name} does not exist: it cannot be put on bridge {bridge}")
            continue
        change = SetLink(
            want.name,
            mtu=want.mtu if link.mtu != want.mtu else None,
            master=bridge if link.master != bridge else None,
            up=True if not link.up else None,
            isolated=want.isolated if bool(link.isolated) != want.isolated else None,
        )
        if change != SetLink(want.name):
            b.ops.append(change)


def _entries(
    b: _Builder,
    link: str,
    *,
    want: frozenset[Fdb] | frozenset[Neigh],
    have: frozenset[Fdb] | frozenset[Neigh],
    add: type[AddFdb] | type[AddNeigh],
    delete: type[DelFdb] | type[DelNeigh],
) -> None:
    b.ops += [delete(link, e) for e in sorted(have - want)]  # type: ignore[arg-type]
    b.ops += [add(link, e) for e in sorted(want - have)]  # type: ignore[arg-type]


def _iptables(
    b: _Builder, chains: Iterable[Chain], observed: dict[str, dict[str, tuple[str, ...]]] | None, family: str
) -> None:
    chains = tuple(chains)
    if observed is None:
        if chains and family in ("ip", "ip6"):
            tool = "iptables" if family == "ip" else "ip6tables"
            b.problems.append(f"{tool} is not available: no masquerade or FORWARD rules (install iptables)")
        elif chains:
            b.problems.append("ebtables is not available: direct mode cannot keep ARP answers apart (install it)")
        return
    tables = sorted({c.table for c in chains} | set(observed))
    for table in tables:
        have = observed.get(table, {})
        want = [c for c in chains if c.table == table]
        names = {c.name for c in want}
        write = tuple(c for c in want if have.get(c.name) != c.rules)
        add_jumps: list[tuple[str, str]] = []
        del_jumps: list[tuple[str, str]] = []
        for chain in want:
            count = have.get(chain.hook, ()).count(chain.jump)
            if count == 0:
                add_jumps.append((chain.hook, chain.jump))
            del_jumps += [(chain.hook, chain.jump)] * max(0, count - 1)
        drop = tuple(sorted(n for n in have if n.startswith(CHAIN_PREFIX) and n not in names))
        for name in drop:
            for hook, rules in sorted(have.items()):
                if not hook.startswith(CHAIN_PREFIX):
                    del_jumps += [(hook, r) for r in rules if _targets(r, name)]
        if write or add_jumps or del_jumps or drop:
            b.ops.append(RestoreTable(table, write, tuple(add_jumps), tuple(del_jumps), drop, family))


def _targets(rule: str, chain: str) -> bool:
    """Does this rule jump to (or go to) `chain`?"""
    words = rule.split()
    return any(w in ("-j", "-g") and i + 1 < len(words) and words[i + 1] == chain for i, w in enumerate(words))


def plan_removal(observed: Observed) -> Plan:
    """Everything weave-node put into the kernel, removed: our routes and rules, the VXLAN device, the bridge, our
    chains."""
    b = _Builder()
    b.ops += route_ops((), observed.routes, devices=set())[0]
    b.ops += rule_ops((), observed.rules)
    for link in sorted(observed.links.values(), key=lambda lk: lk.kind != "vxlan"):
        if link.alias == ALIAS and link.kind in ("vxlan", "bridge", "wireguard"):
            b.ops.append(DeleteLink(link.name))
    _iptables(b, (), observed.iptables, "ip")
    _iptables(b, (), observed.ebtables, "eth")
    _iptables(b, (), observed.ip6tables, "ip6")
    return Plan(tuple(b.ops), tuple(b.problems))


def apply_to_model(observed: Observed, ops: Iterable[Op]) -> Observed:
    """What the kernel would look like after `ops` (for tests of plan(); the shell's apply is netlink.py)."""
    links = dict(observed.links)
    fdb, neigh = set(observed.fdb), set(observed.neigh)
    sysctls = dict(observed.sysctls)
    iptables = {t: dict(c) for t, c in observed.iptables.items()} if observed.iptables is not None else None
    ebtables = {t: dict(c) for t, c in observed.ebtables.items()} if observed.ebtables is not None else None
    ip6tables = {t: dict(c) for t, c in observed.ip6tables.items()} if observed.ip6tables is not None else None
    flushed = observed.flushed
    routes, rules = set(observed.routes), set(observed.rules)
    ops = tuple(ops)
    apply_routes(routes, rules, ops)
    for op in ops:
        if isinstance(op, SetSysctl):
            sysctls[op.key] = op.value
        elif isinstance(op, AddFdb | DelFdb):
            fdb.add(op.entry) if isinstance(op, AddFdb) else fdb.discard(op.entry)
        elif isinstance(op, AddNeigh | DelNeigh):
            neigh.add(op.entry) if isinstance(op, AddNeigh) else neigh.discard(op.entry)
        elif isinstance(op, RestoreTable):
            tables = {"ip": iptables, "ip6": ip6tables}.get(op.family, ebtables)
            assert tables is not None  # noqa: S101 - a plan never restores without the tool
            _restore_model(tables.setdefault(op.table, {}), op)
        elif isinstance(op, ReplaceRoute | DelRoute | AddRule | DelRule | Announce):
            continue  # (an announcement changes nothing the model holds)
        elif isinstance(op, FlushLearned):
            flushed = op.generation
        else:
            gone = _link_model(links, op)
            if gone in ("vxlan", "new-vxlan"):
                fdb.clear()
            if gone == "bridge":
                neigh.clear()
    return Observed(
        links,
        frozenset(fdb),
        frozenset(neigh),
        sysctls,
        iptables,
        flushed,
        frozenset(routes),
        frozenset(rules),
        ebtables,
        ip6tables,
    )


def _link_model(links: dict[str, Link], op: Op) -> str:
    """Apply a link operation to the model; return the kind of a deleted link ("new-vxlan" on creation)."""
    if isinstance(op, CreateBridge):
        links[op.name] = Link(op.name, "bridge", mtu=op.mtu, mac=op.mac, mcast_snooping=op.mcast_snooping)
    elif isinstance(op, CreateVxlan):
        links[op.name] = Link(
            op.name, "vxlan", mtu=op.mtu, master=op.master, vni=op.vni, port=op.port, learning=op.learning,
            local=op.local,
        )  # fmt: skip
        return "new-vxlan"
    elif isinstance(op, SetLink):
        old = links[op.name]
        links[op.name] = replace(
            old,
            mtu=old.mtu if op.mtu is None else op.mtu,
            mac=old.mac if op.mac is None else op.mac,
            up=old.up if op.up is None else op.up,
            master=old.master if op.master is None else op.master,
            alias=old.alias if op.alias is None else op.alias,
            mcast_snooping=old.mcast_snooping if op.mcast_snooping is None else op.mcast_snooping,
            isolated=old.isolated if op.isolated is None else op.isolated,
        )
    elif isinstance(op, DeleteLink):
        return links.pop(op.name).kind
    elif isinstance(op, AddAddress | DelAddress):
        old = links[op.link]
        addrs = set(old.addresses)
        addrs.add(op.cidr) if isinstance(op, AddAddress) else addrs.discard(op.cidr)
        links[op.link] = replace(old, addresses=tuple(sorted(addrs)))
    return ""


def _restore_model(table: dict[str, tuple[str, ...]], op: RestoreTable) -> None:
    for hook, rule in op.del_jumps:
        rules = list(table.get(hook, ()))
        rules.remove(rule)
        table[hook] = tuple(rules)
    for chain in op.write:
        table[chain.name] = chain.rules
    for hook, rule in op.add_jumps:
        table[hook] = (rule, *table.get(hook, ()))
    for name in op.drop_chains:
        table.pop(name, None)
