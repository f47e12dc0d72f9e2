"""The overlay's part of `status` (the "datapath" document), as a function of a snapshot of values (pure).

Each peer's mode: without fastdp (disabled, or a password set) it is `sleeve` or `down`; with it, what the
heartbeats decided (overlay.health) once the kernel datapath applied it, or `pending` while the peer has no
heartbeats yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from weave_node.datapath.model import BRIDGE, VNI, VXLAN, VXLAN_PORT
from weave_node.mesh.peer import format_name
from weave_node.overlay.desired import TAP
from weave_node.overlay.health import Mode
from weave_node.overlay.peers import PeerInfo, underlay_of
from weave_node.overlay.sleeve.config import PORT as SLEEVE_PORT
from weave_node.overlay.sleeve.config import LinkStatus


@dataclass(frozen=True)
class PeerHealthView:
    mode: Mode
    reason: str
    last_rx: float | None  # when its last heartbeat arrived


@dataclass(frozen=True)
class EspView:
    """With a password: whether VXLAN may be ESP's or WireGuard's here, and per peer what the core says
    (overlay/esp, overlay/wireguard)."""

    on: bool
    note: str  # why not (on: "")
    summary: Mapping[str, Any] = field(default_factory=dict)
    peers: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    no_esp: frozenset[int] = frozenset()  # the peers without either: the sealed sleeve carries their pod traffic


@dataclass(frozen=True)
class Snapshot:
    fastdp: bool
    encrypt: bool
    sleeve_running: bool
    sleeve_error: str | None
    mtu: int
    mtu_source: str
    bridge_cidr: str | None = None
    bridge_cidr6: str | None = None
    peers: frozenset[int] = frozenset()  # in the topology
    heartbeat_peers: Mapping[int, str] = field(default_factory=dict)  # peer -> bridge address (fastdp only)
    health: Mapping[int, PeerHealthView] = field(default_factory=dict)
    infos: Mapping[int, PeerInfo] = field(default_factory=dict)
    direct: Mapping[int, str] = field(default_factory=dict)
    nicknames: Mapping[int, str] = field(default_factory=dict)
    sleeving: frozenset[int] = frozenset()  # the peers in the sleeve
    routes: Mapping[int, int] = field(default_factory=dict)  # the sleeve's, as last pushed
    links: Mapping[int, LinkStatus] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    drops: Mapping[str, int] = field(default_factory=dict)
    flood_entries: int = 0
    problems: tuple[str, ...] = ()
    bridge_netfilter: tuple[str | None, str] | None = None  # (sysctl value or None = left alone, why)
    direct_off: str | None = "not started"  # why direct mode is off (None: on)
    direct_devices: Mapping[int, str] = field(default_factory=dict)  # candidate -> our device on its L2 segment
    last_sync: Mapping[str, Any] = field(default_factory=dict)
    # The peers in the sleeve as the kernel datapath last applied it (flood entries, flush of learned MACs); a
    # peer whose heartbeats decided otherwise is shown in its applied mode, "switching", until the next sync.
    applied_sleeve: frozenset[int] | None = None
    applied_direct: frozenset[int] | None = None  # likewise: the direct peers whose routes are in the kernel
    vxlan_local: str = ""  # the VXLAN device's IPv6 source ("" = IPv4's): the family of our underlay
    esp: EspView | None = None  # with a password


def peer_mode(snap: Snapshot, name: int) -> tuple[Mode, str]:
    """(mode, reason) of one peer."""
    health = snap.health.get(name)
    if not snap.fastdp:
        if name in snap.sleeving:
            mode = Mode.SLEEVE
            reason = "encrypted: the kernel's VXLAN cannot encrypt" if snap.encrypt else "fast datapath disabled"
        else:
            mode = Mode.DOWN
            reason = f"sleeve unavailable: {snap.sleeve_error}" if snap.sleeve_error else "fast datapath disabled"
    elif snap.esp is not None and name in snap.esp.no_esp and name in snap.sleeving:
        why = (snap.esp.peers.get(name) or {}).get("why_not") or "no kernel encryption with it"
        mode, reason = Mode.SLEEVE, f"encrypted in the sleeve: {why}"
    elif health is None:
        mode = Mode.PENDING
        vtep = _vtep(snap, name)
        reason = "no underlay address known yet" if not vtep else "no bridge address known yet"
        if vtep and (":" in vtep) != bool(snap.vxlan_local) and name in snap.sleeving:
            ours = "IPv6" if snap.vxlan_local else "IPv4"
            mode, reason = Mode.SLEEVE, f"its underlay address is not of our VXLAN device's family ({ours})"
    else:
        mode, reason = health.mode, health.reason
        if snap.applied_sleeve is not None and mode in (Mode.FASTDP, Mode.SLEEVE, Mode.DIRECT):
            in_sleeve = name in snap.applied_sleeve
            if in_sleeve != (mode is Mode.SLEEVE):
                applied = Mode.SLEEVE if in_sleeve else Mode.FASTDP
                mode, reason = applied, f"switching to {health.mode.value} (datapath update pending): {reason}"
        if mode is Mode.DIRECT and snap.applied_direct is not None and name not in snap.applied_direct:
            mode, reason = Mode.FASTDP, f"switching to direct (datapath update pending): {reason}"
    if mode is Mode.SLEEVE and snap.routes.get(name) is None:
        reason += "; no sleeve route yet"
    return mode, reason


def _vtep(snap: Snapshot, name: int) -> str:
    return underlay_of(name, snap.infos, snap.direct, bool(snap.vxlan_local))


def _peer(snap: Snapshot, name: int, now: float) -> dict[str, Any]:
    mode, reason = peer_mode(snap, name)
    health = snap.health.get(name)
    info = snap.infos.get(name)
    hop = snap.routes.get(name)
    link = snap.links.get(name)
    sleeve = None
    if snap.sleeve_running:
        sleeve = {
            "via": None if hop is None else ("direct" if hop == name else snap.nicknames.get(hop, format_name(hop))),
            "link": None
            if link is None
            else {
                "up": link.up,
                "verified_mtu": link.verified,
                "last_ack_ago": link.last_ack_ago,
                "cipher": link.cipher,
            },
        }
    return {
        "name": format_name(name),
        "nickname": snap.nicknames.get(name, ""),
        "vtep": _vtep(snap, name),
        "bridge_ip": info.bridge_ip if info else "",
        "mode": mode.value,
        "reason": reason,
        "last_heartbeat_ago": round(now - health.last_rx, 1) if health and health.last_rx else None,
        "in_topology": name in snap.peers,
        "direct": {"device": snap.direct_devices[name]}
        if mode is Mode.DIRECT and name in snap.direct_devices
        else None,
        "sleeve": sleeve,
        "encryption": _encryption(snap, name, mode),
    }


def _encryption(snap: Snapshot, name: int, mode: Mode) -> dict[str, Any] | None:
    """How this peer's pod traffic is encrypted (None without a password)."""
    if not snap.encrypt:
        return None
    esp = snap.esp.peers.get(name) if snap.esp is not None else None
    if mode in (Mode.FASTDP, Mode.PENDING) and esp and (esp.get("spi_in") is not None or esp.get("by") == "wireguard"):
        return {"by": esp.get("by", "esp"), **{k: v for k, v in esp.items() if k not in ("why_not", "by")}}
    why = (esp or {}).get("why_not") or (snap.esp.note if snap.esp is not None else "")
    return {"by": "sleeve" if mode is Mode.SLEEVE else "none", "why": why or None}


