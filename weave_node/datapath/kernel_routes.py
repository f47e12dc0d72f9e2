"""The kernel side of our routes, policy rules and ebtables chains (direct mode): read them for observe(), perform
their operations for apply(). netlink.py calls these with its open IPRoute socket."""

from __future__ import annotations

import ipaddress
import shutil
import socket
from collections.abc import Iterable
from typing import Any

from weave_node.datapath.iptables import parse_save
from weave_node.datapath.model import RT_PROTO, RULE_PRIORITY, Route, Rule
from weave_node.datapath.netns import index, run
from weave_node.datapath.ops import AddRule, DelRoute, DelRule, ReplaceRoute

RTN_UNICAST, RTN_UNREACHABLE = 1, 7
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
EB_TABLES = ("filter",)


def routes(ipr: Any, names: dict[int, str]) -> frozenset[Route]:
    """Ours in every table: protocol RT_PROTO."""
    found: set[Route] = set()
    for msg in ipr.route("dump", family=socket.AF_INET):  # every table
        if msg["proto"] != RT_PROTO:
            continue
        table = msg.get("RTA_TABLE") or msg["table"]
        dst = f"{msg.get('RTA_DST') or '0.0.0.0'}/{msg['dst_len']}"  # noqa: S104 - a default route's destination
        if msg["type"] == RTN_UNREACHABLE:
            found.add(Route(dst, table=table, kind="unreachable"))
            continue
        oif = msg.get("RTA_OIF")
        dev = names.get(oif, "") if oif else ""
        found.add(Route(dst, via=msg.get("RTA_GATEWAY") or "", dev=dev, table=table, src=msg.get("RTA_PREFSRC") or ""))
    return frozenset(found)


def rules(ipr: Any) -> frozenset[Rule]:
    found: set[Rule] = set()
    for msg in ipr.get_rules(family=socket.AF_INET):
        if msg.get("FRA_PRIORITY") == RULE_PRIORITY:
            found.add(Rule(RULE_PRIORITY, msg.get("FRA_FWMARK") or 0, msg.get("FRA_TABLE") or msg["table"]))
    return frozenset(found)


def ebtables_available() -> bool:
    return shutil.which("ebtables-save") is not None and shutil.which("ebtables-restore") is not None


def ebtables_save(netns: str | None) -> dict[str, dict[str, tuple[str, ...]]] | None:
    return save_tables(netns, "ebtables-save", EB_TABLES) if ebtables_available() else None


def save_tables(netns: str | None, tool: str, names: Iterable[str]) -> dict[str, dict[str, tuple[str, ...]]]:
    """table -> chain -> rules, from `iptables-save` or `ebtables-save` (the same format)."""
    tables: dict[str, dict[str, tuple[str, ...]]] = {}
    for table in names:
        tables.update(parse_save(run(netns, [tool, "-t", table])))
        tables.setdefault(table, {})
    return tables


def apply(ipr: Any, op: ReplaceRoute | DelRoute | AddRule | DelRule) -> None:
    if isinstance(op, AddRule | DelRule):
        _apply_rule(ipr, op)
    else:
        _apply_route(ipr, op)


def _apply_route(ipr: Any, op: ReplaceRoute | DelRoute) -> None:
    r = op.route
    net = ipaddress.ip_network(r.dst)
    kw: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "table": r.table}
    kw["proto"] = RT_PROTO
    if r.kind == "unreachable":
        kw["type"] = RTN_UNREACHABLE
    else:
        kw["type"] = RTN_UNICAST
        if r.dev:
            kw["oif"] = index(ipr, r.dev)
        if r.via:
            kw["gateway"] = r.via
        if r.src:
            kw["prefsrc"] = r.src
        kw["scope"] = RT_SCOPE_UNIVERSE if r.via else RT_SCOPE_LINK
    if isinstance(op, DelRoute):  # any scope (as `ip route del`): the kernel matches a given scope exactly
        keep = ("dst", "dst_len", "table", "proto", "type")
        ipr.route("del", scope=RT_SCOPE_NOWHERE, **{k: v for k, v in kw.items() if k in keep})
    else:
        ipr.route("replace", **kw)


def _apply_rule(ipr: Any, op: AddRule | DelRule) -> None:
    r = op.rule
    command = "add" if isinstance(op, AddRule) else "del"
    ipr.rule(command, family=socket.AF_INET, priority=r.priority, fwmark=r.mark, fwmask=0xFFFFFFFF, table=r.table)
