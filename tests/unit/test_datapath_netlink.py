"""netlink.py's translation between pyroute2 messages and the model, against a fake IPRoute (no kernel): bridge
port isolation read and set, and the flush of learned MACs."""

from __future__ import annotations

from typing import Any

from weave_node.datapath import netlink
from weave_node.datapath.model import FLOOD_MAC, Fdb
from weave_node.datapath.ops import AddFdb, FlushLearned, SetLink

BRIDGE, VXLAN, TAP, POD = 1, 2, 3, 4
NAMES = {BRIDGE: "weave", VXLAN: "vxlan-6784", TAP: "weave-sleeve", POD: "vethwe1"}


def _link(index: int, kind: str, master: int = 0, isolated: int | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"IFLA_INFO_KIND": kind}
    if master:
        info["IFLA_INFO_SLAVE_KIND"] = "bridge"
        info["IFLA_INFO_SLAVE_DATA"] = {"IFLA_BRPORT_ISOLATED": isolated}
    msg = {"index": index, "flags": 1, "IFLA_IFNAME": NAMES[index], "IFLA_MTU": 1450, "IFLA_LINKINFO": info}
    if master:
        msg["IFLA_MASTER"] = master
    return msg


class FakeIpr:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fdb_dump: list[dict[str, Any]] = []

    def get_links(self) -> list[dict[str, Any]]:
        return [_link(BRIDGE, "bridge"), _link(VXLAN, "vxlan", BRIDGE, 1), _link(TAP, "tun", BRIDGE, 0),
                _link(POD, "veth", BRIDGE, 0)]  # fmt: skip

    def get_addr(self, **_kw: Any) -> list[dict[str, Any]]:
        return []

    def link_lookup(self, ifname: str) -> list[int]:
        return [i for i, n in NAMES.items() if n == ifname]

    def link(self, command: str, **kw: Any) -> None:
        self.calls.append(("link", command, kw))

    def brport(self, command: str, **kw: Any) -> None:
        self.calls.append(("brport", command, kw))

    def neigh(self, command: str, **kw: Any) -> None:
        self.calls.append(("neigh", command, kw))

    def fdb(self, command: str, **kw: Any) -> list[dict[str, Any]]:
        self.calls.append(("fdb", command, kw))
        return self.fdb_dump if command == "dump" else []


def test_bridge_port_isolation_is_observed() -> None:
    links = netlink._links(FakeIpr())
    assert links["vxlan-6784"].isolated is True and links["weave-sleeve"].isolated is False
    assert links["weave"].isolated is None  # not a port
    assert links["weave-sleeve"].master == "weave"


def test_a_port_is_enslaved_before_it_is_isolated() -> None:
    ipr = FakeIpr()
    netlink._apply_one(ipr, None, SetLink("weave-sleeve", mtu=1450, master="weave", up=True, isolated=True))
    assert ipr.calls == [
        ("link", "set", {"index": TAP, "mtu": 1450, "master": BRIDGE, "state": "up"}),
        ("brport", "set", {"index": TAP, "isolated": 1}),
    ]


def test_the_flush_forgets_only_macs_learned_behind_the_overlay_ports() -> None:
    ipr = FakeIpr()
    learned = {"NDA_MASTER": BRIDGE, "state": 0x02}  # NUD_REACHABLE
    ipr.fdb_dump = [
        {"ifindex": VXLAN, "NDA_LLADDR": "aa:00:00:00:00:01", **learned},
        {"ifindex": TAP, "NDA_LLADDR": "aa:00:00:00:00:02", **learned},
        {"ifindex": POD, "NDA_LLADDR": "aa:00:00:00:00:03", **learned},  # a local pod: stays
        {"ifindex": VXLAN, "NDA_LLADDR": "aa:00:00:00:00:04", "NDA_MASTER": BRIDGE, "state": netlink.NUD_PERMANENT},
        {"ifindex": VXLAN, "NDA_LLADDR": "aa:00:00:00:00:05", "state": 0x02},  # the VXLAN device's own FDB
    ]
    netlink._apply_one(ipr, None, FlushLearned("weave", ("vxlan-6784", "weave-sleeve"), 1))
    deleted = [kw["lladdr"] for kind, command, kw in ipr.calls if (kind, command) == ("neigh", "del")]
    assert deleted == ["aa:00:00:00:00:01", "aa:00:00:00:00:02"]


def test_flood_entries_are_appended_and_unicast_ones_replaced() -> None:
    ipr = FakeIpr()
    netlink._apply_one(ipr, None, AddFdb("vxlan-6784", Fdb(FLOOD_MAC, "198.19.0.2")))
    netlink._apply_one(ipr, None, AddFdb("vxlan-6784", Fdb("aa:00:00:00:00:01", "198.19.0.2")))
    assert [(k, c) for k, c, _ in ipr.calls] == [("fdb", "append"), ("neigh", "replace")]
