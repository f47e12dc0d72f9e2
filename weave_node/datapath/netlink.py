"""The kernel shell of the datapath: the only module that imports pyroute2.

observe() reads what plan() needs; apply() performs a plan's operations in order; attach_pod()/detach_pod()
plumb one pod. Every function takes `netns` (a name under /run/netns, or None for our own namespace), so tests
drive hosts that are namespaces. iptables goes through iptables-save / iptables-restore --noflush (one
transaction per table) and sysctls through /proc/sys. pyroute2's sync API runs its own event loop: call these
from a worker thread, never from the router's loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import config as pyroute2_config
from pyroute2.netlink.exceptions import NetlinkError

from weave_node.datapath.iptables import TABLES, parse_save
from weave_node.datapath.model import BRIDGE, FLOOD_MAC, VXLAN, Fdb, Link, Neigh, Observed, Pod
from weave_node.datapath.plan import (
    AddAddress,
    AddFdb,
    AddNeigh,
    CreateBridge,
    CreateVxlan,
    DelAddress,
    DeleteLink,
    DelFdb,
    DelNeigh,
    Op,
    RestoreTable,
    SetLink,
    SetSysctl,
)

# pyroute2 enters another namespace in a forked child that it ends with SIGTERM. Unless the child resets its
# signal handlers, that SIGTERM reaches the router's asyncio wakeup fd (inherited) and looks like a shutdown
# request: measured ~5% of namespace opens under load.
pyroute2_config.disable_mp_signal = True

NUD_PERMANENT = 0x80
NUD_NOARP = 0x40
NTF_SELF = 0x02
NTF_MASTER = 0x04
RUN_TIMEOUT = 30.0
PROC_SYS = Path("/proc/sys")


class DatapathError(Exception):
    """A kernel operation failed; the message says which and why."""


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _socket_in(netns: str) -> Any:
    """An IPRoute whose netlink socket lives in `netns` (a path, or a name under /run/netns).

    This thread enters the namespace only while the socket is created, then returns (a socket stays in the
    namespace it was created in). 0.8 ms, against ~5 ms for pyroute2's own netns support, which forks a helper."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatapathError(f"cannot open network namespace {netns}: {exc.strerror}") from exc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DatapathError(f"cannot enter network namespace {netns}: {os.strerror(err)}")
        try:
            return IPRoute()
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:  # a thread left in a pod's namespace would be a disaster
                os.abort()
    finally:
        os.close(target)
        os.close(own)


@contextlib.contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    try:
        ipr = _socket_in(netns) if netns else IPRoute()
    except (OSError, NetlinkError) as exc:
        raise DatapathError(f"cannot open network namespace {netns}: {exc}") from exc
    try:
        yield ipr
    finally:
        ipr.close()


