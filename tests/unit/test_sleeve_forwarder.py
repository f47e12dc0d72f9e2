"""The sleeve forwarder's receive path and its routes, without a network: the TAP is a pipe, the socket an
unconnected UDP socket on loopback. Fed random or mutated datagrams, the forwarder never raises and never
writes a frame to the TAP; a genuine datagram does reach it (so the assertion could fail)."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import poll
from tests.unit.test_mesh_routes import graph
from tests.unit.test_metrics import DOC
from weave_node.api.metrics import families
from weave_node.datapath.model import bridge_mac, host_alias_mac
from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.sleeve.codec import FLAG_VNET, VNET_HDR_SIZE, Kind, Sealer, Segment
from weave_node.overlay.sleeve.config import Config, LinkSpec
from weave_node.overlay.sleeve.forwarder import Forwarder, name_bytes
from weave_node.overlay.sleeve.reassembly import Reassembler
from weave_node.overlay.sleeve.routing import sleeve_routes

pytestmark = pytest.mark.unit
ME, PEER = 0x02AA00000001, 0x02AA00000002
K1, K2 = bytes(range(32)), bytes(range(1, 33))
FRAME = bytes(VNET_HDR_SIZE) + bytes.fromhex("02bb0000000102bb000000020800") + b"payload" * 20


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Forwarder, int]]:
    r, w = os.pipe2(os.O_NONBLOCK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    fwd = Forwarder(ME, w, sock)
    # Our receive key is the peer's send key.
    spec = LinkSpec(PEER, "127.0.0.1", SessionKeys(send=K1, receive=K2))
    fwd._apply(Config(links={PEER: spec}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
    yield fwd, r
    sock.close()
    for fd in (r, w):
        os.close(fd)


def _tap_is_empty(r: int) -> bool:
    try:
        os.read(r, 1 << 16)
    except BlockingIOError:
        return True
    return False


def _genuine(seq: int) -> list[bytes]:
    return Sealer(K2, seq=seq).datagrams(
        FRAME, msg_id=seq, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=1400, flags=FLAG_VNET
    )


def test_a_genuine_frame_reaches_the_tap(rig: tuple[Forwarder, int]) -> None:
    fwd, r = rig
    link = fwd.links[PEER]
    for d in _genuine(1_000_000):
        fwd._datagram(link, memoryview(bytearray(d)))
    assert os.read(r, 1 << 16) == FRAME
    assert fwd._macs[bytes.fromhex("02bb00000002")] == name_bytes(PEER)  # learned for the way back


@given(data=st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_random_datagrams_never_raise_nor_reach_the_tap(rig: tuple[Forwarder, int], data: bytes) -> None:
    fwd, r = rig
    fwd._datagram(fwd.links[PEER], memoryview(bytearray(data)))
    assert _tap_is_empty(r)


@given(seq=st.integers(min_value=2_000_000, max_value=1 << 40), flips=st.lists(st.integers(0, 10_000), min_size=1))
@settings(max_examples=300, deadline=None)
def test_mutated_datagrams_never_raise_nor_reach_the_tap(
    rig: tuple[Forwarder, int], seq: int, flips: list[int]
) -> None:
    fwd, r = rig
    (d,) = _genuine(seq)
    mutated = bytearray(d)
    for f in flips:
        mutated[f % len(mutated)] ^= 1 << (f % 8)
    if bytes(mutated) == d:
        return
    fwd._datagram(fwd.links[PEER], memoryview(mutated))
    assert _tap_is_empty(r)


def test_a_replayed_datagram_is_dropped(rig: tuple[Forwarder, int]) -> None:
    fwd, r = rig
    (d,) = _genuine(5_000_000_000_000)
    fwd._datagram(fwd.links[PEER], memoryview(bytearray(d)))
    assert os.read(r, 1 << 16) == FRAME
    before = fwd.links[PEER].opener.drops["replay"]
    fwd._datagram(fwd.links[PEER], memoryview(bytearray(d)))
    assert _tap_is_empty(r) and fwd.links[PEER].opener.drops["replay"] == before + 1


def test_a_probe_is_answered_and_a_probe_ack_marks_the_link_up(rig: tuple[Forwarder, int]) -> None:
    fwd, _r = rig
    link = fwd.links[PEER]
    ack = Sealer(K2, seq=9_000_000_000_000).datagrams(
        (1472).to_bytes(4, "big"), msg_id=1, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=1472,
        kind=Kind.PROBE_ACK,
    )[0]  # fmt: skip
    fwd._datagram(link, memoryview(bytearray(ack)))
    assert link.up(fwd.clock(), fwd.link_timeout) and link.acked[1472]


def test_routes_avoid_links_that_do_not_answer() -> None:
    records = graph([(1, 2), (2, 3), (1, 3)])
    assert sleeve_routes(records, 1, {2, 3}) == {2: 2, 3: 3}
    assert sleeve_routes(records, 1, {2}) == {2: 2, 3: 2}  # UDP to 3 blocked: through 2
    assert sleeve_routes(records, 1, set()) == {}
    assert sleeve_routes(records, 9, {2}) == {}


@pytest.fixture
def duplex() -> Iterator[tuple[Forwarder, socket.socket]]:
    """A forwarder whose TAP is one end of a packet socketpair (frames can be read from it and written to it)."""
    tap_ours, tap_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tap_ours.setblocking(False)
    tap_theirs.setblocking(False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    fwd = Forwarder(ME, tap_ours.fileno(), sock)
    spec = LinkSpec(PEER, "127.0.0.1", SessionKeys(send=K1, receive=K2))
    fwd._apply(Config(links={PEER: spec}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
    yield fwd, tap_theirs
    sock.close()
    tap_ours.close()
    tap_theirs.close()


def test_empty_and_wrong_port_datagrams_are_dropped_quietly(duplex: tuple[Forwarder, socket.socket]) -> None:
    fwd, _tap = duplex
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"", fwd.sock.getsockname())
        s.sendto(_genuine(7)[0], fwd.sock.getsockname())  # genuine, but not from port 6783
    deadline = time.monotonic() + 5
    while fwd.drops["empty"] + fwd.drops["unknown_sender"] < 2 and time.monotonic() < deadline:
        fwd._from_udp()
    assert fwd.drops == {"empty": 1, "unknown_sender": 1}
    assert fwd.counters["error"] == 0 and fwd.counters["frames_in"] == 0
    # counted as drops, where the status and the metrics look (weave_node_sleeve_drops_total{reason=...})
    _links, counters, drops = fwd.snapshot()
    assert drops["empty"] == 1 and drops["unknown_sender"] == 1 and "unknown_sender" not in counters
    doc = {**DOC, "datapath": {**DOC["datapath"], "sleeve": {"counters": counters, "drops": drops}}}  # type: ignore[dict-item]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families(doc) for s in f.samples}
    assert samples[("weave_node_sleeve_drops_total", (("reason", "unknown_sender"),))] == 1
    assert samples[("weave_node_sleeve_drops_total", (("reason", "empty"),))] == 1


def test_probe_acks_count_only_for_sizes_probed_on_that_link(duplex: tuple[Forwarder, socket.socket]) -> None:
    fwd, _tap = duplex
    link = fwd.links[PEER]
    forged = Sealer(K2, seq=1).datagrams(
        (70000).to_bytes(4, "big"), msg_id=1, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=1472,
        kind=Kind.PROBE_ACK,
    )[0]  # fmt: skip
    fwd._datagram(link, memoryview(bytearray(forged)))
    assert not link.up(fwd.clock(), fwd.link_timeout) and fwd.counters["bad_probe_ack"] == 1
    assert link.segment_size == 1472


def test_a_frame_for_a_peer_back_in_fastdp_is_left_to_vxlan(duplex: tuple[Forwarder, socket.socket]) -> None:
    fwd, tap = duplex
    fwd._macs[bytes.fromhex("02bb00000001")] = name_bytes(PEER)  # learned while PEER was in the sleeve
    fwd._apply(Config(links={PEER: fwd.links[PEER].spec}, routes={PEER: PEER}, kernel_peers=frozenset({PEER})))
    assert fwd._macs == {}  # forgotten when PEER left the sleeve
    fwd._macs[bytes.fromhex("02bb00000001")] = name_bytes(PEER)
    tap.send(FRAME)
    fwd._from_tap()
    assert fwd.counters["frames_left_to_fastdp"] == 1 and fwd.counters["datagrams_out"] == 0
    # A late frame of that peer through the sleeve is not given to the bridge: it would learn the pod's MAC behind
    # the TAP, where the frames above are dropped (the pod unreachable until the entry ages out).
    late = bytes(VNET_HDR_SIZE) + bytes.fromhex("02aa0000000102bb000000030800") + os.urandom(100)
    fwd._write(name_bytes(PEER), FLAG_VNET, [late])
    assert fwd.counters["frames_from_fastdp_peer"] == 1 and fwd.counters["frames_in"] == 0
    assert bytes.fromhex("02bb00000003") not in fwd._macs
    with pytest.raises(BlockingIOError):
        tap.recv(1 << 16)


def test_a_message_whose_first_segment_comes_last_is_still_delivered(duplex: tuple[Forwarder, socket.socket]) -> None:
    fwd, tap = duplex
    message = bytes(VNET_HDR_SIZE) + bytes.fromhex("02bb0000000102bb000000020800") + os.urandom(3000)
    segs = Sealer(K2, seq=100).datagrams(
        message, msg_id=9, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=1400, flags=FLAG_VNET
    )
    assert len(segs) == 3
    link = fwd.links[PEER]
    for d in (segs[1], segs[2], segs[0]):  # 1 and 2 wait in the reassembler; 0 arrives on the fast path
        buf = bytearray(d)
        fwd._batch_sealed(link, buf, memoryview(buf), len(buf), len(buf))
    assert tap.recv(1 << 16) == message


def test_held_segments_are_copies_not_views_of_the_receive_buffer() -> None:
    reasm = Reassembler()
    buf = bytearray(b"abcdef")
    seg = Segment(Kind.FRAME, 0, 1, 0, 2, 8, b"s" * 6, b"d" * 6, memoryview(buf)[:3], 1)
    assert reasm.add_parts(seg, 0.0) is None
    buf[:3] = b"XYZ"  # the receive buffer is reused
    last = Segment(Kind.FRAME, 0, 1, 1, 2, 8, b"s" * 6, b"d" * 6, memoryview(buf)[3:], 2)
    assert b"".join(reasm.add_parts(last, 0.0) or []) == b"abcdef"


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "plain"])
def test_a_batch_with_a_duplicate_a_gap_and_a_forgery_delivers_each_message_once(
    duplex: tuple[Forwarder, socket.socket], sealed: bool
) -> None:
    """One GRO batch as the kernel hands it over: equal-sized datagrams back to back. The fast paths mark runs of
    consecutive sequence numbers seen in one step; a datagram repeated inside the batch, a gap in the numbers and
    (sealed) a forged datagram between them must not break that: each message reaches the TAP once, the repeat
    is counted as a replay, and the whole batch replayed later delivers nothing."""
    fwd, tap = duplex
    key = K2 if sealed else None
    if not sealed:
        fwd._apply(Config(links={PEER: LinkSpec(PEER, "127.0.0.1")}, routes={PEER: PEER}, sleeve=frozenset({PEER})))
    link = fwd.links[PEER]
    base = link.opener.window.highest + 1
    size = 1400

    def message(seq: int, msg_id: int) -> tuple[bytes, list[bytes]]:
        m = bytes(VNET_HDR_SIZE) + bytes.fromhex("02bb0000000102bb000000020800") + os.urandom(2 * size + 100)
        segs = Sealer(key, seq=seq).datagrams(
            m, msg_id=msg_id, src=name_bytes(PEER), dst=name_bytes(ME), segment_size=size, flags=FLAG_VNET
        )
        return m, [s.ljust(size, b"\0") if i < len(segs) - 1 else s for i, s in enumerate(segs)]

    m1, s1 = message(base, 1)  # seq base .. base+2
    m2, s2 = message(base + 10, 2)  # a gap of 7
    assert len(s1) == len(s2) == 3 and all(len(s) == size for s in s1[:2])
    forged = bytearray(s2[0])
    forged[-1] ^= 1
    # The last datagram of a batch may be short; the others are `size`. Short datagrams cut a batch, so each
    # message's last segment ends one.
    batches = [[s1[0], s1[0], s1[1], s1[2]]]
    batches.append([bytes(forged), *s2] if sealed else list(s2))
    replays = link.opener.drops["replay"]
    for batch in batches:
        buf = bytearray(b"".join(batch))
        if sealed:
            fwd._batch_sealed(link, buf, memoryview(buf), len(buf), size)
        else:
            fwd._batch_plain(link, memoryview(buf), len(buf), size)
    assert tap.recv(1 << 16) == m1 and tap.recv(1 << 16) == m2
    assert link.opener.drops["replay"] == replays + 1
    if sealed:
        assert link.opener.drops["forged"] >= 1
    assert link.opener.window.highest == base + 12
    for batch in batches:  # all of it again
        buf = bytearray(b"".join(batch))
        if sealed:
            fwd._batch_sealed(link, buf, memoryview(buf), len(buf), size)
        else:
            fwd._batch_plain(link, memoryview(buf), len(buf), size)
    with pytest.raises(BlockingIOError):
        tap.recv(1 << 16)
    assert link.opener.drops["replay"] >= replays + 7


def test_the_forwarder_thread_is_named_for_top(duplex: tuple[Forwarder, socket.socket]) -> None:
    fwd, _tap = duplex
    fwd.start()
    try:
        assert fwd._thread is not None
        comm = Path(f"/proc/self/task/{fwd._thread.native_id}/comm")
        poll(lambda: comm.read_text().strip() == "weave-sleeve", timeout=5, what="the thread's name")
    finally:
        fwd.stop()


def test_a_failing_receive_path_neither_stops_the_thread_nor_floods_the_log(
    duplex: tuple[Forwarder, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    fwd, _tap = duplex

    def broken() -> None:
        raise RuntimeError("a bug on the receive path")  # (the datagram stays queued: select fires again at once)

    fwd._from_udp = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="weave_node.sleeve"):
        fwd.start()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", fwd.sock.getsockname())
            poll(lambda: fwd.counters["error"] >= 1000, timeout=10, what="a thousand failures")
            assert fwd._thread is not None and fwd._thread.is_alive()
        finally:
            fwd.stop()
    errors = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert 1 <= len(errors) <= fwd.rlog.limiter.burst


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _arp(op: int, src: bytes, dst: bytes, sha: bytes, tha: bytes) -> bytes:
    """A TAP frame holding an Ethernet/IPv4 ARP packet (vnet header first)."""
    payload = bytes.fromhex("000108000604") + op.to_bytes(2, "big")
    payload += sha + bytes([10, 32, 0, 1]) + tha + bytes([10, 40, 0, 2])
    return bytes(VNET_HDR_SIZE) + dst + src + b"\x08\x06" + payload


def test_our_hosts_frames_cross_the_sleeve_under_its_alias(
    duplex: tuple[Forwarder, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fastdp on, our host's traffic with a pod behind the sleeve (an ARP request, kube-proxy's NodePort, a
    ping) leaves under the bridge's alias, and what comes back for the alias reaches the bridge as its own;
    bridge-to-bridge frames (the VXLAN heartbeats) still never take the sleeve. Before, the host's frames were
    dropped there, and a host could not reach a pod on a peer in the sleeve while it had fastdp to others."""
    fwd, tap = duplex
    own, alias = _mac(bridge_mac(ME)), _mac(host_alias_mac(ME))
    peer_bridge, pod = _mac(bridge_mac(PEER)), _mac("0a:58:0a:28:00:02")
    assert alias != own and not alias[0] & 1 and not alias[0] & 2  # unicast; no bridge MAC (those have 0x02)
    blocked = frozenset({own, peer_bridge})  # fastdp on: the bridges' MACs stay in VXLAN
    fwd._apply(Config({PEER: fwd.links[PEER].spec}, {PEER: PEER}, frozenset({PEER}), blocked))
    sent: list[bytes] = []
    monkeypatch.setattr(fwd, "_send_message", lambda link, message, dst, kind, flags: sent.append(bytes(message)))
    request = _arp(1, own, b"\xff" * 6, own, bytes(6))
    tap.send(request)
    tap.send(bytes(VNET_HDR_SIZE) + peer_bridge + own + b"\x08\x00" + os.urandom(60))  # a heartbeat: stays out
    fwd._from_tap()
    assert sent == [_arp(1, alias, b"\xff" * 6, alias, bytes(6))]
    assert fwd.counters["bridge_mac_dropped"] == 1
    # The pod's answer, for the alias: to the bridge as its own, target MAC included.
    fwd._write(name_bytes(PEER), FLAG_VNET, [_arp(2, pod, alias, pod, alias)])
    assert tap.recv(1 << 16) == _arp(2, pod, own, pod, own)
    big = os.urandom(3000)
    fwd._write(name_bytes(PEER), FLAG_VNET, [bytes(VNET_HDR_SIZE) + alias + pod + b"\x08\x00" + big])
    assert tap.recv(1 << 16) == bytes(VNET_HDR_SIZE) + own + pod + b"\x08\x00" + big
    # A split ARP packet is joined; a frame for the bridge's real MAC is still refused (a heartbeat in the sleeve).
    reply = _arp(2, pod, alias, pod, alias)
    fwd._write(name_bytes(PEER), FLAG_VNET, [reply[: VNET_HDR_SIZE + 20], reply[VNET_HDR_SIZE + 20 :]])
    assert tap.recv(1 << 16) == _arp(2, pod, own, pod, own)
    fwd._write(name_bytes(PEER), FLAG_VNET, [bytes(VNET_HDR_SIZE) + own + peer_bridge + b"\x08\x00" + bytes(40)])
    assert fwd.counters["bridge_mac_dropped"] == 2 and fwd.counters["frames_in"] == 3
    assert fwd._macs[pod] == name_bytes(PEER)  # the pod's answers to the alias go back to that peer
    # Without fastdp (a password) nothing keeps the real MAC out of the sleeve: our host's frames keep it.
    fwd._apply(Config({PEER: fwd.links[PEER].spec}, {PEER: PEER}, frozenset({PEER})))
    sent.clear()
    tap.send(request)
    fwd._from_tap()
    assert sent == [request]
