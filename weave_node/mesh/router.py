"""The router's asyncio shell: it moves bytes between TCP sockets and the pure cores, and time into them.

Pure cores it drives: protocol.Connection (one per TCP connection: framing, handshake, crypto, heartbeats),
node.Node (the gossip core: topology CRDT, duplicates, the connection limit, anti-entropy, whom to dial, routes;
the simulation runs the same one), gossip envelopes (channels for other subsystems), admission (which inbound
connections may start a handshake). messages.py holds the sending and receiving on established connections.
State changes happen in one task at a time (asyncio), so no locks; nothing here decides protocol behaviour.

Hostile input costs at most one connection: every received message is dispatched inside one boundary
(`_dispatch`): a ProtocolError closes that connection, an error of a gossip channel's handler drops that message
only, and anything unexpected closes the connection; each is counted (`message_errors`) and logged through a
rate limiter, so that no connection task ever dies with an exception and no peer can flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from weave_node.core.address import PeerAddress, parse_peer
from weave_node.core.clock import Clock, MonotonicClock
from weave_node.core.ratelimit import LogLimiter, RateLimitedLog
from weave_node.mesh import admission, gossip, listen
from weave_node.mesh.connector import Connector
from weave_node.mesh.messages import Messages
from weave_node.mesh.neighbours import Neighbour, socket_host
from weave_node.mesh.node import DUPLICATE, PASSWORD_CHANGED, Link, Node
from weave_node.mesh.peer import format_name
from weave_node.mesh.peerconn import PeerConn, peerhost, peername
from weave_node.mesh.protocol import (
    OURSELF,
    Connection,
    ConnectionFailed,
    Established,
    Event,
    Identity,
    MessageReceived,
    ProtocolConfig,
)
from weave_node.mesh.settings import MeshSettings
from weave_node.mesh.topology import PeerRecord, Topology

__all__ = ["PeerConn", "Router"]

log = logging.getLogger("weave_node.router")
READ_SIZE = 256 * 1024
DIAL_TIMEOUT = 10.0


class Router(Messages):
    def __init__(
        self,
        config: MeshSettings,
        identity: Identity,
        protocol_config: ProtocolConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        admission_limits: admission.Limits | None = None,
        log_limiter: LogLimiter | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.protocol_config = protocol_config
        self.clock = clock or MonotonicClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter and gossip targets, not secrets
        self.node: Node[PeerConn] = Node(
            PeerRecord(name=identity.name, nickname=identity.nickname, uid=identity.uid, version=1, connections=()),
            conn_limit=config.conn_limit,
            gossip_interval=config.gossip_interval,
            rng=self.rng,
            initial=config.peers,
        )
        self.established: dict[int, PeerConn] = {}
        self.pending: set[PeerConn] = set()
        self.admission = admission_limits or admission.Limits()
        self.handshaking: dict[PeerConn, admission.Pending] = {}  # inbound connections still in their handshake
        self.refused: Counter[str] = Counter()  # inbound connections refused or evicted, by reason
        self.message_errors: Counter[str] = Counter()  # received messages that failed, by outcome
        self.channels: dict[str, gossip.Gossiper] = {}
        self.terminations = 0
        self.started_at = self.clock.now()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self.listen_port = config.port
        self.on_change: list[Callable[[], None]] = []
        self.rlog = RateLimitedLog(log, log_limiter or LogLimiter(), self.clock.now)

    # ---- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._servers = await listen.listen(self._accept, self.config.listen_host, self.config.port)
        self.listen_port = self._servers[0].sockets[0].getsockname()[1]
        log.info(
            "router %s(%s) listening on %s:%d, %d initial peer(s), connection limit %d (handshakes: %d, %d per "
            "address, %g s), encryption %s",
            format_name(self.identity.name),
            self.identity.nickname,
            self.config.listen_host,
            self.listen_port,
            len(self.config.peers),
            self.config.conn_limit,
            self.admission.total,
            self.admission.per_source,
            self.protocol_config.handshake_timeout,
            self.protocol_config.encryption,
        )
        self._spawn(self._maintain())

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for pc in [*self.established.values(), *self.pending]:
            pc.conn.close("router shutting down")
            pc.failure = "router shutting down"
            with contextlib.suppress(Exception):
                pc.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await listen.close(self._servers)

    def _dial_soon(self, address: PeerAddress) -> None:
        self._spawn(self._dial(address))

    def _wake(self) -> None:
        self._wakeup.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def topology(self) -> Topology:
        return self.node.topology

    @property
    def connector(self) -> Connector:
        return self.node.connector

    @property
    def routes(self) -> dict[int, int]:
        return self.node.routes

    def neighbours(self) -> tuple[Neighbour, ...]:
        """Our established connections, as values (addresses, features, sleeve keys)."""
        return tuple(n for n in map(self.neighbour, sorted(self.established)) if n is not None)

    def neighbour(self, name: int) -> Neighbour | None:
        pc = self.established.get(name)
        remote = pc.conn.remote if pc is not None else None
        if pc is None or remote is None:
            return None
        remote_host = socket_host(pc.writer.get_extra_info("peername"))
        local_host = socket_host(pc.writer.get_extra_info("sockname"))
        return Neighbour(
            name, remote_host, local_host, remote.features, pc.conn.sleeve_keys, remote.encrypted, remote.peer_password
        )

    def register_channel(self, name: str, gossiper: gossip.Gossiper) -> gossip.GossipChannel:
        if name in self.channels:
            raise ValueError(f"gossip channel {name!r} is already registered")
        self.channels[name] = gossiper
        self.node.channels.append(name)
        return gossip.GossipChannel(name=name, sender=self)

    # ---- runtime changes ----------------------------------------------------------------------------------

    def connect(self, address: str) -> PeerAddress:
        addr = parse_peer(address)
        self.connector.add(addr, "flag")
        self._wakeup.set()
        return addr

    def forget(self, address: str) -> bool:
        return self.node.forget(parse_peer(address))

    def set_protocol_config(self, config: ProtocolConfig) -> int:
        """New protocol settings (a step of a password rotation): new connections, inbound and outbound, use them
        at once; every connection whose password they no longer accept (`Connection.accepted_by`) is closed
        ("password changed") and dialled again as after any close. Returns how many were closed."""
        self.protocol_config = config
        conns = dict.fromkeys([*self.established.values(), *self.pending])
        closed = [pc for pc in conns if pc.conn.state != "closed" and not pc.conn.accepted_by(config)]
        for pc in closed:
            self._drop(pc, PASSWORD_CHANGED)
        self._wakeup.set()  # dialled again at once
        log.info(
            "password settings changed (encryption %s): %d connection(s) closed, to be re-established with them",
            config.encryption,
            len(closed),
        )
        return len(closed)

    def replace_peers(self, addresses: tuple[PeerAddress, ...]) -> tuple[list[PeerAddress], list[PeerAddress]]:
        """The configured peer list, replaced at run time (`weave-node reload`): (added, dropped)."""
        added, dropped = self.node.replace_peers(addresses)
        if added or dropped:
            log.info("peer list changed: added %s; no longer configured %s", _listed(added), _listed(dropped))
        self._wakeup.set()
        return added, dropped

    # ---- the maintenance loop: dial, gossip, wake up at the next deadline -------------------------------------

    async def _maintain(self) -> None:
        while True:
            try:
                deadline = self._maintain_step()
            except Exception:  # this loop dials and gossips: it must survive anything
                self.rlog.log(logging.ERROR, "mesh.maintain-error", "mesh maintenance failed", exc_info=True)
                deadline = self.clock.now() + 1.0
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races a wake-up
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, deadline - self.clock.now())):
                    await self._wakeup.wait()

    def _maintain_step(self) -> float:
        """Dial what is due, gossip when it is time, write due log summaries; returns when to run again."""
        self._perform(self.node.tick(self.clock.now()))
        self.rlog.flush()
        logs = self.rlog.next_deadline()
        return self.node.next_deadline() if logs is None else min(logs, self.node.next_deadline())

    async def _dial(self, addr: PeerAddress) -> None:
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                reader, writer = await asyncio.open_connection(addr.host, addr.port)
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a learned host name IDNA cannot encode
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            delay = self.node.dial_failed(addr, self.clock.now(), f"connect: {reason}")
            log.info("->[%s] connect failed: %s; retrying in %.1f s", addr, reason, delay)
            self._wakeup.set()
            return
        await self._serve(reader, writer, outbound=True, target=addr)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Unauthenticated connections have limits of their own (admission.py); CONN_LIMIT counts established ones.
        source = admission.source_of(peerhost(writer))
        verdict = admission.admit(self.handshaking, source, self.admission)
        if not verdict.admit:
            self.refused[verdict.code] += 1
            self.rlog.log(logging.WARNING, "mesh.refused", "<-[%s] refused: %s", peername(writer), verdict.reason)
            writer.close()
            return
        if verdict.evict is not None:  # every slot taken, most of them by the victim's address: it makes room
            self.refused["evicted"] += 1
            self._drop(verdict.evict, f"evicted: {len(self.handshaking)} handshakes in progress, most from its address")
        await self._serve(reader, writer, outbound=False, target=None, source=source)

    # ---- one connection ---------------------------------------------------------------------------------

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        outbound: bool,
        target: PeerAddress | None,
        source: str | None = None,
    ) -> None:
        now = self.clock.now()
        conn = Connection(self.identity, self.protocol_config, outbound=outbound, now=now)
        pc = PeerConn(conn=conn, writer=writer, outbound=outbound, socket_addr=peername(writer), target=target)
        self.pending.add(pc)
        if source is not None:
            self.handshaking[pc] = admission.Pending(source, now)
        try:
            await self._run(pc, reader)
        except Exception as exc:  # a bug costs this connection, never a task dying with its exception unseen
            self.message_errors["internal_error"] += 1
            self.rlog.log(logging.ERROR, "mesh.internal-error", "%s internal error", pc.label, exc_info=True)
            self._drop(pc, f"internal error: {exc!r}")
        finally:
            self._finish(pc)

    async def _run(self, pc: PeerConn, reader: asyncio.StreamReader) -> None:
        conn, writer = pc.conn, pc.writer
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
                try:
                    await writer.drain()
                except OSError as exc:
                    self._drop(pc, f"write: {exc.strerror or exc}")

    def _flush(self, pc: PeerConn) -> None:
        data = pc.conn.data_to_send()
        if data and not pc.writer.is_closing():
            pc.writer.write(data)

    def _drop(self, pc: PeerConn, reason: str) -> None:
        """Close a connection from our side; its task then ends (and `_finish` says why)."""
        pc.conn.close(reason)
        pc.failure = pc.failure or reason
        self.pending.discard(pc)  # (no longer shown, nor counted, as handshaking)
        self.handshaking.pop(pc, None)
        with contextlib.suppress(Exception):
            pc.writer.close()

    def _handle(self, pc: PeerConn, event: Event) -> None:
        if isinstance(event, Established):
            self._established(pc, event)
        elif isinstance(event, MessageReceived):
            # Not from a connection refused over the limit. One closed as the loser of a duplicate is the same
            # authenticated peer: what it sent before it learnt so (its first gossip, often) still counts.
            if pc.conn.state == "established" or pc.failure == "duplicate connection":
                self._dispatch(pc, event.payload)
        elif isinstance(event, ConnectionFailed):
            # The first cause stands: a connection closed as the loser of a duplicate is then also closed by
            # the peer (which resolved it the same way), and that must not read as a failure to retry.
            pc.failure = pc.failure or event.reason

    def _established(self, pc: PeerConn, event: Established) -> None:
        remote = event.remote.identity
        pc.established_at = self.clock.now()
        self.handshaking.pop(pc, None)
        link = Link(pc, remote.name, remote.uid, pc.outbound, pc.address, pc.established_at, pc.target)
        effects = self.node.established(link)
        self._sync_established()
        if self.established.get(remote.name) is pc:
            self.pending.discard(pc)
            log.info("%s connection established (protocol v%d)", pc.label, event.remote.version)
        self._perform(effects)

    def _finish(self, pc: PeerConn) -> None:
        self.pending.discard(pc)
        self.handshaking.pop(pc, None)
        reason = pc.failure or "closed"
        with contextlib.suppress(Exception):
            pc.writer.close()
        was = pc.name is not None and self.established.get(pc.name) is pc
        if was:
            self.terminations += 1
            if reason.startswith("bad message"):  # a peer can repeat this at will: rate-limited
                self.rlog.log(logging.INFO, "mesh.bad-message", "%s connection shut down: %s", pc.label, reason)
            else:
                log.info("%s connection shut down: %s", pc.label, reason)
        elif reason not in (DUPLICATE, OURSELF):
            if pc.outbound:  # ours: paced by the connector's backoff
                log.info("%s connection failed: %s", pc.label, reason)
            else:  # anyone can open connections that fail, as often as they like: rate-limited
                self.rlog.log(logging.INFO, "mesh.inbound-failed", "%s connection failed: %s", pc.label, reason)
        effects, ended = self.node.lost(pc, pc.name, pc.target, reason, self.clock.now())
        self._sync_established()
        self._perform(effects)
        if ended.ourself:
            log.info("->[%s] is this router's own address: not dialled again", pc.target)
        elif ended.retry_in is not None:
            log.debug("->[%s] next attempt in %.1f s", pc.target, ended.retry_in)
        self._wakeup.set()

    def _sync_established(self) -> None:
        """`established` mirrors the core's links (the core decides which connection a peer has)."""
        self.established = {name: link.key for name, link in self.node.links.items()}


def _listed(addresses: list[PeerAddress]) -> str:
    return " ".join(map(str, addresses)) or "none"
