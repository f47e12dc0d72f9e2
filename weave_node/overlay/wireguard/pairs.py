"""WireGuard's pairs (pure): which peers' public keys we know, for which connection, and what to send.

Each side sends KEY (its public key, for the connection's keys) when a connection appears, asking for the peer's;
a KEY that asks is answered; one is sent again every RESEND seconds while the peer's is unknown. A KEY for other
connection keys (an older connection, or a forged one) is ignored: a public key is only ever taken over the
connection whose handshake proved the password. A peer's public key is forgotten when its connection changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from weave_node.datapath.wireguard import PORT, WgPeer
from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.wireguard import keys, wire

RESEND = 2.0  # seconds between KEYs while the peer's key is unknown
Send = tuple[int, bytes]


@dataclass(frozen=True)
class Link:
    """A connection that may carry WireGuard: the peer's underlay address (its endpoint) and the connection's keys."""

    endpoint: str
    keys: SessionKeys = field(repr=False)

    @property
    def session(self) -> bytes:
        return keys.session_id(self.keys)


@dataclass
class WgPairs:
    public_key: bytes
    port: int = PORT
    links: dict[int, Link] = field(default_factory=dict)
    theirs: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # peer -> (session, its public key)
    sent: dict[int, float] = field(default_factory=dict)  # peer -> when we last asked for its key
    ignored: int = 0  # KEYs for a connection that is not (or no longer) the peer's
    version: int = 0  # raised whenever desired() may have changed

    def set_links(self, now: float, links: Mapping[int, Link]) -> list[Send]:
        sends: list[Send] = []
        for name in list(self.links):
            if name not in links or links[name].session != self.links[name].session:
                self.theirs.pop(name, None)
                self.sent.pop(name, None)
                self.version += 1
        for name, link in sorted(links.items()):
            if self.links.get(name) != link:
                self.version += 1
            if name not in self.theirs and name not in self.sent:
                sends.append(self._key(name, link, reply=True))
                self.sent[name] = now
        self.links = dict(links)
        return sends

    def on_message(self, now: float, src: int, data: bytes) -> list[Send]:
        """Raises ProtocolError for garbage (the caller counts and drops it)."""
        message = wire.decode(data)
        link = self.links.get(src)
        taken = {key for name, (_, key) in self.theirs.items() if name != src} | {self.public_key}
        if link is None or message.session != link.session or message.public_key in taken:
            self.ignored += 1  # (a key that is ours or another peer's would merge two peers in the kernel)
            return []
        if self.theirs.get(src) != (message.session, message.public_key):
            self.theirs[src] = (message.session, message.public_key)
            self.version += 1
        self.sent.pop(src, None)
        return [self._key(src, link, reply=False)] if message.reply else []

    def tick(self, now: float) -> list[Send]:
        sends = []
        for name, link in sorted(self.links.items()):
            if name not in self.theirs and now - self.sent.get(name, -RESEND) >= RESEND:
                sends.append(self._key(name, link, reply=True))
                self.sent[name] = now
        return sends

    def keyed(self, name: int) -> bool:
        link = self.links.get(name)
        return link is not None and self.theirs.get(name, (b"",))[0] == link.session

    def peers(self) -> frozenset[WgPeer]:
        """The kernel's peers we want: one per link whose peer's key we know."""
        out = set()
        for name, link in self.links.items():
            if self.keyed(name):
                out.add(WgPeer(self.theirs[name][1], link.endpoint, f"{keys.address(name)}/128",
                               keys.preshared_key(link.keys), self.port))  # fmt: skip
        return frozenset(out)

    def _key(self, name: int, link: Link, *, reply: bool) -> Send:
        return name, wire.encode(wire.Key(link.session, self.public_key, reply))
