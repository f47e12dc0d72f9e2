"""The kernel shell of the datapath: observe() reads what plan() needs, apply() performs a plan's operations in
order (netns.py opens the sockets, pods.py plumbs pods). Every function takes `netns` (a name under /run/netns,
or None for our own namespace), so tests drive hosts that are namespaces. iptables goes through iptables-save /
iptables-restore --noflush (one transaction per table) and sysctls through /proc/sys. pyroute2's sync API runs
its own event loop: call these from a worker thread, never from the router's loop.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from weave_node.datapath import announce, kernel_routes
from weave_node.datapath.iptables import TABLES
from weave_node.datapath.model import BRIDGE, FLOOD_MAC, VXLAN, Fdb, Link, Neigh, Observed
from weave_node.datapath.netns import DatapathError as DatapathError  # noqa: PLC0414 - callers catch it here
from weave_node.datapath.netns import index, ipr_in, run
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

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
NTF_MASTER = 0x04
IFA_F_NODAD = 0x02
PROC_SYS = Path("/proc/sys")


# --- observe -------------------------------------------------------------------------------------------


def observe(
    netns: str | None = None,
    *,
    sysctls: Iterable[str] = (),
    iptables: bool = True,
    ip6tables: bool = False,
    bridge: str = BRIDGE,
    vxlan: str = VXLAN,
) -> Observed:
    with ipr_in(netns) as ipr:
        links = _links(ipr)
        fdb: set[Fdb] = set()
        neigh: set[Neigh] = set()
        if vxlan in links and links[vxlan].kind == "vxlan":
            for msg in ipr.fdb("dump", ifindex=links[vxlan].index):
                dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
                if dst and mac and msg["ifindex"] == links[vxlan].index and msg["state"] & NUD_PERMANENT:
                    fdb.add(Fdb(mac, dst))
        if bridge in links and links[bridge].kind == "bridge":
            for family in (socket.AF_INET, socket.AF_INET6):  # (an IPv6 range alone: NDP entries)
                for msg in ipr.neigh("dump", ifindex=links[bridge].index, family=family):
                    dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
                    if dst and mac and msg["state"] & NUD_PERMANENT:
                        neigh.add(Neigh(dst, mac))
        names = {link.index: name for name, link in links.items()}
        routes, rules = kernel_routes.routes(ipr, names), kernel_routes.rules(ipr)
    return Observed(
        links=links,
        fdb=frozenset(fdb),
        neigh=frozenset(neigh),
        sysctls=_read_sysctls(netns, sysctls),
        iptables=_iptables_save(netns) if iptables else None,
        routes=routes,
        rules=rules,
        ebtables=kernel_routes.ebtables_save(netns) if iptables else None,
        ip6tables=_ip6tables_save(netns) if ip6tables else None,
    )


def _links(ipr: Any) -> dict[str, Link]:
    raw = list(ipr.get_links())
    names = {msg["index"]: msg.get("IFLA_IFNAME") for msg in raw}
    addrs: dict[int, list[str]] = {}
    for msg in ipr.get_addr():
        if msg["family"] == socket.AF_INET6 and msg["scope"] != 0:
            continue  # link-local (and host) addresses are the kernel's, never ours
        cidr = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        addrs.setdefault(msg["index"], []).append(str(cidr))
    links: dict[str, Link] = {}
    for msg in raw:
        name = msg.get("IFLA_IFNAME")
        info = msg.get("IFLA_LINKINFO")
        kind = (info.get("IFLA_INFO_KIND") if info else None) or ""
        data = info.get("IFLA_INFO_DATA") if info else None
        vni = port = learning = snooping = isolated = None
        local = ""
        if kind == "vxlan" and data is not None:
            vni, port = data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_PORT")
            learning = bool(data.get("IFLA_VXLAN_LEARNING"))
            local = str(data.get("IFLA_VXLAN_LOCAL6") or data.get("IFLA_VXLAN_LOCAL") or "")
        if kind == "bridge" and data is not None:
            snooping = bool(data.get("IFLA_BR_MCAST_SNOOPING"))
        master = msg.get("IFLA_MASTER")
        port_data = info.get("IFLA_INFO_SLAVE_DATA") if info and master else None
        if port_data is not None and info.get("IFLA_INFO_SLAVE_KIND") == "bridge":
            isolated = bool(port_data.get("IFLA_BRPORT_ISOLATED"))
        links[name] = Link(
            name=name,
            kind=kind,
            index=msg["index"],
            mtu=msg.get("IFLA_MTU") or 0,
            mac=msg.get("IFLA_ADDRESS") or "",
            up=bool(msg["flags"] & 1),
            master=names.get(master, "") if master else "",
            alias=msg.get("IFLA_IFALIAS") or "",
            addresses=tuple(sorted(addrs.get(msg["index"], []))),
            vni=vni,
            port=port,
            learning=learning,
            mcast_snooping=snooping,
            isolated=isolated,
            local=local,
        )
    return links


def _read_sysctls(netns: str | None, keys: Iterable[str]) -> dict[str, str]:
    keys = list(keys)
    if not keys:
        return {}
    if netns is None:
        values = {}
        for key in keys:
            with contextlib.suppress(OSError):
                values[key] = (PROC_SYS / key).read_text().strip()
        return values
    script = "".join(f'[ -e /proc/sys/{k} ] && echo "{k}=$(cat /proc/sys/{k})"; ' for k in keys) + "true"
    out = run(netns, ["sh", "-c", script])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def iptables_available() -> bool:
    return shutil.which("iptables-save") is not None and shutil.which("iptables-restore") is not None


def ip6tables_available() -> bool:
    return shutil.which("ip6tables-save") is not None and shutil.which("ip6tables-restore") is not None


def _ip6tables_save(netns: str | None) -> dict[str, dict[str, tuple[str, ...]]] | None:
    """None when the tools are missing or cannot work (a kernel booted with ipv6.disable=1 and legacy
    ip6tables): a problem of IPv6's (plan reports it when chains are wanted), never one of the whole datapath."""
    if not ip6tables_available():
        return None
    try:
        return kernel_routes.save_tables(netns, "ip6tables-save", TABLES)
    except DatapathError:
        return None


