"""The DNS server on the bridge's address (UDP and TCP), and the forwarder to the host's resolvers (shell).

It binds the bridge's address only, never the underlay's or a wildcard: pods (and the host) reach it, the
underlay does not. The sockets bind with IP_FREEBIND, so they are open before the address is on the bridge, and
follow it when IPAM gives the bridge another. What a flood can take is bounded: MAX_FORWARDS queries in flight
upstream (more are dropped: a client retries), MAX_TCP connections with an idle timeout, one query in flight
per connection, and 64 KiB per TCP message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, cast

from weave_node.core.ratelimit import LogLimiter, RateLimitedLog
from weave_node.dns import answer
from weave_node.dns.limit import QueryLimit
from weave_node.dns.settings import DnsSettings, nameservers

log = logging.getLogger("weave_node.dns")
MAX_FORWARDS = 256
MAX_TCP = 64
CACHE_SIZE = 4096  # answers kept (~7 MiB at most: queries up to 512 bytes, answers up to 1232)
TCP_IDLE = 10.0
UPSTREAM_TIMEOUT = 2.0
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_LEN = struct.Struct(">H")


class Upstreams:
    """The resolvers to forward to: the configured ones, or the resolv.conf's (read again when it changes)."""

    def __init__(self, settings: DnsSettings) -> None:
        self.given = list(settings.upstreams)
        self.path = Path(settings.resolv_conf)
        self.exclude: set[str] = set()
        self._seen: tuple[int, int, int] | None = None
        self._found: list[tuple[str, int]] = []

    def current(self) -> list[tuple[str, int]]:
        if self.given:
            return [u for u in self.given if u[0] not in self.exclude]
        try:
            st = self.path.stat()
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                self._found = nameservers(self.path.read_text(errors="replace"))
                self._seen = seen
                log.info("DNS: upstream resolvers from %s: %s", self.path,
                         " ".join(a for a, _ in self._found) or "none")  # fmt: skip
        except OSError as exc:
            if self._seen is not None or self._found:
                log.warning("DNS: %s: %s (no upstream resolvers)", self.path, exc.strerror)
            self._found, self._seen = [], None
        return [u for u in self._found if u[0] not in self.exclude]


