"""The kernel side of WireGuard (datapath/wireguard.py's plan): the `weave-wg` link through rtnetlink, its keys
and peers through WireGuard's generic netlink family (pyroute2). Keys only ever travel in netlink messages."""

from __future__ import annotations

import base64
import errno
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink.exceptions import NetlinkError

from weave_node.datapath.model import ALIAS
from weave_node.datapath.wireguard import (
    DEVICE,
    KEEPALIVE,
    CreateDevice,
    DeleteDevice,
    PeerState,
    RemovePeer,
    SetDevice,
    SetLink,
    SetPeer,
    WgObserved,
    WgOp,
    WgPeer,
    describe,
)

log = logging.getLogger("weave_node.datapath")
PROBE_DEVICE = "weave-wgprobe"


class WireGuardError(Exception):
    """No WireGuard here (no module, no generic netlink family), or netlink refused."""


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _key(value: Any) -> bytes:
    """A key as pyroute2 decodes it (base64 text or bytes)."""
    if isinstance(value, bytes | str) and len(value) in (43, 44):
        return base64.b64decode(value)
    return bytes(value) if value else b""


def _link(ipr: Any) -> Any | None:
    found = ipr.link_lookup(ifname=DEVICE)
    return ipr.get_links(found[0])[0] if found else None


def observe() -> WgObserved:
    """Our device as the kernel has it (WgObserved() when there is none)."""
    try:
        with IPRoute() as ipr:
            link = _link(ipr)
            if link is None:
                return WgObserved()
            info = link.get("IFLA_LINKINFO")
            kind = (info.get("IFLA_INFO_KIND") if info else None) or "?"
            addresses = tuple(
                str(ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"))
                for a in ipr.get_addr(index=link["index"], family=socket.AF_INET6)
                if a["scope"] == 0
            )
            mtu, up = int(link.get("IFLA_MTU") or 0), bool(link["flags"] & 1)
            alias = str(link.get("IFLA_IFALIAS") or "")
        if kind != "wireguard" or alias != ALIAS:
            return WgObserved(kind=kind, alias=alias)  # (not ours: never read, never touched)
        with WireGuard() as wg:
            messages = list(wg.info(DEVICE))
    except NetlinkError as exc:
        raise WireGuardError(f"{DEVICE}: {os_error(exc)}") from exc
    private, port, peers = b"", 0, dict[bytes, PeerState]()
    for msg in messages:  # (a dump: many peers come in several messages, and one may straddle two: the second
        private = _key(msg.get("WGDEVICE_A_PRIVATE_KEY")) or private  # part has its key and the rest of its
        port = int(msg.get("WGDEVICE_A_LISTEN_PORT") or port)  # allowed addresses only)
        for p in msg.get("WGDEVICE_A_PEERS") or ():
            state = _peer(p)
            before = peers.get(state.peer.public_key)
            peers[state.peer.public_key] = state if before is None else _merged(before, state)
    return WgObserved("wireguard", alias, private, port, mtu, up, addresses, tuple(peers.values()))


def _merged(first: PeerState, more: PeerState) -> PeerState:
    peer = first.peer if first.peer.allowed else replace(first.peer, allowed=more.peer.allowed)
    return replace(first, peer=peer)


def _peer(p: Any) -> PeerState:
    endpoint = p.get("WGPEER_A_ENDPOINT")
    allowed = [a.get("addr") for a in (p.get("WGPEER_A_ALLOWEDIPS") or ()) if a.get("addr")]
    handshake = p.get("WGPEER_A_LAST_HANDSHAKE_TIME")
    return PeerState(
        WgPeer(
            public_key=_key(p.get("WGPEER_A_PUBLIC_KEY")),
            endpoint=str(endpoint.get("addr") or "") if endpoint is not None else "",
            allowed=str(allowed[0]) if allowed else "",
            preshared_key=_key(p.get("WGPEER_A_PRESHARED_KEY")),
            port=int(endpoint.get("port") or 0) if endpoint is not None else 0,
        ),
        handshake=float(handshake.get("tv_sec") or 0) if handshake is not None else 0.0,
        rx_bytes=int(p.get("WGPEER_A_RX_BYTES") or 0),
        tx_bytes=int(p.get("WGPEER_A_TX_BYTES") or 0),
    )


def os_error(exc: NetlinkError) -> str:
    return os.strerror(exc.code) if exc.code > 0 else str(exc)


def apply(ops: Sequence[WgOp]) -> tuple[int, list[str]]:
    """Each op on its own: one that fails is reported and the others still run."""
    count, errors = 0, []
    if not ops:
        return 0, []
    with IPRoute() as ipr, WireGuard() as wg:
        for op in ops:
            try:
                _apply_one(ipr, wg, op)
            except Exception as exc:  # (one op's failure must not stop the others, nor the datapath's sync)
                why = os_error(exc) if isinstance(exc, NetlinkError) else str(exc)
                errors.append(f"{describe(op)}: {why}")
            else:
                count += 1
    return count, errors


def _apply_one(ipr: Any, wg: Any, op: WgOp) -> None:
    if isinstance(op, CreateDevice | DeleteDevice):
        link = _link(ipr)
        if link is not None:
            ipr.link("del", index=link["index"])
        if isinstance(op, CreateDevice):
            ipr.link("add", ifname=DEVICE, kind="wireguard")
            try:  # (labelled at once: an unlabelled one would be refused as another's from now on)
                ipr.link("set", index=_index(ipr), ifalias=ALIAS)
            except Exception:
                ipr.link("del", index=_index(ipr))
                raise
    elif isinstance(op, SetDevice):
        wg.set(DEVICE, private_key=_b64(op.private_key), listen_port=op.port)
    elif isinstance(op, SetLink):
        idx = _index(ipr)
        _enable_ipv6()
        for stale in op.remove:
            iface = ipaddress.ip_interface(stale)
            ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ipr.link("set", index=idx, mtu=op.mtu, state="up")
        iface = ipaddress.ip_interface(op.address)
        try:  # (no duplicate address detection: the address is ours by construction)
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen, flags=0x02)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
    elif isinstance(op, SetPeer):
        p = op.peer
        wg.set(DEVICE, peer={
            "public_key": _b64(p.public_key),
            "preshared_key": _b64(p.preshared_key or bytes(32)),
            "endpoint_addr": p.endpoint,
            "endpoint_port": p.port,
            "persistent_keepalive": KEEPALIVE,
            "replace_allowed_ips": True,
            "allowed_ips": [p.allowed],
        })  # fmt: skip
    elif isinstance(op, RemovePeer):
        wg.set(DEVICE, peer={"public_key": _b64(op.public_key), "remove": True})