def _iptables_save(netns: str | None) -> dict[str, dict[str, tuple[str, ...]]] | None:
    return kernel_routes.save_tables(netns, "iptables-save", TABLES) if iptables_available() else None


# --- apply ---------------------------------------------------------------------------------------------


def apply(ops: Iterable[Op], netns: str | None = None) -> int:
    """Perform the operations in order; stop at the first failure with a DatapathError. Returns the count."""
    count = 0
    with ipr_in(netns) as ipr:
        for op in ops:
            try:
                _apply_one(ipr, netns, op)
            except NetlinkError as exc:
                raise DatapathError(f"{op}: {os.strerror(exc.code) if exc.code > 0 else exc}") from exc
            count += 1
    return count


def apply_all(ops: Iterable[Op], netns: str | None = None) -> tuple[int, list[str]]:
    """Like apply(), but an operation that fails is reported and the others still run (a read-only sysctl must
    not keep the bridge from being built; ops that depend on a failed one fail too, and say so)."""
    count, errors = 0, []
    with ipr_in(netns) as ipr:
        for op in ops:
            try:
                _apply_one(ipr, netns, op)
            except NetlinkError as exc:
                errors.append(f"{op}: {os.strerror(exc.code) if exc.code > 0 else exc}")
            except DatapathError as exc:
                errors.append(str(exc))
            else:
                count += 1
    return count, errors


def _apply_one(ipr: Any, netns: str | None, op: Op) -> None:
    if isinstance(op, SetSysctl):
        _write_sysctl(netns, op.key, op.value)
    elif isinstance(op, CreateBridge | CreateVxlan):
        _create(ipr, op)
    elif isinstance(op, SetLink):
        _set_link(ipr, op)
    elif isinstance(op, DeleteLink):
        ipr.link("del", index=index(ipr, op.name))
    elif isinstance(op, AddAddress | DelAddress):
        iface = ipaddress.ip_interface(op.cidr)
        command = "add" if isinstance(op, AddAddress) else "del"
        # IPv6 without duplicate address detection: IPAM hands each address out once, and DAD would leave it
        # "tentative" (unusable) for a second or more
        nodad = {"flags": IFA_F_NODAD} if iface.version == 6 and command == "add" else {}
        ipr.addr(command, index=index(ipr, op.link), address=str(iface.ip), prefixlen=iface.network.prefixlen, **nodad)
    elif isinstance(op, AddFdb | DelFdb | AddNeigh | DelNeigh):
        _entry(ipr, op)
    elif isinstance(op, FlushLearned):
        _flush_learned(ipr, op.ports, op.bridge)
    elif isinstance(op, Announce):
        try:
            announce.bridge(netns, op.bridge, op.mac, op.ip)
        except OSError as exc:  # (e.g. no IPv6 in this kernel): the error of this operation, not of the sync
            raise DatapathError(f"announce {op.ip}: {exc}") from exc
    elif isinstance(op, RestoreTable) and op.family == "eth":
        run(netns, ["ebtables-restore", "--noflush"], stdin=op.text())
    elif isinstance(op, RestoreTable):
        tool = "ip6tables-restore" if op.family == "ip6" else "iptables-restore"
        run(netns, [tool, "--noflush", "-w", "5"], stdin=op.text())
    elif isinstance(op, ReplaceRoute | DelRoute | AddRule | DelRule):
        kernel_routes.apply(ipr, op)


