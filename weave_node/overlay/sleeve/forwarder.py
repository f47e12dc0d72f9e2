"""The sleeve forwarder: frames between the TAP on the `weave` bridge and UDP datagrams to other routers.

The shell around the pure codec (codec.py), run in one thread of its own (the hot path must not wait for the
asyncio loop). The overlay service decides *what* (`Config`: links, routes, which destinations use the sleeve) and
hands it over with `configure`; this thread does the I/O:

- TAP -> peers: one read per frame or TSO super-frame (IFF_VNET_HDR: the 10-byte virtio-net header travels with
  it, so the far kernel takes the super-frame as is); the destination MAC picks the peer (learned from received
  frames, like a bridge), broadcast/multicast/unknown go to every sleeve destination; each copy is packed into
  one buffer of equal-sized datagrams and sent with UDP GSO (one sendmsg per 64 KiB).
- peers -> TAP: recvmsg with UDP GRO (one syscall for many datagrams), open (authenticate, replay window) in
  place, reassemble, one write per frame. A segment for another peer is relayed to the next hop of the mesh's
  unicast route (re-sealed with that link's key, TTL one less).
- Probes on every link each `probe_interval`: PROBE datagrams with DF set, answered by PROBE_ACK; the largest
  size acked recently is the link's segment size ("effective MTU verified"), and a link with no ack for
  `link_timeout` is down (the overlay then routes around it). Every size until one is verified, then that one
  alone, with the larger ones now and then (probing.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

from weave_node.core.ratelimit import LogLimiter, RateLimitedLog
from weave_node.datapath.model import bridge_mac, host_alias_mac
from weave_node.overlay.sleeve.cipher import MAC_SIZE, ZERO4, ZERO16, ffi, lib
from weave_node.overlay.sleeve.codec import (
    BODY_AT,
    CIPHERS,
    FLAG_VNET,
    HEADERS,
    INNER,
    MAX_SEGMENTS,
    MAX_TTL,
    MODE_AESGCM,
    MODE_PLAIN,
    OUTER,
    TAIL,
    VERSION,
    VNET_HDR_SIZE,
    Kind,
    Opener,
    Sealer,
    Segment,
    SleeveDropped,
    overhead,
    packed_size,
)
from weave_node.overlay.sleeve.config import PORT, Config, LinkSpec, LinkStatus
from weave_node.overlay.sleeve.probing import sizes_to_probe
from weave_node.overlay.sleeve.reassembly import Reassembler

log = logging.getLogger("weave_node.sleeve")

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_MTU_DISCOVER = 10
IPV6_MTU_DISCOVER = 23  # (IPV6_PMTUDISC_PROBE has IPv4's value, 3)
IP_PMTUDISC_PROBE = 3  # DF on every datagram, and the kernel's PMTU cache ignored: the probes decide
MAX_UDP = 65507
UDP_MAX_SEGMENTS = 64  # the kernel's limit per GSO send (128 on the newest kernels)
# datagram sizes: IPv4's MTU - 28 (jumbo, Ethernet, ...), IPv6's MTU - 48 (jumbo, Ethernet)
PROBE_SIZES = (8972, 8952, 1472, 1452, 1422, 1372, 1252, 1024, 548)
_U32 = struct.Struct("!I")


HANDOVER_GENERATIONS = 4  # earlier links (keys) a link still opens while it takes over (a bound: a flapping peer)


def name_bytes(name: int) -> bytes:
    return name.to_bytes(6, "big")


class Link:
    def __init__(self, spec: LinkSpec, wall_ns: int, family: int = socket.AF_INET) -> None:
        """`family`: the socket's; a dual-stack (IPv6) socket reaches an IPv4 peer at its IPv4-mapped address."""
        self.spec = spec
        self.peer_b = name_bytes(spec.peer)
        mapped = family == socket.AF_INET6 and ":" not in spec.address
        self.addr = (f"::ffff:{spec.address}" if mapped else spec.address, PORT)
        send, receive = (spec.keys.send, spec.keys.receive) if spec.keys else (None, None)
        # Plain: the sequence starts at the wall clock, so a restarted router is not taken for a replay.
        self.sealer = Sealer(send, seq=0 if send else wall_ns, mode=spec.cipher)
        self.opener = Opener(receive, mode=spec.cipher)
        self.sizes = tuple(s for s in PROBE_SIZES if s <= spec.max_datagram) or (PROBE_SIZES[-1],)
        self.acked: dict[int, float] = {}
        self.segment_size = min(1472, self.sizes[0])  # until a probe says otherwise
        self.verified: int | None = None
        self.last_ack: float | None = None
        # Make-before-break (a new mesh connection to the same peer, so new keys: a password rotation, a
        # reconnect): the link it replaces stays `prev` (with the generations before it: take_over, trim) and
        # opens what the peer still seals with the old keys; we keep sealing with the old keys (`next_sealer`
        # waits, probes excepted) until a datagram of the peer's opens with the new ones (it has them), or
        # `prev_until`, so no side sends what the other cannot open yet.
        self.prev: Link | None = None
        self.prev_until = 0.0  # when this link's handover ends (it seals with its own keys from then on)
        self.next_sealer: Sealer | None = None
        self.retire_at = 0.0  # (a generation taken over) when its own handover ends
        self.last_opened = float("-inf")  # (a generation taken over) when the peer last sealed with its keys

    def up(self, now: float, timeout: float) -> bool:
        return self.last_ack is not None and now - self.last_ack < timeout

    def take_over(self, old: Link, until: float) -> None:
        """Replace `old` (same peer and address, both sealed) without a gap: its path state carries over. The
        generations before `old` stay too, until `trim` (at most HANDOVER_GENERATIONS back): when two
        connections raced (both routers dialled, the duplicate was dropped), one side may have had a link of the
        dropped one's keys for a moment and the other never, and the peer still seals with the keys before it."""
        old.retire_at = until
        self.prev_until = until
        self._relink([old, *old.older()][:HANDOVER_GENERATIONS])
        self.next_sealer, self.sealer = self.sealer, old.sealer
        self.acked, self.last_ack = dict(old.acked), old.last_ack
        self.verified, self.segment_size = old.verified, old.segment_size

    def older(self) -> list[Link]:
        """The generations this link still opens besides its own keys, newest first."""
        out, back = [], self.prev
        while back is not None:
            out.append(back)
            back = back.prev
        return out

    def trim(self, now: float, active: float) -> list[Link]:
        """Let go of the generations whose own handover is over, but for one the peer sealed with in the last
        `active` seconds (it still does, until it hears our newest keys: a probe's time); returns those let go."""
        chain = self.older()
        keep = [g for g in chain if now < g.retire_at or now - g.last_opened < active][:HANDOVER_GENERATIONS]
        if len(keep) == len(chain):
            return []
        self._relink(keep)
        gone = [g for g in chain if not any(g is k for k in keep)]
        for gen in gone:
            gen.prev = None
        return gone

    def _relink(self, gens: list[Link]) -> None:
        self.prev = gens[0] if gens else None
        for newer, older in itertools.pairwise(gens):
            newer.prev = older
        if gens:
            gens[-1].prev = None

    def promote(self) -> None:
        """The peer opens the new keys (or the old link's time is up): seal with them from now on."""
        if self.next_sealer is not None:
            self.sealer, self.next_sealer = self.next_sealer, None


