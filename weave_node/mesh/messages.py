"""The router's messages on established connections (shell): the one boundary every received message passes
(`_dispatch`, see router.py), the gossip channels' sending and receiving, and the gossip core's effects turned
into sends, closes and dials. A base of `Router`: the state it uses is the router's."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from weave_node.core.address import PeerAddress
from weave_node.core.clock import Clock
from weave_node.core.ratelimit import RateLimitedLog
from weave_node.mesh import gossip
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.node import DUPLICATE, Changed, Close, Dial, Effect, Node, SendDigest, SendRecords, SendStates
from weave_node.mesh.peer import format_name
from weave_node.mesh.peerconn import PeerConn
from weave_node.mesh.protocol import Identity
from weave_node.mesh.topology import decode_records, encode_records

log = logging.getLogger("weave_node.router")


class Messages:
    """Sending and receiving on established connections; the router provides the state and the closing."""

    identity: Identity
    established: dict[int, PeerConn]
    clock: Clock
    node: Node[PeerConn]
    channels: dict[str, gossip.Gossiper]
    refused: Counter[str]
    message_errors: Counter[str]
    on_change: list[Callable[[], None]]
    rlog: RateLimitedLog

    def _drop(self, pc: PeerConn, reason: str) -> None:
        raise NotImplementedError

    def _flush(self, pc: PeerConn) -> None:
        raise NotImplementedError

    def _dial_soon(self, address: PeerAddress) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    # ---- effects of the gossip core ---------------------------------------------------------------------------

    def _perform(self, effects: list[Effect[PeerConn]]) -> None:
        for effect in effects:
            if isinstance(effect, SendRecords):
                env = gossip.Envelope(kind=gossip.KIND_TOPOLOGY, payload=encode_records(effect.records))
                for pc in effect.to:
                    self._send(pc, env)
            elif isinstance(effect, SendDigest):
                self._send(effect.to, gossip.encode_digest(effect.fingerprint, echo=effect.echo))
            elif isinstance(effect, SendStates):
                self._send_states(effect.to, effect.channel)
            elif isinstance(effect, Close):
                if effect.refused:
                    self.refused[effect.refused] += 1
                self._drop(effect.key, effect.reason)
                if effect.reason == DUPLICATE:  # superseded, whatever else went wrong with it before
                    effect.key.failure = DUPLICATE
            elif isinstance(effect, Dial):
                self._dial_soon(effect.address)
            elif isinstance(effect, Changed):
                self._changed(effect)

    def _changed(self, effect: Changed) -> None:
        for name, nickname in effect.left:
            log.info("peer %s(%s) left the topology", format_name(name), nickname)
        if effect.learned:
            self._wake()
        for callback in self.on_change:
            try:
                callback()
            except Exception:  # a subscriber's bug must not cut the others (or the connection that brought it) off
                self.rlog.log(logging.ERROR, "mesh.on-change-error", "topology subscriber failed", exc_info=True)

    def _send_states(self, pc: PeerConn, only: str) -> None:
        """Each gossip channel's whole state (a channel that fails to produce it is logged and skipped)."""
        for name, gossiper in self.channels.items():
            if only and name != only:
                continue
            try:
                state = gossiper.gossip_state()
            except Exception:
                log.exception("gossip channel %s failed to produce its state", name)
                continue
            if state:
                self._send(pc, gossip.Envelope(kind=gossip.KIND_GOSSIP, channel=name, payload=state))

    # ---- messages -----------------------------------------------------------------------------------------

    def _send(self, pc: PeerConn, env: gossip.Envelope) -> None:
        if pc.conn.state != "established":
            return
        data = gossip.encode(env)
        if len(data) > pc.conn.max_message_size:
            self.message_errors["too_big_to_send"] += 1
            self.rlog.log(
                logging.ERROR, "mesh.too-big", "%s message of kind %d (%d bytes) not sent: over the limit of %d",
                pc.label, env.kind, len(data), pc.conn.max_message_size,
            )  # fmt: skip
            return
        pc.conn.send_message(data, self.clock.now())
        self._flush(pc)

    def _dispatch(self, pc: PeerConn, payload: bytes) -> None:
        """The boundary every received message passes: nothing raised below gets past it (see the module doc)."""
        try:
            self._message(pc, payload)
        except ProtocolError as exc:
            self.message_errors["bad_message"] += 1
            self._drop(pc, f"bad message: {exc}")
        except Exception as exc:
            self.message_errors["internal_error"] += 1
            self.rlog.log(logging.ERROR, "mesh.internal-error", "%s message handling failed", pc.label, exc_info=True)
            self._drop(pc, f"internal error: {exc!r}")

    def _to_channel(self, pc: PeerConn, channel: str, call: Callable[[], bytes | None]) -> bytes | None:
        """A gossip channel's handler; what it raises drops this message only (gossip.Gossiper's contract)."""
        try:
            return call()
        except ProtocolError as exc:
            self.message_errors["channel_rejected"] += 1
            self.rlog.log(
                logging.WARNING, "mesh.channel-rejected", "%s message on channel %s dropped: %s", pc.label, channel, exc
            )
        except Exception:
            self.message_errors["channel_error"] += 1
            self.rlog.log(
                logging.ERROR, "mesh.channel-error", "%s channel %s failed on a message", pc.label, channel,
                exc_info=True,
            )  # fmt: skip
        return None

    def _message(self, pc: PeerConn, payload: bytes) -> None:
        env = gossip.decode(payload)
        if env.kind == gossip.KIND_TOPOLOGY:
            self._perform(self.node.on_topology(pc, decode_records(env.payload)))
            return
        if env.kind == gossip.KIND_DIGEST:
            self._perform(self.node.on_digest(pc, *gossip.decode_digest(env)))
            return
        gossiper = self.channels.get(env.channel)
        if env.kind == gossip.KIND_GOSSIP:
            self._channel_gossip(pc, env, gossiper)
        elif env.kind == gossip.KIND_UNICAST:
            if env.dst == self.identity.name:
                if gossiper is not None:
                    self._to_channel(pc, env.channel, lambda: gossiper.on_unicast(env.src, env.payload))
            else:
                self._relay_unicast(env)
        elif env.kind == gossip.KIND_BROADCAST:
            if gossiper is not None and env.src != self.identity.name:
                self._to_channel(pc, env.channel, lambda: gossiper.on_broadcast(env.src, env.payload))
            self._forward_broadcast(env)

    def _channel_gossip(self, pc: PeerConn, env: gossip.Envelope, gossiper: gossip.Gossiper | None) -> None:
        if gossiper is None or pc.name is None:
            return
        src = pc.name
        delta = self._to_channel(pc, env.channel, lambda: gossiper.on_gossip(src, env.payload))
        if delta:
            out = gossip.Envelope(kind=gossip.KIND_GOSSIP, channel=env.channel, payload=delta)
            for other in self.node.neighbours_except(pc):
                self._send(other, out)

    def _relay_unicast(self, env: gossip.Envelope) -> bool:
        pc = self.node.next_hop(env.dst)
        if pc is None:
            log.debug("unicast on %s to %s dropped: no route", env.channel, format_name(env.dst))
            return False
        self._send(pc, env)
        return True

    def _forward_broadcast(self, env: gossip.Envelope) -> None:
        for pc in self.node.broadcast_hops(env.src):
            self._send(pc, env)

    # ---- gossip.Sender ------------------------------------------------------------------------------------

    def send_gossip(self, channel: str, data: bytes) -> None:
        env = gossip.Envelope(kind=gossip.KIND_GOSSIP, channel=channel, payload=data)
        for pc in list(self.established.values()):
            self._send(pc, env)

    def send_unicast(self, channel: str, dst: int, data: bytes) -> bool:
        env = gossip.Envelope(kind=gossip.KIND_UNICAST, channel=channel, src=self.identity.name, dst=dst, payload=data)
        return self._relay_unicast(env)

    def send_broadcast(self, channel: str, data: bytes) -> None:
        self._forward_broadcast(
            gossip.Envelope(kind=gossip.KIND_BROADCAST, channel=channel, src=self.identity.name, payload=data)
        )