def _create(ipr: Any, op: CreateBridge | CreateVxlan) -> None:
    if isinstance(op, CreateBridge):
        kw: dict[str, Any] = {"mtu": op.mtu, "br_mcast_snooping": int(op.mcast_snooping)}
        if op.mac:
            kw["address"] = op.mac
        ipr.link("add", ifname=op.name, kind="bridge", **kw)
        return
    ipr.link(
        "add",
        ifname=op.name,
        kind="vxlan",
        vxlan_id=op.vni,
        vxlan_port=op.port,
        vxlan_learning=int(op.learning),
        mtu=op.mtu,
        master=index(ipr, op.master),
        **({"vxlan_local6": op.local} if op.local else {}),
    )


def _entry(ipr: Any, op: AddFdb | DelFdb | AddNeigh | DelNeigh) -> None:
    if isinstance(op, DelFdb):
        ipr.fdb("del", ifindex=index(ipr, op.link), lladdr=op.entry.mac, dst=op.entry.dst)
    elif isinstance(op, AddNeigh):
        idx = index(ipr, op.link)
        ipr.neigh("replace", dst=op.entry.ip, lladdr=op.entry.mac, ifindex=idx, state=NUD_PERMANENT)
    elif isinstance(op, DelNeigh):
        ipr.neigh("del", dst=op.entry.ip, lladdr=op.entry.mac, ifindex=index(ipr, op.link))
    else:
        _add_fdb(ipr, op)


def _add_fdb(ipr: Any, op: AddFdb) -> None:
    if op.entry.mac == FLOOD_MAC:  # the flood list holds many VTEPs: append
        ipr.fdb("append", ifindex=index(ipr, op.link), lladdr=op.entry.mac, dst=op.entry.dst)
        return
    # replace, not append: a learned entry for this MAC must take our VTEP, not just become permanent
    ipr.neigh(
        "replace",
        family=socket.AF_BRIDGE,
        ifindex=index(ipr, op.link),
        lladdr=op.entry.mac,
        dst=op.entry.dst,
        state=NUD_PERMANENT | NUD_NOARP,
        flags=NTF_SELF,
    )


def _set_link(ipr: Any, op: SetLink) -> None:
    idx = index(ipr, op.name)
    kw: dict[str, Any] = {}
    if op.mtu is not None:
        kw["mtu"] = op.mtu
    if op.mac is not None:
        kw["address"] = op.mac
    if op.master is not None:
        kw["master"] = index(ipr, op.master) if op.master else 0
    if op.alias is not None:
        kw["IFLA_IFALIAS"] = op.alias
    if op.up is not None:
        kw["state"] = "up" if op.up else "down"
    if kw:
        ipr.link("set", index=idx, **kw)
    if op.mcast_snooping is not None:
        ipr.link("set", index=idx, kind="bridge", br_mcast_snooping=int(op.mcast_snooping))
    if op.isolated is not None:  # after the change of master: only a bridge port can be isolated
        ipr.brport("set", index=idx, isolated=int(op.isolated))


def _write_sysctl(netns: str | None, key: str, value: str) -> None:
    if netns is None:
        try:
            (PROC_SYS / key).write_text(value + "\n")
        except OSError as exc:
            raise DatapathError(f"sysctl {key.replace('/', '.')}={value}: {exc.strerror}") from exc
    else:
        run(netns, ["sh", "-c", 'echo "$1" > "/proc/sys/$0"', key, value])


def _flush_learned(ipr: Any, ports: Iterable[str], bridge: str) -> int:
    """Forget the MACs the bridge learned behind these ports (not static or permanent entries), so traffic
    for them floods until it is learned again on whichever port now leads to it. Returns how many."""
    removed = 0
    found = [ipr.link_lookup(ifname=p) for p in ports]
    idxs = {f[0] for f in found if f}
    br = ipr.link_lookup(ifname=bridge)
    if not idxs or not br:
        return 0
    for msg in list(ipr.fdb("dump")):
        if msg["ifindex"] not in idxs or msg.get("NDA_MASTER") != br[0] or msg["state"] & (NUD_PERMANENT | NUD_NOARP):
            continue
        with contextlib.suppress(NetlinkError):  # aged out meanwhile
            ipr.neigh(
                "del", family=socket.AF_BRIDGE, ifindex=msg["ifindex"], lladdr=msg.get("NDA_LLADDR"), flags=NTF_MASTER
            )
            removed += 1
    return removed