class Forwarder:
    def __init__(
        self,
        me: int,
        tap_fd: int,
        sock: socket.socket,
        *,
        probe_interval: float = 1.0,
        link_timeout: float = 3.5,
        handover: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_verified: Callable[[int, int], None] | None = None,
    ) -> None:
        self.me = me
        self.me_b = name_bytes(me)
        self.tap_fd = tap_fd
        self.sock = sock
        self.probe_interval = probe_interval
        self.link_timeout = link_timeout
        self.handover = handover  # how long a replaced link's old keys still open and seal (make-before-break)
        self.clock = clock
        self.on_verified = on_verified
        self.counters: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()  # datagrams dropped before a link's opener sees them, by reason
        self.rlog = RateLimitedLog(log, LogLimiter(), clock)  # this thread's own (the limiter holds no lock)
        self.links: dict[int, Link] = {}
        self._by_addr: dict[str, Link] = {}
        self._routes: dict[bytes, Link] = {}
        self._sleeve: list[bytes] = []
        self._sleeve_set: frozenset[bytes] = frozenset()
        self._kernel_set: frozenset[bytes] = frozenset()
        self._min_segment = 1472  # for relayed destinations: the path's MTU is not known beyond the first hop
        self._blocked: frozenset[bytes] = frozenset()
        self._own_mac = bytes.fromhex(bridge_mac(me).replace(":", ""))
        self._alias_mac = bytes.fromhex(host_alias_mac(me).replace(":", ""))
        self._macs: dict[bytes, bytes] = {}
        self._reasm = Reassembler(max_messages=512, max_bytes=32 << 20)
        self._msg_id = 0
        self._pending: Config | None = None
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gso = True
        self._tap_buf = bytearray(VNET_HDR_SIZE + 65536 + 64)
        self._send_buf = bytearray(packed_size(len(self._tap_buf), 548))
        self._next_probe = 0.0
        self._ticks = 0  # probe ticks so far (the larger sizes are probed every GROW_EVERY of them)
        self._run: tuple[bytes, int, int, int, list[bytes | memoryview]] | None = None
        self._run_at_tick: object = None
        self._retired: Counter[str] = Counter()  # drops of links that were replaced

    # --- control (any thread) ----------------------------------------------------------------------------

    def configure(self, config: Config) -> None:
        with self._lock:
            self._pending = config
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="sleeve", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.configure(Config())
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def snapshot(self) -> tuple[dict[int, LinkStatus], dict[str, int], dict[str, int]]:
        """(links, counters, drops) as of now; read from another thread."""
        now = self.clock()
        with self._lock:
            links = {
                name: LinkStatus(
                    link.up(now, self.link_timeout),
                    link.segment_size,
                    link.verified,
                    round(now - link.last_ack, 1) if link.last_ack is not None else None,
                    CIPHERS.get(link.sealer.mode, "none (no password)"),
                )
                for name, link in list(self.links.items())
            }
            drops = Counter(dict(self._retired))
            for link in list(self.links.values()):
                drops.update(dict(link.opener.drops))  # dict(): a C-level copy, while the thread may add a key
            drops.update(dict(self._reasm.drops))
            drops.update(dict(self.drops))
            return links, dict(self.counters), dict(drops)

    # --- the thread --------------------------------------------------------------------------------------

    def run(self) -> None:
        _name_thread(b"weave-sleeve")  # `top -H` / `ps -L` show the datapath's thread by name
        sel = selectors.DefaultSelector()
        sel.register(self.tap_fd, selectors.EVENT_READ, self._from_tap)
        sel.register(self.sock, selectors.EVENT_READ, self._from_udp)
        sel.register(self._wake_r, selectors.EVENT_READ, self._wake)
        try:
            while not self._stop.is_set():
                now = self.clock()
                if now >= self._next_probe:
                    try:
                        self._tick(now)
                    except Exception:
                        self.rlog.log(logging.ERROR, "sleeve.tick", "sleeve: error in the periodic work", exc_info=True)
                        self.counters["error"] += 1
                    self.rlog.flush()
                    self._next_probe = now + self.probe_interval
                for key, _ in sel.select(max(0.0, self._next_probe - now)):
                    try:
                        key.data()
                    except Exception:  # one bad frame or peer must never stop the datapath (nor flood the log)
                        self.rlog.log(logging.ERROR, "sleeve.error", "sleeve: unexpected error", exc_info=True)
                        self.counters["error"] += 1
        finally:
            sel.close()

    def _tick(self, now: float) -> None:
        self._end_handovers(now)
        self._probe(now)
        # A message collected in order whose rest went another way (or was lost) waits in the reassembler,
        # where it can complete or expire, instead of in the run.
        if self._run is not None and self._run is self._run_at_tick:
            self._run_to_reassembler()
        self._run_at_tick = self._run
        self._reasm.expire(now)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            config, self._pending = self._pending, None
            if config is not None:
                self._apply(config)

    def _apply(self, config: Config) -> None:
        now = self.clock()
        wall = time.time_ns()
        for name in [n for n in self.links if n not in config.links]:
            self._retire(self.links.pop(name))
        for name, spec in config.links.items():
            old = self.links.get(name)
            if old is None or not old.spec.same_session(spec):
                link = self.links[name] = Link(spec, wall, self.sock.family)
                if old is not None and old.spec.address == spec.address and old.spec.keys and spec.keys:
                    link.take_over(old, now + self.handover)
                    self._retired.update(old.opener.drops)  # (its drops stay counted; it opens quietly now)
                    old.opener.drops.clear()
                elif old is not None:
                    self._retire(old)
                self._next_probe = now  # probe a new link at once
        self._by_addr = {link.addr[0]: link for link in self.links.values()}
        self._routes = {name_bytes(dst): self.links[hop] for dst, hop in config.routes.items() if hop in self.links}
        self._sleeve = [name_bytes(p) for p in sorted(config.sleeve)]
        self._sleeve_set = frozenset(self._sleeve)
        self._kernel_set = frozenset(name_bytes(p) for p in config.kernel_peers)
        self._macs = {mac: peer for mac, peer in self._macs.items() if peer in self._sleeve_set}
        self._blocked = config.blocked_macs
        self._update_min_segment()

    def _retire(self, link: Link) -> None:
        """`link` and the generations it still opened go: their drops are kept in the counts."""
        for gen in (link, *link.older()):
            self._retired.update(gen.opener.drops)
        link.prev = None

    def _end_handovers(self, now: float) -> None:
        active = 1.5 * self.probe_interval  # (the peer hears our newest keys in a probe each interval)
        for link in self.links.values():
            if link.prev is not None:
                if now >= link.prev_until:
                    link.promote()
                for gen in link.trim(now, active):
                    self._retire(gen)

    # TAP -> peers

    def _from_tap(self) -> None:
        buf = self._tap_buf
        view = memoryview(buf)
        for _ in range(64):  # then let the other direction have a turn
            try:
                n = os.readv(self.tap_fd, [buf])
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                raise
            if n < VNET_HDR_SIZE + 14:
                continue
            frame = view[:n]
            dst_mac = bytes(frame[VNET_HDR_SIZE : VNET_HDR_SIZE + 6])
            src_mac = bytes(frame[VNET_HDR_SIZE + 6 : VNET_HDR_SIZE + 12])
            if src_mac == self._own_mac and self._blocked:  # (fastdp on) our host's frame, under its alias
                _to_alias(frame, self._own_mac, self._alias_mac)
                src_mac = self._alias_mac
            if dst_mac in self._blocked or src_mac in self._blocked:
                self.counters["bridge_mac_dropped"] += 1
                continue
            owner = None if dst_mac[0] & 1 else self._macs.get(dst_mac)
            if owner is not None and owner not in self._sleeve_set:
                # That peer is back in fastdp: VXLAN carries this frame (the bridge flooded it to both ports
                # while it relearns); a second copy through the sleeve would teach the far bridge the wrong port.
                self.counters["frames_left_to_fastdp"] += 1
                continue
            targets = [owner] if owner is not None else self._sleeve
            if not targets:
                self.counters["frames_dropped_no_peer"] += 1
                continue
            for dst in targets:
                link = self._routes.get(dst)
                if link is None:
                    self.counters["no_route"] += 1
                    continue
                self._send_message(link, frame, dst, Kind.FRAME, FLAG_VNET)
            self.counters["frames_out"] += 1
            self.counters["bytes_out"] += n - VNET_HDR_SIZE

    def _send_message(self, link: Link, message: memoryview | bytes, dst: bytes, kind: Kind, flags: int) -> None:
        self._next_id()
        seg = link.segment_size if link.peer_b == dst else min(link.segment_size, self._min_segment)
        if link.sealer.key is None and kind == Kind.FRAME and self._gso:
            self._send_gathered(link, memoryview(message), dst, flags, seg)
            return
        count, total = link.sealer.pack(
            self._send_buf, message, msg_id=self._msg_id, src=self.me_b, dst=dst, segment_size=seg, kind=kind,
            flags=flags,
        )  # fmt: skip
        self._send_packed(link, count, total, seg)

    def _send_packed(self, link: Link, count: int, total: int, seg: int) -> None:
        out = memoryview(self._send_buf)
        try:
            if count == 1:
                self.sock.sendto(out[:total], link.addr)
            elif self._gso:
                per_call = min(UDP_MAX_SEGMENTS, MAX_UDP // seg)
                for start in range(0, count, per_call):
                    chunk = out[start * seg : min(total, (start + per_call) * seg)]
                    self.sock.sendmsg([chunk], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))], 0, link.addr)
            else:
                for start in range(0, total, seg):
                    self.sock.sendto(out[start : min(total, start + seg)], link.addr)
            self.counters["datagrams_out"] += count
        except OSError as exc:
            if self._gso and count > 1 and exc.errno in (errno.EIO, errno.ENOPROTOOPT):
                log.warning("sleeve: UDP GSO refused (%s): sending datagrams one by one", exc.strerror)
                self._gso = False
                self._send_packed(link, count, total, seg)
                return
            self.counters["send_error"] += 1

    def _send_gathered(self, link: Link, message: memoryview, dst: bytes, flags: int, seg: int) -> None:
        """Plain frames: headers and views of the TAP buffer gathered by sendmsg (no copy in Python)."""
        iov = link.sealer.plain_iovecs(
            message, msg_id=self._msg_id, src=self.me_b, dst=dst, segment_size=seg, flags=flags
        )
        count = len(iov) // 2
        per_call = 2 * min(UDP_MAX_SEGMENTS, MAX_UDP // seg)
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", seg))] if count > 1 else []
        try:
            for start in range(0, len(iov), per_call):
                self.sock.sendmsg(iov[start : start + per_call], cmsg, 0, link.addr)
            self.counters["datagrams_out"] += count
        except OSError as exc:
            if count > 1 and exc.errno in (errno.EIO, errno.ENOPROTOOPT):
                log.warning("sleeve: UDP GSO refused (%s): sending datagrams one by one", exc.strerror)
                self._gso = False
                for start in range(0, len(iov), 2):
                    with contextlib.suppress(OSError):
                        self.sock.sendmsg(iov[start : start + 2], [], 0, link.addr)
                return
            self.counters["send_error"] += 1

    # peers -> TAP

    def _from_udp(self) -> None:
        anc_size = socket.CMSG_SPACE(4)
        for _ in range(64):
            # A fresh buffer per receive: segments are views into it until their message is written (no copies).
            buf = bytearray(65536)
            view = memoryview(buf)
            try:
                n, anc, _flags, addr = self.sock.recvmsg_into([buf], anc_size)
            except BlockingIOError:
                return
            except OSError:  # e.g. an ICMP error queued on the socket: never stop receiving
                self.counters["recv_error"] += 1
                continue
            link = self._by_addr.get(addr[0])
            if link is None or addr[1] != PORT or n == 0:  # drops like any other (status, metrics): not logged
                self.drops["unknown_sender" if n else "empty"] += 1
                continue
            size = n
            for level, kind, data in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
                    size = int.from_bytes(data[:4] if len(data) >= 4 else data[:2], "little") or n
            size = max(1, size)
            if link.prev is not None:
                self._batch_handover(link, link.prev, view, n, size)
            elif link.sealer.key is None:
                self._batch_plain(link, view, n, size)
            else:
                self._batch_sealed(link, buf, view, n, size)

    def _batch_handover(self, link: Link, prev: Link, view: memoryview, n: int, size: int) -> None:
        """While a link takes over from another (seconds): each datagram opened with the new keys or else the old
        ones, on the general path. Copies (a read-only view): a failed open leaves the datagram as it was."""
        now = self.clock()
        for off in range(0, n, size):
            datagram = bytes(view[off : off + size if off + size < n else n])
            try:
                seg = link.opener.open_quietly(datagram)
                link.promote()  # the peer seals with the new keys: it has them, and opens ours
            except SleeveDropped as exc:
                back: Link | None = prev
                while back is not None:  # the generations before, newest first
                    try:
                        seg = back.opener.open_quietly(datagram)
                        back.last_opened = now
                        break
                    except SleeveDropped:
                        back = back.prev
                else:
                    link.opener.drops[exc.reason] += 1
                    continue
            self._segment(link, seg, len(datagram))

    # The fast paths: the common case (frames for us, in order, new sequence numbers) without per-datagram
    # objects, method calls or copies; anything else goes through `_datagram` (the general, counted path).

    def _batch_plain(self, link: Link, view: memoryview, n: int, size: int) -> None:
        unpack, hsize = HEADERS.unpack_from, HEADERS.size
        window = link.opener.window
        me = self.me_b
        # Consecutive new sequence numbers are marked seen once per run (`accept_run`), not once per datagram: at
        # a gap, before a datagram takes the general path, and at the end (also when something raised).
        first = nxt = start = window.highest + 1
        try:
            for off in range(0, n, size):
                end = off + size if off + size < n else n
                if end - off >= hsize:
                    ver, mode, res, seq, kind, flags, count, msg_id, index, ttl, _r, src, dst = unpack(view, off)
                    good = (
                        seq >= nxt and ver == VERSION and mode == MODE_PLAIN and not res and kind == 1 and dst == me
                        and index < count <= MAX_SEGMENTS and ttl <= MAX_TTL
                    )  # fmt: skip
                else:
                    good = False
                if not good:  # the general path, against the window as it stands
                    window.accept_run(first, nxt - 1)
                    first = nxt
                    if nxt > start:  # fresh datagrams before this one: a run of stale ones is over
                        link.opener.fresh()
                    self._datagram(link, view[off:end])
                    window = link.opener.window  # (a run of stale plain datagrams starts a new one)
                    first = nxt = start = window.highest + 1
                    continue
                if seq != nxt:  # a gap (lost datagrams, or a restarted peer): a new run
                    window.accept_run(first, nxt - 1)
                    first = seq
                nxt = seq + 1
                run = self._run
                # Inline, the commonest case: the next segment of the message being collected.
                if (
                    index
                    and run is not None
                    and run[1] == msg_id
                    and run[0] == src
                    and run[2] == count
                    and len(run[4]) == index < count - 1
                ):
                    run[4].append(view[off + hsize : end])
                    continue
                self._run_add(src, msg_id, index, count, flags, view[off + hsize : end])
        finally:
            window.accept_run(first, nxt - 1)
            if nxt > start:
                link.opener.fresh()

    def _batch_sealed(self, link: Link, buf: bytearray, view: memoryview, n: int, size: int) -> None:
        cbuf = ffi.from_buffer(buf)
        outer = OUTER.unpack_from
        inner = INNER.unpack_from
        opener = link.opener
        window = opener.window
        me = self.me_b
        mode, key, drops = opener.mode, opener.key_c, opener.drops
        body_at, tail = BODY_AT[mode], TAIL[mode]
        shortest = OUTER.size + MAC_SIZE + INNER.size
        aes = mode == MODE_AESGCM
        decrypt, secretbox_open, null = lib.crypto_aead_aes256gcm_decrypt, lib.crypto_secretbox_open_easy, ffi.NULL
        first = nxt = window.highest + 1  # as in _batch_plain: runs of authenticated sequence numbers
        try:
            for off in range(0, n, size):
                end = off + size if off + size < n else n
                ver, dmode, res, seq = outer(view, off) if end - off >= shortest else (0, 0, 0, 0)
                if ver != VERSION or dmode != mode or res or seq < nxt:  # short, or not ours, or not new
                    window.accept_run(first, nxt - 1)
                    first = nxt
                    self._datagram(link, view[off:end])
                    first = nxt = window.highest + 1
                    continue
                # Opened in place, libsodium called here (this loop is the receive hot path).
                p, length = cbuf + (off + OUTER.size), end - off - OUTER.size
                nonce = seq.to_bytes(8, "big")
                if aes:
                    ok = decrypt(p, null, null, p, length, cbuf + off, OUTER.size, ZERO4 + nonce, key) == 0
                else:
                    ok = secretbox_open(p + MAC_SIZE, p, length, ZERO16 + nonce, key) == 0
                if not ok:
                    drops["forged"] += 1
                    continue
                kind, flags, count, msg_id, index, ttl, _r, src, dst = inner(view, off + body_at)
                if kind not in (1, 2, 3) or index >= count or count > MAX_SEGMENTS or ttl > MAX_TTL:
                    drops["malformed"] += 1
                    continue
                if seq != nxt:
                    window.accept_run(first, nxt - 1)
                    first = seq
                nxt = seq + 1
                data = view[off + body_at + INNER.size : end - tail]
                if kind != 1 or dst != me:  # probes, acks, relaying: opened already, so to the general handling
                    seg = Segment(Kind(kind), flags, msg_id, index, count, ttl, src, dst, data, seq)
                    self._segment(link, seg, end - off)
                    continue
                self._run_add(src, msg_id, index, count, flags, data)  # (the cipher's call costs far more)
        finally:
            window.accept_run(first, nxt - 1)

    def _run_add(  # noqa: PLR0917 - the hot path: no tuple to build per datagram
        self, src: bytes, msg_id: int, index: int, count: int, flags: int, data: memoryview
    ) -> None:
        """Messages whose segments arrive in order are collected here (views, no copies) and written whole."""
        run = self._run
        if index == 0:
            if run is not None:
                self._run_to_reassembler()
            if count > 1 and self._reasm.holds(src, msg_id):  # the rest came first: finish it there
                self._deliver(Segment(Kind.FRAME, flags, msg_id, 0, count, MAX_TTL, src, self.me_b, data, 0))
                return
            if count == 1:
                self._write(src, flags, [data])
                return
            self._run = (src, msg_id, count, flags, [data])
            return
        if run is not None and run[1] == msg_id and run[0] == src and len(run[4]) == index and run[2] == count:
            run[4].append(data)
            if index == count - 1:
                self._run = None
                self._write(src, flags, run[4])
            return
        if run is not None:
            self._run_to_reassembler()
        self._deliver(Segment(Kind.FRAME, flags, msg_id, index, count, MAX_TTL, src, self.me_b, data, 0))

    def _run_to_reassembler(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        src, msg_id, count, flags, parts = run
        for i, part in enumerate(parts):
            self._deliver(Segment(Kind.FRAME, flags, msg_id, i, count, MAX_TTL, src, self.me_b, part, 0))

    def _datagram(self, link: Link, datagram: memoryview) -> None:
        try:
            seg = link.opener.open(datagram)
        except SleeveDropped:
            return
        self._segment(link, seg, len(datagram))

    def _segment(self, link: Link, seg: Segment, size: int) -> None:
        if seg.dst != self.me_b:
            self._relay(link, seg)
        elif seg.kind == Kind.FRAME:
            self._deliver(seg)
        elif seg.kind == Kind.PROBE:
            self._send_message(link, _U32.pack(size), seg.src, Kind.PROBE_ACK, 0)
        elif len(seg.data) == 4 and seg.src == link.peer_b:  # PROBE_ACK, for a size we probe on this link
            size = _U32.unpack(seg.data)[0]
            if size not in link.sizes:
                self.counters["bad_probe_ack"] += 1
                return
            now = self.clock()
            link.acked[size] = now
            link.last_ack = now
            if link.verified is None or size > link.verified:
                self._verified(link, size)

    def _deliver(self, seg: Segment) -> None:
        run = self._run
        if run is not None and run[0] == seg.src and run[1] == seg.msg_id:
            self._run_to_reassembler()  # the rest of that message: all of it in one place
        parts = self._reasm.add_parts(seg, self.clock())
        if parts is not None:
            self._write(seg.src, seg.flags, parts)

    def _write(self, src: bytes, flags: int, parts: list[bytes | memoryview]) -> None:
        if not flags & FLAG_VNET:
            parts.insert(0, bytes(VNET_HDR_SIZE))
        head = parts[0]
        if len(head) < VNET_HDR_SIZE + 14:
            head = parts[0] = b"".join(parts)
            del parts[1:]
            if len(head) < VNET_HDR_SIZE + 14:
                self.counters["runt"] += 1
                return
        dst_mac = bytes(head[VNET_HDR_SIZE : VNET_HDR_SIZE + 6])
        src_mac = bytes(head[VNET_HDR_SIZE + 6 : VNET_HDR_SIZE + 12])
        if src_mac in self._blocked or dst_mac in self._blocked:
            self.counters["bridge_mac_dropped"] += 1
            return
        if src in self._kernel_set:
            # Its peer is confirmed in fastdp here (a late frame, or the peer has not switched back yet): given to
            # the bridge, it would teach it the pod's MAC behind the TAP, where frames for a fastdp peer are
            # dropped (above), and the pod would be unreachable until that entry aged out.
            self.counters["frames_from_fastdp_peer"] += 1
            return
        if dst_mac == self._alias_mac:  # for our host: its own MAC again, so the bridge hands the frame up
            _to_own(parts, self._own_mac, self._alias_mac)
        if not src_mac[0] & 1:
            if len(self._macs) > 65536:
                self._macs.clear()
            self._macs[src_mac] = src
        try:
            n = os.writev(self.tap_fd, parts)
        except OSError:
            self.counters["tap_write_error"] += 1
            return
        self.counters["frames_in"] += 1
        self.counters["bytes_in"] += n - VNET_HDR_SIZE

    def _relay(self, came_from: Link, seg: Segment) -> None:
        nxt = self._routes.get(seg.dst)
        if nxt is None or nxt is came_from or seg.ttl <= 1:
            self.counters["relay_dropped"] += 1
            return
        try:
            self.sock.sendto(nxt.sealer.forward(seg), nxt.addr)
        except OSError:
            self.counters["send_error"] += 1
            return
        self.counters["relayed"] += 1

    # probes

    def _probe(self, now: float) -> None:
        self._ticks += 1
        # The verified size unanswered for 1.5 intervals (a probe lost, or the path's MTU fell): all sizes again,
        # so a smaller size is acked well within link_timeout and the link never looks down for an MTU drop.
        stale = 1.5 * self.probe_interval
        for link in self.links.values():
            for size in sizes_to_probe(link.sizes, link.verified, link.acked, now, self._ticks, stale=stale):
                room = size - overhead(link.sealer.key is not None)
                sealer = link.next_sealer or link.sealer  # (taking over: probes prove the new keys)
                try:
                    inner = INNER.pack(Kind.PROBE, 0, 1, self._next_id(), 0, MAX_TTL, 0, self.me_b, link.peer_b)
                    datagram = sealer.seal(inner, bytes(room))
                    self.sock.sendto(datagram, link.addr)
                except OSError:  # EMSGSIZE: bigger than our own device's MTU
                    continue
            recent = [s for s, t in link.acked.items() if now - t < self.link_timeout]
            best = max(recent, default=None)
            if best is not None and best != link.verified:
                self._verified(link, best)

    def _verified(self, link: Link, size: int) -> None:
        link.verified = link.segment_size = size
        self._update_min_segment()
        if self.on_verified is not None:
            self.on_verified(link.spec.peer, size)

    def _update_min_segment(self) -> None:
        self._min_segment = min((x.segment_size for x in self.links.values() if x.verified), default=1472)

    def _next_id(self) -> int:
        self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
        return self._msg_id


def _name_thread(name: bytes) -> None:
    """The calling thread's name in the kernel (prctl PR_SET_NAME: at most 15 bytes); best effort."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)


def open_socket(port: int = PORT, address: str = "::") -> socket.socket:
    """The sleeve's UDP socket: non-blocking, DF on everything, GRO on when the kernel has it. On "::" (the
    default) one dual-stack socket serves IPv4 and IPv6 peers alike; a host without IPv6 gets an IPv4 one."""
    try:
        return _open_socket(port, address)
    except OSError as exc:
        if address != "::" or exc.errno != errno.EAFNOSUPPORT:
            raise
        log.info("sleeve: no IPv6 in this kernel: an IPv4 socket, IPv4 peers only")
        return _open_socket(port, "0.0.0.0")  # noqa: S104 - all underlays


def _open_socket(port: int, address: str) -> socket.socket:
    v6 = ":" in address
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # (IPv4 peers as ::ffff:a.b.c.d)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        except OSError:
            log.info("sleeve: no UDP GRO in this kernel: one datagram per receive")
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


_ETH = VNET_HDR_SIZE  # the Ethernet header's offset in a TAP frame
_ARP_END = _ETH + 14 + 28  # an Ethernet/IPv4 ARP packet: sender MAC at +8, target MAC at +18 of its payload
_ARP = b"\x08\x06"


def _to_alias(frame: memoryview, own: bytes, alias: bytes) -> None:
    """Our bridge's frame leaves through the sleeve under its alias (model.host_alias_mac), in place: the source
    MAC and, in an ARP packet, the sender's MAC. The far bridge then learns the alias behind its TAP and keeps
    our real MAC on its VXLAN port, where its heartbeats to us go; its pods answer the alias, which the sleeve
    brings back to us (`_to_own`). Only while we have fastdp (without it nothing needs the real MAC kept out of
    the sleeve, and a cached alias would outlive its use); when a peer enters or leaves the sleeve the host
    announces its address (a gratuitous ARP: datapath/ops.Announce), so pods that cached the alias, or the real
    MAC, learn the MAC of the path now in use. IPv6's neighbour discovery carries the MAC in an option under the
    ICMPv6 checksum: the same, checksum and all (`_ndp_to_alias`)."""
    frame[_ETH + 6 : _ETH + 12] = alias
    kind = frame[_ETH + 12 : _ETH + 14]
    if len(frame) >= _ARP_END and kind == _ARP and frame[_ETH + 22 : _ETH + 28] == own:
        frame[_ETH + 22 : _ETH + 28] = alias
    elif kind == _IPV6:
        _ndp_to_alias(frame, own, alias)


_IPV6 = b"\x86\xdd"
_ICMP6 = _ETH + 14 + 40  # an ICMPv6 message right after the IPv6 header (NDP has no extension headers)
_NDP_OPTIONS = 24  # solicitation and advertisement: type, code, checksum, 4 bytes, the 16-byte target


def _ndp_to_alias(frame: memoryview, own: bytes, alias: bytes) -> None:
    """In a neighbour solicitation or advertisement of ours, a link-layer address option (source or target)
    holding our MAC gets the alias, and the checksum follows (RFC 1624's incremental update)."""
    if len(frame) < _ICMP6 + _NDP_OPTIONS or frame[_ETH + 20] != 58 or frame[_ICMP6] not in (135, 136):
        return
    payload = int.from_bytes(frame[_ETH + 18 : _ETH + 20], "big")  # (the IPv6 payload: padding is not options)
    pos, end = _ICMP6 + _NDP_OPTIONS, min(len(frame), _ICMP6 + payload)
    while pos + 8 <= end:
        size = frame[pos + 1] * 8
        if size == 0:
            return  # malformed (a zero-length option): the receiver drops it anyway
        if frame[pos] in (1, 2) and size == 8 and frame[pos + 2 : pos + 8] == own:
            csum = int.from_bytes(frame[_ICMP6 + 2 : _ICMP6 + 4], "big")
            frame[_ICMP6 + 2 : _ICMP6 + 4] = checksum_replace(csum, own, alias).to_bytes(2, "big")
            frame[pos + 2 : pos + 8] = alias
        pos += size


def checksum_replace(csum: int, old: bytes, new: bytes) -> int:
    """An Internet checksum after 16-bit-aligned `old` bytes became `new` (RFC 1624: HC' = ~(~HC + ~m + m'))."""
    total = ~csum & 0xFFFF
    for i in range(0, len(old), 2):
        total += (~int.from_bytes(old[i : i + 2], "big") & 0xFFFF) + int.from_bytes(new[i : i + 2], "big")
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _to_own(parts: list[bytes | memoryview], own: bytes, alias: bytes) -> None:
    """A frame through the sleeve for our bridge's alias gets our bridge's MAC back: the destination and, in an
    ARP packet, the target's MAC. Only the head is copied (the rest of a large frame stays where it is)."""
    head = parts[0]
    if head[_ETH + 12 : _ETH + 14] == _ARP and len(head) < _ARP_END and len(parts) > 1:
        head = b"".join(parts)  # an ARP packet split across parts: tiny, join it
        del parts[1:]
    prefix = bytearray(head[:_ARP_END])
    prefix[_ETH : _ETH + 6] = own
    if len(prefix) == _ARP_END and prefix[_ETH + 12 : _ETH + 14] == _ARP and prefix[_ETH + 32 : _ETH + 38] == alias:
        prefix[_ETH + 32 : _ETH + 38] = own
    parts[0] = memoryview(prefix)
    if len(head) > _ARP_END:
        parts.insert(1, memoryview(head)[_ARP_END:])
