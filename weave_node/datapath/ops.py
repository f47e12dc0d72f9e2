"""The operations a plan is made of: each one kernel change, a frozen value (pure). plan.py chooses them,
netlink.py performs them, plan.apply_to_model simulates them for tests."""

from __future__ import annotations

from dataclasses import dataclass

from weave_node.datapath.model import Chain, Fdb, Neigh, Route, Rule


@dataclass(frozen=True)
class SetSysctl:
    key: str
    value: str


@dataclass(frozen=True)
class CreateBridge:
    name: str
    mtu: int
    mac: str
    mcast_snooping: bool


@dataclass(frozen=True)
class CreateVxlan:
    name: str
    vni: int
    port: int
    mtu: int
    learning: bool
    master: str
    local: str = ""  # an IPv6 source: the device's socket is IPv6's (datapath.model.Vxlan)


@dataclass(frozen=True)
class SetLink:
    """Change only the fields that are not None."""

    name: str
    mtu: int | None = None
    mac: str | None = None
    up: bool | None = None
    master: str | None = None
    alias: str | None = None
    mcast_snooping: bool | None = None
    isolated: bool | None = None  # as a bridge port (after any change of master)


@dataclass(frozen=True)
class DeleteLink:
    name: str


@dataclass(frozen=True)
class AddAddress:
    link: str
    cidr: str


@dataclass(frozen=True)
class DelAddress:
    link: str
    cidr: str


@dataclass(frozen=True)
class AddFdb:
    link: str
    entry: Fdb


@dataclass(frozen=True)
class DelFdb:
    link: str
    entry: Fdb


@dataclass(frozen=True)
class AddNeigh:
    link: str
    entry: Neigh


@dataclass(frozen=True)
class DelNeigh:
    link: str
    entry: Neigh


@dataclass(frozen=True)
class FlushLearned:
    """Forget the MACs `bridge` learned behind `ports` (not the permanent entries): they are learned again on
    whichever port now leads to them. `generation` is the Desired.flush this fulfils."""

    bridge: str
    ports: tuple[str, ...]
    generation: int


@dataclass(frozen=True)
class Announce:
    """A gratuitous ARP for the bridge's address (an unsolicited neighbour advertisement for its IPv6 one), sent
    by the bridge after a FlushLearned (a peer entered or left the sleeve): pods that cached the host under
    another MAC (the sleeve's alias of the bridge's MAC, or the real one) update their entry to the MAC of the
    path the frame took (sleeve/forwarder.py)."""

    bridge: str
    ip: str
    mac: str


@dataclass(frozen=True)
class RestoreTable:
    """One `iptables-restore --noflush` transaction on one table: (re)write our chains, add the missing jumps
    at the top of the built-in chains, remove duplicate jumps and chains of ours that are no longer wanted."""

    table: str
    write: tuple[Chain, ...] = ()
    add_jumps: tuple[tuple[str, str], ...] = ()  # (built-in chain, rule)
    del_jumps: tuple[tuple[str, str], ...] = ()
    drop_chains: tuple[str, ...] = ()
    family: str = "ip"  # "ip": iptables-restore; "eth": ebtables-restore (the same language, other chain headers)

    def text(self) -> str:
        lines = [f"*{self.table}"]
        header = "RETURN" if self.family == "eth" else "- [0:0]"  # declaring a chain with --noflush empties it
        lines += [f":{c.name} {header}" for c in self.write]
        lines += [f":{name} {header}" for name in self.drop_chains]
        lines += [f"-D {hook} {rule}" for hook, rule in self.del_jumps]
        for chain in self.write:
            lines += [f"-A {chain.name} {rule}" for rule in chain.rules]
        lines += [f"-I {hook} 1 {rule}" for hook, rule in self.add_jumps]
        lines += [f"-X {name}" for name in self.drop_chains]
        return "\n".join([*lines, "COMMIT", ""])


@dataclass(frozen=True)
class ReplaceRoute:
    route: Route


@dataclass(frozen=True)
class DelRoute:
    route: Route


@dataclass(frozen=True)
class AddRule:
    rule: Rule


@dataclass(frozen=True)
class DelRule:
    rule: Rule


Op = (
    SetSysctl
    | CreateBridge
    | CreateVxlan
    | SetLink
    | DeleteLink
    | AddAddress
    | DelAddress
    | AddFdb
    | DelFdb
    | AddNeigh
    | DelNeigh
    | FlushLearned
    | Announce
    | RestoreTable
    | ReplaceRoute
    | DelRoute
    | AddRule
    | DelRule
)