def status(snap: Snapshot, now: float) -> dict[str, Any]:
    sleeve: dict[str, Any] | None = None
    if snap.sleeve_running:
        sleeve = {
            "device": TAP,
            "port": SLEEVE_PORT,
            "encrypted": snap.encrypt,
            "counters": dict(snap.counters),
            "drops": dict(snap.drops),
        }
    elif snap.sleeve_error:
        sleeve = {"error": snap.sleeve_error}
    return {
        "bridge": BRIDGE,
        "bridge_address": snap.bridge_cidr,
        **({"bridge_address6": snap.bridge_cidr6} if snap.bridge_cidr6 else {}),
        "mtu": snap.mtu,
        "mtu_source": snap.mtu_source,
        "underlay": "ipv6" if snap.vxlan_local else "ipv4",
        "fastdp": (
            {"device": VXLAN, "port": VXLAN_PORT, "vni": VNI, "flood_entries": snap.flood_entries}
            if snap.fastdp
            else None
        ),
        "sleeve": sleeve,
        "direct": {"on": snap.direct_off is None, "reason": snap.direct_off or "L2 neighbours: no encapsulation"},
        "bridge_netfilter": (
            {"value": snap.bridge_netfilter[0], "reason": snap.bridge_netfilter[1]} if snap.bridge_netfilter else None
        ),
        "encryption": (
            None
            if snap.esp is None
            else {
                "esp": snap.esp.summary.get("kind") == "esp",
                "kind": None,
                "reason": snap.esp.note or None,
                **snap.esp.summary,
            }
        ),
        "problems": list(snap.problems),
        "last_sync": {k: (round(now - v, 1) if k == "at" else v) for k, v in snap.last_sync.items()},
        "peers": [_peer(snap, name, now) for name in sorted(snap.peers | set(snap.heartbeat_peers))],
    }
