"""The router's asyncio shell: it moves bytes between TCP sockets and the pure cores, and time into them.

Pure cores it drives: protocol.Connection (one per TCP connection: framing, handshake, crypto, heartbeats),
topology.Topology (the peers CRDT), routes (next hops, broadcast trees), connector.Connector (whom to dial),
gossip envelopes (channels for other subsystems). State changes happen in one task at a time (asyncio), so no
locks; nothing here decides protocol behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from weave_node.config import PeerAddress, RouterConfig, parse_peer
from weave_node.core.clock import Clock, MonotonicClock
from weave_node.core.errors import ConfigError
from weave_node.mesh import gossip
from weave_node.mesh.connector import Connector
from weave_node.mesh.errors import ProtocolError
from weave_node.mesh.peer import format_name
from weave_node.mesh.protocol import (
    Connection,
    ConnectionFailed,
    Established,
    Event,
    Identity,
    MessageReceived,
    ProtocolConfig,
)
from weave_node.mesh.routes import broadcast_next_hops, unicast_routes
from weave_node.mesh.topology import ConnectionInfo, PeerRecord, Topology, decode_records, encode_records

log = logging.getLogger("weave_node.router")
READ_SIZE = 256 * 1024
DIAL_TIMEOUT = 10.0


@dataclass(eq=False)
class PeerConn:
    """One TCP connection and its protocol state."""

    conn: Connection
    writer: asyncio.StreamWriter
    outbound: bool
    socket_addr: str  # the remote end as seen by the socket
    target: PeerAddress | None = None  # what we dialled (outbound only)
    established_at: float = 0.0
    failure: str = ""
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> int | None:
        """The remote peer, once the handshake is done."""
        remote = self.conn.remote
        return remote.identity.name if remote else None

    @property
    def nickname(self) -> str:
        remote = self.conn.remote
        return remote.identity.nickname if remote else ""

    @property
    def address(self) -> str:
        """What we dialled, or where an inbound connection came from."""
        return str(self.target) if self.target else self.socket_addr

    @property
    def label(self) -> str:
        who = f" {format_name(self.name)}({self.nickname})" if self.name is not None else ""
        return f"{'->' if self.outbound else '<-'}[{self.address}]{who}"


class Router:
    def __init__(
        self,
        config: RouterConfig,
        identity: Identity,
        protocol_config: ProtocolConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.protocol_config = protocol_config
        self.clock = clock or MonotonicClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter and gossip targets, not secrets
        self.topology = Topology(
            PeerRecord(name=identity.name, nickname=identity.nickname, uid=identity.uid, version=1, connections=())
        )
        self.connector = Connector(initial=config.peers, conn_limit=config.conn_limit, rng=self.rng)
        self.established: dict[int, PeerConn] = {}
        self.pending: set[PeerConn] = set()
        self.routes: dict[int, int] = {}
        self.channels: dict[str, gossip.Gossiper] = {}
        self.terminations = 0
        self.started_at = self.clock.now()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._next_gossip = 0.0
        self.listen_port = config.port
        self.on_change: list[Callable[[], None]] = []

    # ---- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, self.config.listen_host, self.config.port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.config.listen_host}:{self.config.port}: {exc.strerror}") from exc
        sock = self._server.sockets[0]
        self.listen_port = sock.getsockname()[1]
        log.info(
            "router %s(%s) listening on %s:%d, %d initial peer(s), connection limit %d, encryption %s",
            format_name(self.identity.name),
            self.identity.nickname,
            self.config.listen_host,
            self.listen_port,
            len(self.config.peers),
            self.config.conn_limit,
            "on" if self.protocol_config.password_key else "off",
        )
        self._spawn(self._maintain())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pc in [*self.established.values(), *self.pending]:
            pc.conn.close("router shutting down")
            pc.failure = "router shutting down"
            with contextlib.suppress(Exception):
                pc.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def register_channel(self, name: str, gossiper: gossip.Gossiper) -> gossip.GossipChannel:
        if name in self.channels:
            raise ValueError(f"gossip channel {name!r} is already registered")
        self.channels[name] = gossiper
        return gossip.GossipChannel(name=name, sender=self)

    # ---- runtime changes ----------------------------------------------------------------------------------

    def connect(self, address: str) -> PeerAddress:
        addr = parse_peer(address)
        self.connector.add(addr, "flag")
        self._wakeup.set()
        return addr

    def forget(self, address: str) -> bool:
        return self.connector.forget(parse_peer(address))

    # ---- the maintenance loop: dial, gossip, wake up at the next deadline -------------------------------------

    async def _maintain(self) -> None:
        while True:
            now = self.clock.now()
            connected = set(self.established)
            for addr in self.connector.due(now, connected, len(self.established)):
                self._spawn(self._dial(addr))
            if now >= self._next_gossip:
                self._periodic_gossip()
                self._next_gossip = now + self.config.gossip_interval
            deadline = min(d for d in (self.connector.next_deadline(), self._next_gossip) if d is not None)
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races a wake-up
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, deadline - self.clock.now())):
                    await self._wakeup.wait()

    async def _dial(self, addr: PeerAddress) -> None:
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                reader, writer = await asyncio.open_connection(addr.host, addr.port)
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            delay = self.connector.failed(addr, self.clock.now(), f"connect: {reason}")
            log.info("->[%s] connect failed: %s; retrying in %.1f s", addr, reason, delay)
            self._wakeup.set()
            return
        await self._serve(reader, writer, outbound=True, target=addr)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.established) + len(self.pending) >= self.config.conn_limit:
            log.warning("<-[%s] refused: too many connections", _peername(writer))
            writer.close()
            return
        await self._serve(reader, writer, outbound=False, target=None)

    # ---- one connection ---------------------------------------------------------------------------------

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, outbound: bool, target: PeerAddress | None
    ) -> None:
        now = self.clock.now()
        conn = Connection(self.identity, self.protocol_config, outbound=outbound, now=now)
        pc = PeerConn(conn=conn, writer=writer, outbound=outbound, socket_addr=_peername(writer), target=target)
        self.pending.add(pc)
        try:
            self._flush(pc)
            while conn.state != "closed":
                deadline = conn.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock.now())
                events: list[Event]
                try:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    events = conn.tick(self.clock.now())
                except OSError as exc:
                    conn.close(f"read: {exc.strerror or exc}")
                    events = [ConnectionFailed(f"read: {exc.strerror or exc}")]
                else:
                    now = self.clock.now()
                    if not data:
                        conn.close("connection closed by peer")
                        events = [ConnectionFailed("connection closed by peer")]
                    else:
                        events = conn.receive_data(data, now)
                        nd = conn.next_deadline()
                        if nd is not None and now >= nd:
                            events += conn.tick(now)
                for event in events:
                    self._handle(pc, event)
                self._flush(pc)
                if writer.transport.get_write_buffer_size() > 4 * READ_SIZE:
                    await writer.drain()
        finally:
            self._finish(pc)

    def _flush(self, pc: PeerConn) -> None:
        data = pc.conn.data_to_send()
        if data and not pc.writer.is_closing():
            pc.writer.write(data)

    def _handle(self, pc: PeerConn, event: Event) -> None:
        if isinstance(event, Established):
            self._established(pc, event)
        elif isinstance(event, MessageReceived):
            try:
                self._message(pc, event.payload)
            except ProtocolError as exc:
                pc.conn.close(f"bad message: {exc}")
                pc.failure = f"bad message: {exc}"
        elif isinstance(event, ConnectionFailed):
            # The first cause stands: a connection closed as the loser of a duplicate is then also closed by
            # the peer (which resolved it the same way), and that must not read as a failure to retry.
            pc.failure = pc.failure or event.reason

    def _established(self, pc: PeerConn, event: Established) -> None:
        remote = event.remote.identity
        pc.established_at = self.clock.now()
        existing = self.established.get(remote.name)
        if existing is not None:
            keep_new = existing.conn.remote is not None and existing.conn.remote.identity.uid != remote.uid
            if not keep_new:
                # Both sides keep the connection initiated by the peer with the greater name.
                def initiator(c: PeerConn) -> int:
                    return self.identity.name if c.outbound else remote.name

                keep_new = initiator(pc) > initiator(existing) or (
                    initiator(pc) == initiator(existing) and pc.established_at > existing.established_at
                )
            loser = existing if keep_new else pc
            loser.conn.close("duplicate connection")
            loser.failure = "duplicate connection"
            with contextlib.suppress(Exception):
                loser.writer.close()
            if not keep_new:
                return
            self.established.pop(remote.name, None)
        self.pending.discard(pc)
        self.established[remote.name] = pc
        if pc.target is not None:
            self.connector.succeeded(pc.target, remote.name)
        log.info("%s connection established (protocol v%d)", pc.label, event.remote.version)
        self._local_connections_changed()
        # Compare fingerprints with the new neighbour: full topologies cross only when they differ.
        self._send(pc, gossip.encode_digest(self.topology.fingerprint(), echo=True))

    def _finish(self, pc: PeerConn) -> None:
        self.pending.discard(pc)
        reason = pc.failure or "closed"
        with contextlib.suppress(Exception):
            pc.writer.close()
        if pc.name is not None and self.established.get(pc.name) is pc:
            del self.established[pc.name]
            self.terminations += 1
            log.info("%s connection shut down: %s", pc.label, reason)
            self._local_connections_changed()
        elif reason != "duplicate connection":
            log.info("%s connection failed: %s", pc.label, reason)
        if pc.target is not None and reason != "duplicate connection":
            delay = self.connector.disconnected(pc.target, self.clock.now(), reason)
            log.debug("->[%s] next attempt in %.1f s", pc.target, delay)
        elif pc.target is not None:
            t = self.connector.targets.get(pc.target)
            if t is not None:  # idle: skipped while its peer is connected by the other connection, dialled after
                t.state, t.peer, t.last_error = "idle", pc.name if pc.name is not None else t.peer, ""
        self._wakeup.set()

    # ---- topology -------------------------------------------------------------------------------------------

    def _all_records(self) -> list[PeerRecord]:
        return list(self.topology.records.values())

    def _local_connections_changed(self) -> None:
        conns = [
            ConnectionInfo(peer=name, address=pc.address, outbound=pc.outbound, established=True)
            for name, pc in sorted(self.established.items())
        ]
        if self.topology.set_local_connections(conns):
            self._topology_changed({self.identity.name}, exclude=None)

    def _topology_changed(self, improved: set[int], exclude: PeerConn | None) -> None:
        records = [self.topology.records[n] for n in sorted(improved) if n in self.topology.records]
        nicknames = {n: r.nickname for n, r in self.topology.records.items()}
        for name in sorted(self.topology.gc()):
            log.info("peer %s(%s) left the topology", format_name(name), nicknames.get(name, "?"))
        if records:
            env = gossip.Envelope(kind=gossip.KIND_TOPOLOGY, payload=encode_records(records))
            for pc in list(self.established.values()):
                if pc is not exclude:
                    self._send(pc, env)
        self.routes = unicast_routes(self.topology.records, self.identity.name)
        self._learn_targets()
        for callback in self.on_change:
            callback()

    def _learn_targets(self) -> None:
        keep: set[PeerAddress] = set()
        for record in self.topology.records.values():
            if record.name == self.identity.name:
                continue
            for c in record.connections:
                if c.outbound and c.established and c.peer != self.identity.name and c.address:
                    try:
                        addr = parse_peer(c.address)
                    except ConfigError:
                        continue
                    keep.add(addr)
                    if self.connector.add(addr, "learned", peer=c.peer):
                        self._wakeup.set()
        self.connector.forget_learned_except(keep)

    def _periodic_gossip(self) -> None:
        if not self.established:
            return
        peers = list(self.established.values())
        # Anti-entropy: 9 bytes to one random neighbour; full topologies cross only when the fingerprints differ.
        self._send(self.rng.choice(peers), gossip.encode_digest(self.topology.fingerprint(), echo=True))
        for name, gossiper in self.channels.items():
            try:
                state = gossiper.gossip_state()
            except Exception:
                log.exception("gossip channel %s failed to produce its state", name)
                continue
            if state:
                self._send(
                    self.rng.choice(peers), gossip.Envelope(kind=gossip.KIND_GOSSIP, channel=name, payload=state)
                )

    # ---- messages -----------------------------------------------------------------------------------------

    def _send(self, pc: PeerConn, env: gossip.Envelope) -> None:
        if pc.conn.state != "established":
            return
        pc.conn.send_message(gossip.encode(env), self.clock.now())
        self._flush(pc)

    def _message(self, pc: PeerConn, payload: bytes) -> None:
        env = gossip.decode(payload)
        if env.kind == gossip.KIND_TOPOLOGY:
            improved = self.topology.merge(decode_records(env.payload))
            if improved:
                self._topology_changed(improved, exclude=pc)
            return
        if env.kind == gossip.KIND_DIGEST:
            theirs, echo = gossip.decode_digest(env)
            ours = self.topology.fingerprint()
            if theirs != ours:
                self._send(pc, gossip.Envelope(kind=gossip.KIND_TOPOLOGY, payload=encode_records(self._all_records())))
                if echo:  # so they send what we lack; a non-echo digest is never answered with a digest
                    self._send(pc, gossip.encode_digest(ours, echo=False))
            return
        gossiper = self.channels.get(env.channel)
        if env.kind == gossip.KIND_GOSSIP:
            self._channel_gossip(pc, env, gossiper)
        elif env.kind == gossip.KIND_UNICAST:
            if env.dst == self.identity.name:
                if gossiper is not None:
                    gossiper.on_unicast(env.src, env.payload)
            else:
                self._relay_unicast(env)
        elif env.kind == gossip.KIND_BROADCAST:
            if gossiper is not None and env.src != self.identity.name:
                gossiper.on_broadcast(env.src, env.payload)
            self._forward_broadcast(env)

    def _channel_gossip(self, pc: PeerConn, env: gossip.Envelope, gossiper: gossip.Gossiper | None) -> None:
        if gossiper is None or pc.name is None:
            return
        delta = gossiper.on_gossip(pc.name, env.payload)
        if delta:
            out = gossip.Envelope(kind=gossip.KIND_GOSSIP, channel=env.channel, payload=delta)
            for other in list(self.established.values()):
                if other is not pc:
                    self._send(other, out)

    def _relay_unicast(self, env: gossip.Envelope) -> bool:
        hop = self.routes.get(env.dst)
        pc = self.established.get(hop) if hop is not None else None
        if pc is None:
            log.debug("unicast on %s to %s dropped: no route", env.channel, format_name(env.dst))
            return False
        self._send(pc, env)
        return True

    def _forward_broadcast(self, env: gossip.Envelope) -> None:
        for hop in broadcast_next_hops(self.topology.records, env.src, self.identity.name):
            pc = self.established.get(hop)
            if pc is not None:
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


def _peername(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)
