"""WireGuard for the fast datapath: our device and its peers as values, and the plan that brings the kernel's to
them (pure). wireguard_shell.py runs the plan through netlink (keys travel only in netlink messages, never in a
process list or a file).

What is ours: the one device `weave-wg` and every peer on it. Each peer's allowed address is one host's tunnel
address (overlay/wireguard/keys.py), a /128: the VXLAN device sends to it, and WireGuard takes a packet to an
address no peer is configured for nowhere (it drops it), so nothing leaves in the clear while a peer is being
configured or replaced. The plan configures peers before the datapath's FDB entries and removes them after.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

from weave_node.datapath.model import ALIAS

DEVICE = "weave-wg"
PORT = 6786  # UDP: the underlay's WireGuard traffic (VXLAN's 6784 runs inside the tunnels; 6785 is the heartbeats')
OVERHEAD = 20 + 8 + 32  # an IPv4 underlay's header, UDP, WireGuard's header (16) and tag (16)
KEEPALIVE = 25  # seconds: keeps a peer's NAT and conntrack state, and its handshake fresh
FRESH = 180.0  # seconds: a handshake younger than this is current (WireGuard's REJECT_AFTER_TIME)


@dataclass(frozen=True)
class WgPeer:
    public_key: bytes
    endpoint: str  # the peer's underlay address
    allowed: str  # its tunnel address, "<ip>/128"
    preshared_key: bytes = field(default=b"", repr=False)
    port: int = PORT


@dataclass(frozen=True)
class WgDevice:
    private_key: bytes = field(repr=False)
    address: str  # ours inside the tunnels, "<ip>/64"
    mtu: int
    port: int = PORT
    peers: frozenset[WgPeer] = frozenset()


@dataclass(frozen=True)
class PeerState:
    """A peer as the kernel has it."""

    peer: WgPeer
    handshake: float = 0.0  # the last handshake (Unix time; 0: none yet)
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class WgObserved:
    kind: str = ""  # of the link named DEVICE ("": none)
    alias: str = ""  # its alias: ALIAS on ours
    private_key: bytes = field(default=b"", repr=False)
    port: int = 0
    mtu: int = 0
    up: bool = False
    addresses: tuple[str, ...] = ()  # global IPv6 ones, "<ip>/<prefix>"
    peers: tuple[PeerState, ...] = ()

    @property
    def ours(self) -> bool:
        return self.kind == "wireguard" and self.alias == ALIAS

    def peer(self, public_key: bytes) -> PeerState | None:
        return next((p for p in self.peers if p.peer.public_key == public_key), None)


@dataclass(frozen=True)
class CreateDevice:
    pass


@dataclass(frozen=True)
class SetDevice:
    private_key: bytes = field(repr=False)
    port: int


@dataclass(frozen=True)
class SetLink:
    mtu: int
    address: str  # added when missing (others of ours in the prefix go)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class SetPeer:
    peer: WgPeer


@dataclass(frozen=True)
class RemovePeer:
    public_key: bytes


@dataclass(frozen=True)
class DeleteDevice:
    pass


WgOp = CreateDevice | SetDevice | SetLink | SetPeer | RemovePeer | DeleteDevice


def plan(
    desired: WgDevice, observed: WgObserved, keep: Iterable[str] = (), now: float = 0.0
) -> tuple[list[WgOp], list[WgOp]]:
    """(what goes first: the device and the wanted peers; what goes last: peers neither wanted nor kept).
    `keep`: allowed addresses whose peers stay though not wanted (an FDB entry still sends to them: a departed
    peer's, retained, or one adopted at a restart). A link named DEVICE that is not ours is never touched (the
    caller reports it). `now` (Unix time): a peer whose endpoint WireGuard moved (it follows authenticated packets:
    NAT, another source address) keeps it while its handshake is fresh."""
    if observed.kind and not observed.ours:
        return [], []
    first: list[WgOp] = []
    fresh = not observed.kind
    if fresh:
        first.append(CreateDevice())
    if fresh or observed.private_key != desired.private_key or observed.port != desired.port:
        first.append(SetDevice(desired.private_key, desired.port))
    stale = tuple(a for a in observed.addresses if a != desired.address) if not fresh else ()
    if fresh or observed.mtu != desired.mtu or not observed.up or desired.address not in observed.addresses or stale:
        first.append(SetLink(desired.mtu, desired.address, stale))
    current = {} if fresh else {p.peer.public_key: p for p in observed.peers}
    for peer in sorted(desired.peers, key=lambda p: p.allowed):
        state = current.get(peer.public_key)
        have = state.peer if state is not None else None
        roamed = state is not None and 0 < now - state.handshake < FRESH
        if have is None or (have.allowed, have.preshared_key) != (peer.allowed, peer.preshared_key) or (
            (have.endpoint, have.port) != (peer.endpoint, peer.port) and not roamed):  # fmt: skip
            first.append(SetPeer(peer))
    wanted = {p.public_key for p in desired.peers}
    kept = set(keep)
    last: list[WgOp] = [
        RemovePeer(key)
        for key, have in sorted(current.items(), key=lambda kv: kv[1].peer.allowed)
        if key not in wanted and have.peer.allowed.split("/")[0] not in kept
    ]
    return first, last


def describe(op: WgOp) -> str:
    """For the log and errors: never a key."""
    if isinstance(op, SetPeer):
        return f"SetPeer({_short(op.peer.public_key)} at {op.peer.endpoint}:{op.peer.port} for {op.peer.allowed})"
    if isinstance(op, RemovePeer):
        return f"RemovePeer({_short(op.public_key)})"
    if isinstance(op, SetDevice):
        return f"SetDevice(port {op.port})"
    return repr(op)


def _short(key: bytes) -> str:
    return base64.b64encode(key).decode()[:8] + "…"