class DnsServer:
    def __init__(
        self,
        settings: DnsSettings,
        zone: answer.Zone,
        generation: Callable[[], int] = lambda: 0,
        devices: tuple[str, ...] = ("weave", "lo"),
    ) -> None:
        self.settings = settings
        self.devices = devices
        self.zone = zone
        self.generation = generation
        self._generation = -1
        self._cache: dict[tuple[tuple[bool, bytes], int], tuple[str, bytes]] = {}
        self._turns: dict[tuple[bool, bytes], int] = {}
        self.upstreams = Upstreams(settings)
        self.address: str | None = None
        self.problem: str | None = None
        self.counters: Counter[str] = Counter()
        self._turn = 0
        self.limit = QueryLimit(settings.client_rate)
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._forwards = asyncio.Semaphore(MAX_FORWARDS)
        self._connections: set[asyncio.StreamWriter] = set()
        self.rlog = RateLimitedLog(log, LogLimiter(), time.monotonic)
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- binding ------------------------------------------------------------------------------------------

    async def bind(self, address: str) -> None:
        """Serve on `address` (the bridge's), closing what served another. A failure (port taken) is kept in
        `problem` and logged; the router runs on without DNS."""
        if address == self.address and self.problem is None:
            return
        await self._close()
        self.address, self.upstreams.exclude = address, {address}
        loop = asyncio.get_running_loop()
        try:
            for device in self.devices:  # the bridge (pods) and lo (the host itself): never the underlay
                with _closed_on_error(_socket(address, self.settings.port, socket.SOCK_DGRAM, device)) as sock:
                    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
                self._udp.append(udp)
                with _closed_on_error(_socket(address, self.settings.port, socket.SOCK_STREAM, device)) as sock:
                    tcp = await asyncio.start_server(self._tcp_client, sock=sock, limit=answer.TCP_SIZE + 2)
                self._tcp.append(tcp)
        except OSError as exc:
            await self._close()
            if exc.errno == errno.ENODEV:  # the bridge is not there yet (IPAM is quicker than the datapath)
                self.address = None  # (the caller tries again in a moment)
                return
            self.problem = f"cannot serve DNS on {address} port {self.settings.port}: {exc.strerror or exc}"
            log.error("DNS: %s", self.problem)
            return
        self.problem = None
        log.info("DNS: serving %s. on %s port %d (UDP and TCP)", self.settings.domain, address, self.settings.port)

    async def stop(self) -> None:
        await self._close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close(self) -> None:
        for udp in self._udp:
            udp.close()
        for writer in list(self._connections):  # (clients of the old address: their handlers end on their own)
            writer.close()
        for tcp in self._tcp:
            tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tcp.wait_closed(), 1.0)
        self._udp, self._tcp = [], []

    # ---- queries ------------------------------------------------------------------------------------------

    def handle(self, query: bytes, tcp: bool) -> answer.Reply | str | None:
        self.counters["queries"] += 1
        self._turn += 1
        key = (tcp, query[2:])
        cached = self._cached(key, query[:2])
        if cached is not None:
            return cached
        try:
            verdict = answer.respond(query, self.zone, tcp=tcp, turn=self._turn)
        except Exception:  # dnspython's or ours: never let one query take the server down
            self.counters["internal_error"] += 1
            self.rlog.log(logging.ERROR, "dns.internal-error", "DNS: a query failed", exc_info=True)
            return answer.Reply(answer.error_reply(query, 2), "error") if len(query) >= 12 else None
        if verdict is None:
            self.counters["dropped"] += 1
        elif isinstance(verdict, answer.Reply):
            self.counters[verdict.kind] += 1
        self._remember(key, verdict)
        return verdict

    # The answer to a query depends on its bytes after the id (flags, question, EDNS and its options), on the
    # transport, on the names (a generation that moves with every change) and on the turn of round-robin: so
    # answers are kept by (transport, those bytes, turn % the rotations the answer has), and given back with the
    # query's id. Parsing and writing with dnspython is most of a query's cost.

    def _cached(self, key: tuple[bool, bytes], ident: bytes) -> answer.Reply | str | None:
        if (generation := self.generation()) != self._generation:
            self._cache.clear()
            self._turns.clear()
            self._generation = generation
        turns = self._turns.get(key)
        hit = self._cache.get((key, self._turn % turns)) if turns else None
        if hit is None:
            return None
        kind, tail = hit
        if kind == answer.FORWARD:
            return answer.FORWARD
        self.counters[kind] += 1
        return answer.Reply(ident + tail, kind)

    def _remember(self, key: tuple[bool, bytes], verdict: answer.Reply | str | None) -> None:
        if len(self._cache) >= CACHE_SIZE:  # (a flood of distinct questions: start again)
            self._cache.clear()
            self._turns.clear()
        if verdict is None or len(key[1]) + 2 > answer.UDP_SIZE:
            return
        if isinstance(verdict, answer.Reply):
            if verdict.kind == "error" or len(verdict.wire) > answer.EDNS_SIZE:
                return
            self._turns[key] = verdict.turns
            self._cache[(key, self._turn % verdict.turns)] = (verdict.kind, verdict.wire[2:])
        else:
            self._turns[key] = 1
            self._cache[(key, 0)] = (answer.FORWARD, b"")

    def admit(self, client: str) -> bool:
        if self.limit.admit(client, time.monotonic()):
            return True
        self.counters["rate_limited"] += 1
        return False

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def forward(self, query: bytes, tcp: bool) -> bytes | None:
        """The upstream's answer as it sent it, SERVFAIL when none answered, None when too many are in flight."""
        if self._forwards.locked():
            self.counters["forward_dropped"] += 1
            return None
        async with self._forwards:
            self.counters["forwarded"] += 1
            for host, port in self.upstreams.current():
                try:
                    got = await asyncio.wait_for(
                        _tcp_exchange(host, port, query) if tcp else _udp_exchange(host, port, query),
                        UPSTREAM_TIMEOUT,
                    )
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    self.counters["upstream_failures"] += 1
                    continue
                if got is not None:
                    return got
            self.counters["forward_failed"] += 1
            return answer.servfail(query)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_TCP:
            self.counters["tcp_refused"] += 1
            writer.close()
            return
        self._connections.add(writer)
        client = str((writer.get_extra_info("peername") or ("?",))[0])
        try:
            while True:
                size = _LEN.unpack(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE))[0]
                query = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE)
                if not self.admit(client):
                    continue
                verdict = self.handle(query, tcp=True)
                if verdict is None:
                    break
                out = await self.forward(query, True) if verdict == answer.FORWARD else verdict
                if isinstance(out, answer.Reply):
                    out = out.wire
                if not isinstance(out, bytes):
                    break
                writer.write(_LEN.pack(len(out)) + out)
                await asyncio.wait_for(writer.drain(), TCP_IDLE)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    def status(self) -> dict[str, object]:
        return {
            "address": self.address,
            "port": self.settings.port,
            "domain": self.settings.domain,
            "upstreams": [f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in self.upstreams.current()],
            "problem": self.problem,
            "counters": dict(self.counters),
        }


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # (3.11's is not a subclass of it)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.server.admit(addr[0]):
            return
        verdict = self.server.handle(data, tcp=False)
        if isinstance(verdict, answer.Reply):
            self._send(verdict.wire, addr)
        elif verdict == answer.FORWARD:
            self.server.spawn(self._forward(data, addr))

    async def _forward(self, data: bytes, addr: tuple[str, int]) -> None:
        got = await self.server.forward(data, False)
        if got is not None:
            self._send(got, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


@contextlib.contextmanager
def _closed_on_error(sock: socket.socket) -> Iterator[socket.socket]:
    try:
        yield sock
    except BaseException:
        sock.close()
        raise


def _socket(address: str, port: int, kind: int, device: str) -> socket.socket:
    """Bound to `address` and to `device`: a packet for the address that came in on another interface (the
    underlay: a host there may well route the pod range to us) reaches no socket of ours."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # (both families: the kernel shares the flag)
        sock.setblocking(False)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, ident: bytes) -> None:
        self.ident = ident
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == self.ident and not self.done.done():  # (a connected socket: only the upstream's)
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _udp_exchange(host: str, port: int, query: bytes) -> bytes:
    """One query to one upstream from a fresh socket (a random port of the kernel's: no one can guess it to
    answer in the upstream's name)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: _Exchange(query[:2]), remote_addr=(host, port))
    try:
        transport.sendto(query)
        return await proto.done
    finally:
        transport.close()


async def _tcp_exchange(host: str, port: int, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_LEN.pack(len(query)) + query)
        await writer.drain()
        size = _LEN.unpack(await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.close()
