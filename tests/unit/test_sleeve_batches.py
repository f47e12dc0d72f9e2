"""The forwarder's receive fast paths (`_batch_plain`, `_batch_sealed`: a UDP GRO batch at once, sequence numbers
marked per run) against the general path (each datagram through `_datagram`: `Opener.open`, the reassembler):
for any mix of messages, repeats, losses, swaps, forgeries, sequence jumps and short or garbled datagrams, both
write the same frames to the TAP and leave the replay window the same. And a batch that raises part-way (a
callback failing) still marks what it delivered, so a replay of it delivers nothing."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.sleeve.codec import (
    FLAG_VNET,
    MODE_AESGCM,
    MODE_SECRETBOX,
    VNET_HDR_SIZE,
    Kind,
    ReplayWindow,
    Sealer,
    SleeveDropped,
    overhead,
)
from weave_node.overlay.sleeve.config import Config, LinkSpec
from weave_node.overlay.sleeve.forwarder import Forwarder, name_bytes

pytestmark = pytest.mark.unit
ME, PEER, OTHER = 0x02AA00000001, 0x02AA00000002, 0x02AA00000003
K1, K2 = bytes(range(32)), bytes(range(1, 33))
SIZE = 120  # small datagrams: many per batch
ETH = bytes.fromhex("02bb0000000102bb000000020800")


@contextmanager
def rig(mode: int | None) -> Iterator[tuple[Forwarder, socket.socket]]:
    """A forwarder with one link to PEER (mode None: plain); its TAP is a packet socketpair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (ours, theirs, sock):
            s.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        fwd = Forwarder(ME, ours.fileno(), sock)
        keys = None if mode is None else SessionKeys(send=K1, receive=K2)
        spec = LinkSpec(PEER, "127.0.0.1", keys, cipher=mode or MODE_SECRETBOX)
        fwd._apply(Config(links={PEER: spec}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
        yield fwd, theirs
    finally:
        for s in (ours, theirs, sock):
            s.close()


def drain(tap: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(tap.recv(1 << 17))
        except BlockingIOError:
            return out


def verdicts(w: ReplayWindow) -> tuple[int, str]:
    """The window as a receiver sees it: its highest number and the verdict on every number around it."""
    out = []
    for seq in range(max(0, w.highest - w.size - 2), w.highest + 2):
        try:
            w.check(seq)
            out.append("n")
        except SleeveDropped as exc:
            out.append(exc.reason[0])
    return w.highest, "".join(out)


def feed(fwd: Forwarder, batch: list[bytes], fast: bool) -> None:
    link = fwd.links[PEER]
    if not fast:
        for d in batch:
            fwd._datagram(link, memoryview(bytearray(d)))
        return
    buf = bytearray(b"".join(batch))
    if link.sealer.key is None:
        fwd._batch_plain(link, memoryview(buf), len(buf), SIZE)
    else:
        fwd._batch_sealed(link, buf, memoryview(buf), len(buf), SIZE)


def batches_from(ops: list[tuple[int, ...]], key: bytes | None, mode: int) -> list[list[bytes]]:
    """GRO batches (every datagram but the last of a batch exactly SIZE bytes) from a list of operations."""
    room = SIZE - overhead(key is not None)
    seq, msg_id = 1000, 0
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    for op, a, b, c in ops:
        if op == 0:  # a message of a segments, kind b, for us (c) or for another peer (relayed)
            msg_id += 1
            message = (bytes(VNET_HDR_SIZE) + ETH + msg_id.to_bytes(4, "big")).ljust(a * room, b"p")
            sealer = Sealer(key, seq=seq, mode=mode)
            cur += sealer.datagrams(
                message, msg_id=msg_id, src=name_bytes(PEER), dst=name_bytes(ME if c else OTHER),
                segment_size=SIZE, kind=Kind(b), flags=FLAG_VNET,
            )  # fmt: skip
            seq = sealer.seq
        elif op == 1 and cur:  # a repeat of an earlier datagram
            cur.append(cur[-1 - a % len(cur)])
        elif op == 2 and cur:  # a loss
            del cur[-1 - a % len(cur)]
        elif op == 3 and len(cur) > 1:  # a swap
            i = len(cur) - 1 - a % len(cur)
            cur[i], cur[-1] = cur[-1], cur[i]
        elif op == 4 and cur:  # a copy with one bit flipped (forged, or a garbled header)
            d = bytearray(cur[-1 - a % len(cur)])
            d[b % (8 * SIZE) // 8] ^= 1 << (b % 8)
            cur.append(bytes(d))
        elif op == 5:  # the sender's numbers jump (lost datagrams, a restart)
            seq += a
        elif op == 6:  # the batch ends
            out.append(cur)
            cur = []
        elif op == 7:  # a short last datagram: garbage, or a cut-off genuine one
            cur.append(os.urandom(a % 60) if a % 2 or not cur else cur[-1][: a % SIZE])
            out.append(cur)
            cur = []
    out.append(cur)
    return [[d for d in batch if d] for batch in out if any(batch)]


# Operations (see batches_from); about half of them messages: 1-4 segments, mostly frames, some probes and acks.
OPS = st.lists(
    st.tuples(st.integers(0, 13).map(lambda x: max(0, x - 6)), st.integers(0, 200), st.integers(0, 8 * SIZE),
              st.booleans()).map(lambda t: (0, t[1] % 4 + 1, (1, 1, 1, 2, 3)[t[2] % 5], t[3]) if t[0] == 0 else t),
    min_size=5,
    max_size=60,
)  # fmt: skip


@given(mode=st.sampled_from([None, MODE_SECRETBOX, MODE_AESGCM]), ops=OPS, window=st.sampled_from([4, 16, 4096]))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_fast_paths_deliver_and_remember_exactly_what_the_general_path_does(
    mode: int | None, ops: list[tuple[int, ...]], window: int
) -> None:
    key = None if mode is None else K2
    with rig(mode) as (fast, fast_tap), rig(mode) as (ref, ref_tap):
        for f in (fast, ref):
            f.links[PEER].opener.window = ReplayWindow(window)
        for batch in batches_from(ops, key, mode or MODE_SECRETBOX):
            feed(fast, batch, fast=True)
            feed(ref, batch, fast=False)
            assert drain(fast_tap) == drain(ref_tap)
            assert verdicts(fast.links[PEER].opener.window) == verdicts(ref.links[PEER].opener.window)


@pytest.mark.parametrize("mode", [None, MODE_SECRETBOX], ids=["plain", "sealed"])
def test_a_batch_that_raises_part_way_still_marks_what_it_delivered(mode: int | None) -> None:
    """Two frames; writing the second to the TAP raises (the thread's loop logs that and goes on). The first
    frame's number is marked all the same, so the batch captured and replayed delivers nothing."""
    with rig(mode) as (fwd, tap):
        link = fwd.links[PEER]
        sealer = Sealer(None if mode is None else K2, seq=link.opener.window.highest + 10)
        room = SIZE - overhead(mode is not None)
        batch = []
        for i in range(2):
            frame = (bytes(VNET_HDR_SIZE) + ETH + bytes([i])).ljust(room, b"p")
            batch += sealer.datagrams(
                frame, msg_id=i + 1, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=SIZE, flags=FLAG_VNET
            )
        write, calls = fwd._write, []

        def flaky(src: bytes, flags: int, parts: list[bytes | memoryview]) -> None:
            calls.append(src)
            if len(calls) == 2:
                raise RuntimeError("TAP gone")
            write(src, flags, parts)

        fwd._write = flaky  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            feed(fwd, batch, fast=True)
        assert len(drain(tap)) == 1
        fwd._write = write  # type: ignore[method-assign]
        replays = link.opener.drops["replay"]
        feed(fwd, batch, fast=True)
        assert drain(tap) == []
        assert link.opener.drops["replay"] == replays + 2


def test_stale_datagrams_between_fresh_ones_do_not_reset_a_plain_window() -> None:
    """A plain window starts over only after PLAIN_STALE_RESET stale datagrams in a row (a peer whose numbers
    went back); fresh ones in between, taken by the fast path, end the row as the general path's would."""
    with rig(None) as (fwd, tap):
        link = fwd.links[PEER]
        room = SIZE - overhead(False)
        seq = link.opener.window.highest + 10_000

        def datagrams(first: int, n: int) -> list[bytes]:
            sealer, out = Sealer(None, seq=first), []
            for i in range(n):
                frame = (bytes(VNET_HDR_SIZE) + ETH + (first + i).to_bytes(8, "big")).ljust(room, b"p")
                out += sealer.datagrams(
                    frame, msg_id=first + i, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=SIZE,
                    flags=FLAG_VNET,
                )  # fmt: skip
            return out

        for _ in range(300):
            feed(fwd, datagrams(seq, 3) + datagrams(seq - 5000, 1), fast=True)  # 3 fresh, then one too old
            seq += 3
            drain(tap)
        assert link.opener.drops["too_old"] == 300 and link.opener.drops["window_reset"] == 0