def _ns_argv(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def _run(netns: str | None, argv: list[str], stdin: str | None = None) -> str:
    try:
        out = subprocess.run(
            _ns_argv(netns, argv), input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatapathError(f"{argv[0]}: {exc}") from exc
    if out.returncode != 0:
        raise DatapathError(f"{' '.join(argv)} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


# --- observe -------------------------------------------------------------------------------------------


def observe(
    netns: str | None = None,
    *,
    sysctls: Iterable[str] = (),
    iptables: bool = True,
    bridge: str = BRIDGE,
    vxlan: str = VXLAN,
) -> Observed:
    with _ipr(netns) as ipr:
        links = _links(ipr)
        fdb: set[Fdb] = set()
        neigh: set[Neigh] = set()
        if vxlan in links and links[vxlan].kind == "vxlan":
            for msg in ipr.fdb("dump", ifindex=links[vxlan].index):
                dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
                if dst and mac and msg["ifindex"] == links[vxlan].index and msg["state"] & NUD_PERMANENT:
                    fdb.add(Fdb(mac, dst))
        if bridge in links and links[bridge].kind == "bridge":
            for msg in ipr.neigh("dump", ifindex=links[bridge].index, family=socket.AF_INET):
                dst, mac = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
                if dst and mac and msg["state"] & NUD_PERMANENT:
                    neigh.add(Neigh(dst, mac))
    return Observed(
        links=links,
        fdb=frozenset(fdb),
        neigh=frozenset(neigh),
        sysctls=_read_sysctls(netns, sysctls),
        iptables=_iptables_save(netns) if iptables else None,
    )


def _links(ipr: Any) -> dict[str, Link]:
    raw = list(ipr.get_links())
    names = {msg["index"]: msg.get("IFLA_IFNAME") for msg in raw}
    addrs: dict[int, list[str]] = {}
    for msg in ipr.get_addr(family=socket.AF_INET):
        addrs.setdefault(msg["index"], []).append(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
    links: dict[str, Link] = {}
    for msg in raw:
        name = msg.get("IFLA_IFNAME")
        info = msg.get("IFLA_LINKINFO")
        kind = (info.get("IFLA_INFO_KIND") if info else None) or ""
        data = info.get("IFLA_INFO_DATA") if info else None
        vni = port = learning = snooping = None
        if kind == "vxlan" and data is not None:
            vni, port = data.get("IFLA_VXLAN_ID"), data.get("IFLA_VXLAN_PORT")
            learning = bool(data.get("IFLA_VXLAN_LEARNING"))
        if kind == "bridge" and data is not None:
            snooping = bool(data.get("IFLA_BR_MCAST_SNOOPING"))
        master = msg.get("IFLA_MASTER")
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
    out = _run(netns, ["sh", "-c", script])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def iptables_available() -> bool:
    return shutil.which("iptables-save") is not None and shutil.which("iptables-restore") is not None


def _iptables_save(netns: str | None) -> dict[str, dict[str, tuple[str, ...]]] | None:
    if not iptables_available():
        return None
    tables: dict[str, dict[str, tuple[str, ...]]] = {}
    for table in TABLES:
        tables.update(parse_save(_run(netns, ["iptables-save", "-t", table])))
        tables.setdefault(table, {})
    return tables


# --- apply ---------------------------------------------------------------------------------------------


def apply(ops: Iterable[Op], netns: str | None = None) -> int:
    """Perform the operations in order; stop at the first failure with a DatapathError. Returns the count."""
    count = 0
    with _ipr(netns) as ipr:
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
    with _ipr(netns) as ipr:
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


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise DatapathError(f"link {name} does not exist")
    return int(found[0])


def _apply_one(ipr: Any, netns: str | None, op: Op) -> None:
    if isinstance(op, SetSysctl):
        _write_sysctl(netns, op.key, op.value)
    elif isinstance(op, CreateBridge):
        kw: dict[str, Any] = {"mtu": op.mtu, "br_mcast_snooping": int(op.mcast_snooping)}
        if op.mac:
            kw["address"] = op.mac
        ipr.link("add", ifname=op.name, kind="bridge", **kw)
    elif isinstance(op, CreateVxlan):
        ipr.link(
            "add",
            ifname=op.name,
            kind="vxlan",
            vxlan_id=op.vni,
            vxlan_port=op.port,
            vxlan_learning=int(op.learning),
            mtu=op.mtu,
            master=_index(ipr, op.master),
        )
    elif isinstance(op, SetLink):
        _set_link(ipr, op)
    elif isinstance(op, DeleteLink):
        ipr.link("del", index=_index(ipr, op.name))
    elif isinstance(op, AddAddress | DelAddress):
        iface = ipaddress.ip_interface(op.cidr)
        command = "add" if isinstance(op, AddAddress) else "del"
        ipr.addr(command, index=_index(ipr, op.link), address=str(iface.ip), prefixlen=iface.network.prefixlen)
    elif isinstance(op, AddFdb):
        _add_fdb(ipr, op)
    elif isinstance(op, DelFdb):
        ipr.fdb("del", ifindex=_index(ipr, op.link), lladdr=op.entry.mac, dst=op.entry.dst)
    elif isinstance(op, AddNeigh):
        idx = _index(ipr, op.link)
        ipr.neigh("replace", dst=op.entry.ip, lladdr=op.entry.mac, ifindex=idx, state=NUD_PERMANENT)
    elif isinstance(op, DelNeigh):
        ipr.neigh("del", dst=op.entry.ip, lladdr=op.entry.mac, ifindex=_index(ipr, op.link))
    elif isinstance(op, RestoreTable):
        _run(netns, ["iptables-restore", "--noflush", "-w", "5"], stdin=op.text())


def _add_fdb(ipr: Any, op: AddFdb) -> None:
    if op.entry.mac == FLOOD_MAC:  # the flood list holds many VTEPs: append
        ipr.fdb("append", ifindex=_index(ipr, op.link), lladdr=op.entry.mac, dst=op.entry.dst)
        return
    # replace, not append: a learned entry for this MAC must take our VTEP, not just become permanent
    ipr.neigh(
        "replace",
        family=socket.AF_BRIDGE,
        ifindex=_index(ipr, op.link),
        lladdr=op.entry.mac,
        dst=op.entry.dst,
        state=NUD_PERMANENT | NUD_NOARP,
        flags=NTF_SELF,
    )


def _set_link(ipr: Any, op: SetLink) -> None:
    idx = _index(ipr, op.name)
    kw: dict[str, Any] = {}
    if op.mtu is not None:
        kw["mtu"] = op.mtu
    if op.mac is not None:
        kw["address"] = op.mac
    if op.master is not None:
        kw["master"] = _index(ipr, op.master) if op.master else 0
    if op.alias is not None:
        kw["IFLA_IFALIAS"] = op.alias
    if op.up is not None:
        kw["state"] = "up" if op.up else "down"
    if kw:
        ipr.link("set", index=idx, **kw)
    if op.mcast_snooping is not None:
        ipr.link("set", index=idx, kind="bridge", br_mcast_snooping=int(op.mcast_snooping))


def _write_sysctl(netns: str | None, key: str, value: str) -> None:
    if netns is None:
        try:
            (PROC_SYS / key).write_text(value + "\n")
        except OSError as exc:
            raise DatapathError(f"sysctl {key.replace('/', '.')}={value}: {exc.strerror}") from exc
    else:
        _run(netns, ["sh", "-c", 'echo "$1" > "/proc/sys/$0"', key, value])


# --- underlay ------------------------------------------------------------------------------------------


def route_mtu(dst: str, netns: str | None = None) -> tuple[str, int] | None:
    """The device (and its MTU) the kernel would use to reach `dst`, or None if there is no route."""
    with _ipr(netns) as ipr:
        try:
            routes = ipr.route("get", dst=dst)
        except NetlinkError:
            return None
        for route in routes:
            oif = route.get("RTA_OIF")
            if oif:
                link = ipr.get_links(oif)[0]
                if link.get("IFLA_IFNAME") == "lo":
                    return None  # one of our own addresses: says nothing about the underlay
                return link.get("IFLA_IFNAME"), int(link.get("IFLA_MTU"))
    return None


def default_route_mtu(netns: str | None = None) -> tuple[str, int] | None:
    """The device of the IPv4 default route and its MTU, or None."""
    with _ipr(netns) as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            oif = route.get("RTA_OIF")
            if oif:
                link = ipr.get_links(oif)[0]
                return link.get("IFLA_IFNAME"), int(link.get("IFLA_MTU"))
    return None


# --- pods ----------------------------------------------------------------------------------------------


def attach_pod(pod: Pod, netns: str | None = None) -> dict[str, str]:
    """Create the veth pair, the pod end in `pod.netns` as `pod.ifname` with address, MTU and a default route via
    the gateway, the host end up on the bridge. Idempotent: an attachment that is already complete is left
    as it is; a partial one is completed. On failure, whatever this call created is removed again.
    Returns the interfaces' MACs and names (for the CNI result)."""
    fd = _open_netns(pod.netns)
    created = False
    try:
        with _ipr(netns) as host:
            bridge = _index(host, pod.bridge)
            found = host.link_lookup(ifname=pod.host_ifname)
            if found and _kind(host, found[0]) != "veth":
                raise DatapathError(f"host interface name {pod.host_ifname} is taken by a link that is not a veth")
            if found and not _pod_end_exists(pod):
                host.link("del", index=found[0])  # a stale host end whose pod end is gone
                found = []
            if not found:
                peer: dict[str, Any] = {"ifname": pod.ifname, "net_ns_fd": fd, "mtu": pod.mtu}
                if pod.mac:
                    peer["address"] = pod.mac
                host.link("add", ifname=pod.host_ifname, kind="veth", mtu=pod.mtu, peer=peer)
                created = True
            idx = _index(host, pod.host_ifname)
            host.link("set", index=idx, master=bridge, mtu=pod.mtu, state="up")
            if pod.hairpin or not created:  # a new bridge port starts with hairpin off
                host.brport("set", index=idx, mode=int(pod.hairpin))
            host_mac = host.get_links(idx)[0].get("IFLA_ADDRESS")
        pod_mac = _configure_pod_end(pod)
    except (NetlinkError, OSError) as exc:
        if created:
            _rollback(pod, netns)
        raise DatapathError(f"attach {pod.ifname} in {pod.netns}: {exc}") from exc
    except DatapathError:
        if created:
            _rollback(pod, netns)
        raise
    finally:
        os.close(fd)
    return {"host_ifname": pod.host_ifname, "host_mac": host_mac, "mac": pod_mac, "ifname": pod.ifname}


def _rollback(pod: Pod, netns: str | None) -> None:
    with contextlib.suppress(DatapathError, NetlinkError, OSError):  # the original error is the one to report
        detach_pod(pod, netns)


def _kind(ipr: Any, index: int) -> str:
    info = ipr.get_links(index)[0].get("IFLA_LINKINFO")
    return str(info.get("IFLA_INFO_KIND") or "") if info else ""


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DatapathError(f"network namespace {path}: {exc.strerror}") from exc


def _pod_end_exists(pod: Pod) -> bool:
    try:
        with _ipr(pod.netns) as ipr:
            return bool(ipr.link_lookup(ifname=pod.ifname))
    except DatapathError:
        return False


def _configure_pod_end(pod: Pod) -> str:
    iface = ipaddress.ip_interface(pod.address)
    with _ipr(pod.netns) as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
        idx = _index(ipr, pod.ifname)
        ipr.link("set", index=idx, mtu=pod.mtu, state="up")
        have = {(a.get("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
        if (str(iface.ip), iface.network.prefixlen) not in have:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        try:
            ipr.route("replace", dst="0.0.0.0/0", gateway=pod.gateway, oif=idx)
        except NetlinkError as exc:
            raise DatapathError(f"default route via {pod.gateway} in {pod.netns}: {os.strerror(exc.code)}") from exc
        return str(ipr.get_links(idx)[0].get("IFLA_ADDRESS"))


def detach_pod(pod: Pod, netns: str | None = None) -> bool:
    """The exact inverse of attach_pod: the veth pair is gone afterwards (removing either end removes both).
    Idempotent: succeeds when the pair, the pod or its namespace is already gone. True if it removed something."""
    removed = False
    with _ipr(netns) as host:
        found = host.link_lookup(ifname=pod.host_ifname)
        try:
            if found and _kind(host, found[0]) == "veth":
                host.link("del", index=found[0])
                removed = True
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:  # gone in between: that is what we wanted
                raise DatapathError(f"detach {pod.host_ifname}: {os.strerror(exc.code)}") from exc
    if not removed and os.path.exists(pod.netns):  # removing the host end removed the pod end with it
        with contextlib.suppress(DatapathError, NetlinkError), _ipr(pod.netns) as ipr:
            for idx in ipr.link_lookup(ifname=pod.ifname):
                link = ipr.get_links(idx)[0]
                info = link.get("IFLA_LINKINFO")
                if info and info.get("IFLA_INFO_KIND") == "veth":
                    try:
                        ipr.link("del", index=idx)
                        removed = True
                    except NetlinkError as exc:
                        if exc.code != errno.ENODEV:
                            raise DatapathError(f"detach {pod.ifname} in {pod.netns}: {exc}") from exc
    return removed


def pod_state(pod: Pod) -> dict[str, Any]:
    """What the pod end looks like now (for CHECK): address list, MTU, default gateway; {} if absent."""
    if not os.path.exists(pod.netns):
        return {}
    with _ipr(pod.netns) as ipr:
        found = ipr.link_lookup(ifname=pod.ifname)
        if not found:
            return {}
        idx = found[0]
        link = ipr.get_links(idx)[0]
        addrs = sorted(
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx, family=socket.AF_INET)
        )
        gateways = [r.get("RTA_GATEWAY") for r in ipr.get_default_routes(family=socket.AF_INET)]
        return {
            "mtu": link.get("IFLA_MTU"),
            "mac": link.get("IFLA_ADDRESS"),
            "up": bool(link["flags"] & 1),
            "addresses": addrs,
            "gateways": [g for g in gateways if g],
        }


def attach_port(name: str, mtu: int, bridge: str = BRIDGE, tunnel: str = VXLAN, netns: str | None = None) -> bool:
    """Put link `name` (the sleeve's TAP) on the bridge with the overlay's MTU, up, and isolate it and the
    tunnel's port from each other: a frame that arrived from one overlay path must never leave by the other
    (the bridge would otherwise flood VXLAN broadcasts into the sleeve, and peers would learn the MACs of
    fastdp hosts behind their TAP). True if anything changed."""
    changed = False
    with _ipr(netns) as ipr:
        idx, master = _index(ipr, name), _index(ipr, bridge)
        msg = ipr.get_links(idx)[0]
        if not (msg.get("IFLA_MASTER") == master and msg.get("IFLA_MTU") == mtu and msg["flags"] & 1):
            ipr.link("set", index=idx, mtu=mtu)
            ipr.link("set", index=idx, master=master, state="up")
            changed = True
        for port in (name, tunnel):
            found = ipr.link_lookup(ifname=port)
            if not found:
                continue
            msg = ipr.get_links(found[0])[0]
            info = msg.get("IFLA_LINKINFO")
            data = info.get("IFLA_INFO_SLAVE_DATA") if info else None
            if msg.get("IFLA_MASTER") == master and not (data and data.get("IFLA_BRPORT_ISOLATED")):
                ipr.brport("set", index=found[0], isolated=1)
                changed = True
    return changed


def flush_learned(ports: Iterable[str], bridge: str = BRIDGE, netns: str | None = None) -> int:
    """Forget the MACs the bridge learned behind these ports (not static or permanent entries), so traffic
    for them floods until it is learned again on whichever port now leads to it. Returns how many."""
    removed = 0
    with _ipr(netns) as ipr:
        found = [ipr.link_lookup(ifname=p) for p in ports]
        idxs = {f[0] for f in found if f}
        br = ipr.link_lookup(ifname=bridge)
        if not idxs or not br:
            return 0
        for msg in list(ipr.fdb("dump")):
            if (
                msg["ifindex"] not in idxs
                or msg.get("NDA_MASTER") != br[0]
                or msg["state"] & (NUD_PERMANENT | NUD_NOARP)
            ):
                continue
            with contextlib.suppress(NetlinkError):  # aged out meanwhile
                ipr.neigh(
                    "del",
                    family=socket.AF_BRIDGE,
                    ifindex=msg["ifindex"],
                    lladdr=msg.get("NDA_LLADDR"),
                    flags=NTF_MASTER,
                )
                removed += 1
    return removed