def _index(ipr: Any) -> int:
    found = ipr.link_lookup(ifname=DEVICE)
    if not found:
        raise WireGuardError(f"no {DEVICE}")
    return int(found[0])


def _enable_ipv6() -> None:
    """IPv6 on the device, even where it is off by default (hardened hosts): its tunnel address is IPv6's."""
    path = f"/proc/sys/net/ipv6/conf/{DEVICE}/disable_ipv6"
    if os.path.exists(path):
        with open(path, "w") as f:
            f.write("0")


def probe() -> str | None:
    """None when this kernel can make a WireGuard device (and configure it), else why not."""
    try:
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=PROBE_DEVICE):
                ipr.link("del", index=idx)
            ipr.link("add", ifname=PROBE_DEVICE, kind="wireguard")
            try:
                with WireGuard() as wg:
                    wg.info(PROBE_DEVICE)
            finally:
                ipr.link("del", index=ipr.link_lookup(ifname=PROBE_DEVICE)[0])
    except NetlinkError as exc:
        return f"no WireGuard device ({os_error(exc)})"
    except Exception as exc:  # (pyroute2: no generic netlink family "wireguard")
        return f"no WireGuard ({exc})"
    return None


def remove() -> bool:
    """`weave-wg` gone (reset, or WireGuard not used now): whether there was one of ours."""
    try:
        with IPRoute() as ipr:
            link = _link(ipr)
            if link is None or link.get("IFLA_IFALIAS") != ALIAS:
                return False
            ipr.link("del", index=link["index"])
    except NetlinkError as exc:
        raise WireGuardError(f"{DEVICE}: {os_error(exc)}") from exc
    return True
