"""ESP for fastdp, the pure parts: keys from a connection's session keys, the "esp" channel's messages, the SAs two
routers agree (driven here through a fake kernel and a fake message bus), and the xfrm plan and its `ip` text."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.datapath import xfrm
from weave_node.datapath.xfrm import Policy, Sa, Xfrm
from weave_node.mesh.crypto import SessionKeys
from weave_node.mesh.errors import ProtocolError
from weave_node.overlay.esp import wire
from weave_node.overlay.esp.keys import esp_keys, sa_key, session_id
from weave_node.overlay.esp.sas import RESEND, RETIRE_GRACE, EspSas, Link

A, B = 1, 2
ADDR = {A: "198.18.0.1", B: "198.18.0.2"}
PORT = 6784


def session_pair(seed: int) -> tuple[SessionKeys, SessionKeys]:
    """The ESP keys of one connection, as each end holds them (A's send is B's receive)."""
    rng = random.Random(seed)
    ab, ba = rng.randbytes(32), rng.randbytes(32)
    return esp_keys(SessionKeys(send=ab, receive=ba)), esp_keys(SessionKeys(send=ba, receive=ab))


def test_both_ends_derive_the_same_keys_per_direction_and_generation() -> None:
    ka, kb = session_pair(1)
    assert ka.send == kb.receive and ka.receive == kb.send and ka.send != ka.receive
    assert session_id(ka) == session_id(kb) and len(session_id(ka)) == 8
    assert session_id(ka) != session_id(session_pair(2)[0])
    k0, k1, k0b = sa_key(ka.send, 0, 0x5700_0001), sa_key(ka.send, 1, 0x5700_0001), sa_key(ka.send, 0, 0x5700_0002)
    assert len(k0) == xfrm.KEY_BYTES and len({k0, k1, k0b}) == 3 and k0 == sa_key(kb.receive, 0, 0x5700_0001)
    assert k0 not in (ka.send, ka.receive)  # never a key of the connection itself


def test_messages_round_trip_and_anything_else_is_refused() -> None:
    for message in (wire.Offer(b"s" * 8, 3, 0x5712_3456), wire.Ack(b"t" * 8, xfrm.SPI_MAX), wire.Rekey(b"u" * 8)):
        assert wire.decode(wire.encode(message)) == message
    ack = wire.encode(wire.Ack(b"t" * 8, 0x5700_0001))
    low_spi = wire.encode(wire.Offer(b"s" * 8, 0, 0x5700_0000)).replace(b"\x57\x00\x00\x00", b"\x00\x00\x01\x00")
    bad = [b"", b"\x02\x01", ack + b"x", ack[:-1], b"\x01\x09" + bytes(16), low_spi]
    for data in bad:
        with pytest.raises(ProtocolError):
            wire.decode(data)


@given(st.binary(max_size=40))
def test_garbled_messages_raise_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.decode(data)


@dataclass
class Router:
    """One side: the core, its kernel (what the last sync applied) and its clock."""

    name: int
    core: EspSas
    kernel: dict[tuple[str, str, int], bytes] = field(default_factory=dict)

    def sync(self, now: float) -> list[tuple[int, bytes]]:
        desired = self.core.desired(PORT)
        self.kernel = {(sa.src, sa.dst, sa.spi): sa.key for sa in desired.sas}
        return self.core.observed(now, frozenset(Sa(s, d, spi) for s, d, spi in self.kernel))


@dataclass
class Pair:
    a: Router
    b: Router
    now: float = 0.0
    wire_queue: list[tuple[int, int, bytes]] = field(default_factory=list)  # (src, dst, data)
    strict: bool = True  # check() after each step (off where a test takes SAs away on one side itself)

    def router(self, name: int) -> Router:
        return self.a if name == A else self.b

    def connect(self, seed: int) -> None:
        ka, kb = session_pair(seed)
        self.a.core.set_links(self.now, {B: Link(ADDR[A], ADDR[B], ka)})
        self.b.core.set_links(self.now, {A: Link(ADDR[B], ADDR[A], kb)})

    def post(self, src: int, sends: list[tuple[int, bytes]]) -> None:
        self.wire_queue += [(src, dst, data) for dst, data in sends]

    def step(self, action: str) -> None:
        if action in ("sync_a", "sync_b"):
            r = self.a if action == "sync_a" else self.b
            self.post(r.name, r.sync(self.now))
        elif action == "deliver" and self.wire_queue:
            src, dst, data = self.wire_queue.pop(0)
            self.post(dst, self.router(dst).core.on_message(self.now, src, data))
        elif action == "drop" and self.wire_queue:
            self.wire_queue.pop(0)
        elif action == "tick":
            self.now += 1.0
            for r in (self.a, self.b):
                self.post(r.name, r.core.tick(self.now))
        self.check()

    def check(self) -> None:
        """Nothing is ever sent with an SA the receiver lacks: each outbound SA in a kernel has its inbound twin,
        with the same key, in the other kernel."""
        if not self.strict:
            return
        for me, other in ((self.a, self.b), (self.b, self.a)):
            for (src, dst, spi), key in me.kernel.items():
                if src == ADDR[me.name]:
                    assert other.kernel.get((src, dst, spi)) == key, (me.name, hex(spi))

    def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            for action in ("sync_a", "sync_b", "deliver", "deliver", "deliver", "deliver"):
                self.step(action)


def new_pair(rekey: float = 3600.0) -> Pair:
    rngs = random.Random(7)
    return Pair(Router(A, EspSas(rng=rngs.randbytes, rekey_interval=rekey)),
                Router(B, EspSas(rng=rngs.randbytes, rekey_interval=rekey)))  # fmt: skip


def test_two_routers_key_both_directions_with_policies_first() -> None:
    pair = new_pair()
    pair.connect(1)
    assert pair.a.core.desired(PORT).policies == {
        Policy(ADDR[A], ADDR[B], "out", PORT), Policy(ADDR[B], ADDR[A], "in", PORT)}  # fmt: skip
    pair.settle()
    assert pair.a.core.established(B) and pair.b.core.established(A)
    assert len(pair.a.kernel) == len(pair.b.kernel) == 2 and pair.a.kernel == pair.b.kernel
    status = pair.a.core.status(B)
    assert status["established"] and status["spi_out"] == pair.b.core.status(A)["spi_in"][0]


def test_a_lost_offer_is_sent_again() -> None:
    pair = new_pair()
    pair.connect(1)
    pair.step("sync_a")
    pair.step("sync_b")
    while pair.wire_queue:
        pair.step("drop")
    for _ in range(int(RESEND) + 1):
        pair.step("tick")
    pair.settle()
    assert pair.a.core.established(B) and pair.b.core.established(A)


def test_a_rekey_replaces_the_sas_without_a_gap_and_retires_the_old_ones() -> None:
    pair = new_pair(rekey=30.0)
    pair.connect(1)
    pair.settle()
    first = dict(pair.a.kernel)
    for _ in range(31):
        pair.step("tick")
    pair.settle()
    assert pair.a.core.status(B)["generation"] == 1 and pair.a.core.rekeys == 1
    for _ in range(int(RETIRE_GRACE) + 1):
        pair.step("tick")
    pair.settle()
    assert len(pair.a.kernel) == 2 and not set(first) & set(pair.a.kernel)  # all new SPIs, old ones gone
    assert pair.a.core.established(B) and pair.b.core.established(A)


def test_a_new_connection_rekeys_from_its_own_session_and_stale_messages_are_ignored() -> None:
    pair = new_pair()
    pair.connect(1)
    pair.settle()
    old_offer = wire.encode(wire.Offer(session_id(session_pair(1)[0]), 5, 0x5700_0042))
    pair.connect(2)
    pair.settle()
    for _ in range(int(RETIRE_GRACE) + 1):
        pair.step("tick")
    pair.settle()
    assert pair.a.core.established(B) and len(pair.a.kernel) == 2
    (spi_in,) = [spi for (src, _dst, spi) in pair.a.kernel if src == ADDR[B]]
    assert pair.a.kernel[(ADDR[B], ADDR[A], spi_in)] == sa_key(session_pair(2)[1].send, 0, spi_in)  # the new keys
    assert pair.a.core.on_message(pair.now, B, old_offer) == [] and pair.a.core.ignored == 1
    assert pair.a.core.on_message(pair.now, 9, old_offer) == [] and pair.a.core.ignored == 2


def test_a_gone_peer_takes_its_sas_and_policies_along() -> None:
    pair = new_pair()
    pair.connect(1)
    pair.settle()
    pair.a.core.set_links(pair.now, {})
    assert pair.a.core.desired(PORT) == Xfrm() and pair.a.core.status(B) == {}


@settings(max_examples=150)
@given(st.lists(st.sampled_from(["sync_a", "sync_b", "deliver", "deliver", "drop", "tick", "reconnect"]),
                max_size=80), st.integers(min_value=5, max_value=40))  # fmt: skip
def test_in_any_order_of_syncs_messages_losses_rekeys_and_reconnections_no_sa_is_one_sided(
    actions: list[str], rekey: int
) -> None:
    pair = new_pair(rekey=float(rekey))
    pair.connect(0)
    seed = 0
    for action in actions:
        if action == "reconnect":
            seed += 1
            pair.connect(seed)
        else:
            pair.step(action)
    pair.wire_queue.clear()
    for _ in range(int(RESEND) + 1):
        pair.step("tick")
    pair.settle()  # then a fair run: both directions keyed again
    assert pair.a.core.established(B) and pair.b.core.established(A)


def test_the_plan_blocks_before_it_keys_and_unkeys_before_it_unblocks() -> None:
    key = bytes(range(36))
    sa_new, sa_old = Sa("10.0.0.1", "10.0.0.2", 0x5700_0002, key), Sa("10.0.0.1", "10.0.0.2", 0x5700_0001)
    pol = Policy("10.0.0.1", "10.0.0.2", "out", PORT)
    gone = Policy("10.0.0.1", "10.0.0.3", "out", PORT)
    first, last = xfrm.plan(Xfrm(frozenset({sa_new}), frozenset({pol})), Xfrm(frozenset({sa_old}), frozenset({gone})),
                            PORT)  # fmt: skip
    assert first == [xfrm.AddPolicy(pol), xfrm.AddSa(sa_new, PORT)]
    assert last == [xfrm.DeleteSa(sa_old), xfrm.DeletePolicy(gone)]
    assert xfrm.plan(Xfrm(frozenset({sa_new}), frozenset({pol})), Xfrm(frozenset({sa_new}), frozenset({pol})),
                     PORT) == ([], [])  # fmt: skip
    text = xfrm.batch(first)
    assert "policy add src 10.0.0.1/32 dst 10.0.0.2/32 proto udp dport 6784 dir out tmpl proto esp mode " \
           "transport reqid 22341 level required" in text  # fmt: skip
    assert f"spi 0x57000002 reqid 22341 mode transport replay-window 128 flag esn aead rfc4106(gcm(aes)) " \
           f"0x{key.hex()} 128 sel src 10.0.0.1/32 dst 10.0.0.2/32 proto udp dport 6784" in text  # fmt: skip
    assert key.hex() not in repr(first) + "".join(xfrm.describe(op) for op in first)  # never in a log line
    assert xfrm.command(xfrm.DeletePolicy(Policy("fd00::1", "fd00::2", "in", PORT))) == \
        "xfrm policy delete src fd00::1/128 dst fd00::2/128 proto udp dport 6784 dir in"  # fmt: skip
    with pytest.raises(ValueError, match="36 bytes"):
        xfrm.command(xfrm.AddSa(sa_old, PORT))  # (no key: never sent to the kernel)


STATES = """\
src 198.18.0.1 dst 198.18.0.2
\tproto esp spi 0x57a1b2c3 reqid 22341 mode transport
\treplay-window 0 flag esn
\taead rfc4106(gcm(aes)) 0x 128
\tanti-replay esn context:
\t seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0x0
\tsel src 198.18.0.1/32 dst 198.18.0.2/32 proto udp dport 6784
src 198.18.0.1 dst 198.18.0.9
\tproto esp spi 0x00001000 reqid 1 mode tunnel
\treplay-window 32 flag af-unspec
"""
POLICIES = """\
src 198.18.0.2/32 dst 198.18.0.1/32 proto udp dport 6784
\tdir in priority 0 ptype main
\ttmpl src 0.0.0.0 dst 0.0.0.0
\t\tproto esp reqid 22341 mode transport
src 10.1.0.0/16 dst 10.2.0.0/16
\tdir out priority 375423 ptype main
\ttmpl src 192.0.2.1 dst 192.0.2.2
\t\tproto esp reqid 1 mode tunnel
"""


def test_only_our_sas_and_policies_are_read_back() -> None:
    assert xfrm.parse_states(STATES) == {Sa("198.18.0.1", "198.18.0.2", 0x57A1_B2C3)}
    assert xfrm.parse_policies(POLICIES) == {Policy("198.18.0.2", "198.18.0.1", "in", PORT)}
    assert xfrm.removal(Xfrm(xfrm.parse_states(STATES), xfrm.parse_policies(POLICIES))) == [
        xfrm.DeleteSa(Sa("198.18.0.1", "198.18.0.2", 0x57A1_B2C3)),
        xfrm.DeletePolicy(Policy("198.18.0.2", "198.18.0.1", "in", PORT)),
    ]


def test_a_peer_entry_made_again_on_the_same_connection_gets_new_keys_and_asks_for_an_offer() -> None:
    """The link went away and came back (a VTEP change, say) on the same connection: A starts over at generation
    0, but with a new SPI, hence a new key (never an earlier SA's again); and A, without an outbound SA now while
    B's inbound one is acknowledged, asks B for an OFFER (REKEY) instead of waiting for B's next rekey."""
    pair = new_pair()
    pair.connect(1)
    pair.settle()
    before = set(pair.a.kernel.values())
    ka, _kb = session_pair(1)
    pair.strict = False  # (B still sends with the SA A just dropped: lost, until B's new OFFER is in place)
    pair.a.core.set_links(pair.now, {})
    pair.a.core.set_links(pair.now, {B: Link(ADDR[A], ADDR[B], ka)})
    pair.settle()
    for _ in range(int(RESEND) * 2 + 1):
        pair.step("tick")
        pair.settle(2)
    assert pair.a.core.established(B) and pair.b.core.established(A)
    for _ in range(int(RETIRE_GRACE) + 1):
        pair.step("tick")
    pair.settle()
    assert not before & set(pair.a.kernel.values()), "an SA was made again with an earlier key"


def test_a_late_older_offer_never_takes_us_back_to_a_retired_sa() -> None:
    pair = new_pair(rekey=5.0)
    pair.connect(1)
    pair.settle()
    (old_spi,) = [spi for (src, _d, spi) in pair.a.kernel if src == ADDR[A]]
    late = wire.encode(wire.Offer(pair.a.core.peers[B].session, 0, old_spi))
    for _ in range(6):
        pair.step("tick")
    pair.settle()
    assert pair.a.core.status(B)["spi_out"] != f"{old_spi:#010x}"
    ignored = pair.a.core.ignored
    assert pair.a.core.on_message(pair.now, B, late) == [] and pair.a.core.ignored == ignored + 1
    assert pair.a.core.status(B)["spi_out"] != f"{old_spi:#010x}"


def test_an_sa_someone_else_flushed_is_replaced_never_put_back_with_its_key() -> None:
    """`ip xfrm state flush` on A: its outbound SA is dropped (B is asked for a new OFFER) and its inbound SA is
    replaced by a new generation; the old keys never come back (their sequence numbers would start again)."""
    pair = new_pair()
    pair.connect(1)
    pair.settle()
    flushed = dict(pair.a.kernel)
    pair.a.kernel, pair.strict = {}, False
    pair.post(A, pair.a.core.observed(pair.now, frozenset()))
    assert not set(flushed) & {(sa.src, sa.dst, sa.spi) for sa in pair.a.core.desired(PORT).sas}
    for _ in range(int(RESEND) * 2 + 1):
        pair.step("tick")
        pair.settle(2)
    assert pair.a.core.established(B) and pair.b.core.established(A)
    assert not set(flushed.values()) & set(pair.a.kernel.values())


def test_reconnections_without_acknowledgements_do_not_pile_up_inbound_sas() -> None:
    """A peer that never answers (a kernel that cannot, a crash loop): each new connection's SA replaces the
    last one not yet offered, and an offered one of an older connection goes after STALE."""
    core = EspSas(rng=random.Random(3).randbytes)
    for seed in range(50):
        core.set_links(float(seed), {B: Link(ADDR[A], ADDR[B], session_pair(seed)[0])})
        core.observed(float(seed), core.desired(PORT).sas)  # installed and offered, never acknowledged
        core.tick(float(seed))
    assert len(core.desired(PORT).sas) <= 1 + int(50 / 1)  # bounded by STALE (120 s > 50 s here) ...
    core.tick(500.0)
    assert len(core.desired(PORT).sas) == 1  # ... and then only the current connection's


def test_an_inbound_sa_that_never_shows_in_the_kernel_gets_another_spi() -> None:
    core = EspSas(rng=random.Random(4).randbytes)
    core.set_links(0.0, {B: Link(ADDR[A], ADDR[B], session_pair(1)[0])})
    (first,) = core.desired(PORT).sas
    for i in range(3):
        core.observed(float(i), frozenset(), others=frozenset({first.spi}))  # someone else's SA holds the SPI
    (second,) = core.desired(PORT).sas
    assert second.spi != first.spi and second.key != first.key


def test_larval_states_and_everyone_elses_spis_are_read_apart() -> None:
    larval = "src 198.18.0.1 dst 198.18.0.2\n\tproto esp spi 0x00000000 reqid 22341 mode transport\n"
    assert xfrm.parse_states(STATES + larval) == {Sa("198.18.0.1", "198.18.0.2", 0x57A1_B2C3)}
    assert xfrm.parse_other_spis(STATES + larval) == {0x1000}


def _runtime(kernel: dict[str, Any]) -> Any:
    from weave_node.overlay.esp.runtime import EspRuntime

    def observe() -> Xfrm:
        if kernel.get("broken"):
            raise OSError("ip: not found")
        return Xfrm(frozenset(kernel["sas"]), frozenset(kernel["policies"]))

    def apply(ops: list[xfrm.XfrmOp]) -> tuple[int, list[str]]:
        errors = []
        for op in ops:
            if isinstance(op, xfrm.AddPolicy) and op.policy in kernel.get("refuse", ()):
                errors.append(f"{xfrm.describe(op)}: refused")
            elif isinstance(op, xfrm.AddPolicy):
                kernel["policies"].add(op.policy)
            elif isinstance(op, xfrm.DeletePolicy):
                kernel["policies"].discard(op.policy)
            elif isinstance(op, xfrm.AddSa):
                kernel["sas"].add(op.sa)
            else:
                kernel["sas"].discard(op.sa)
        return len(ops) - len(errors), errors

    return EspRuntime(PORT, observe, apply, clock=lambda: 0.0, wake=lambda: None,
                      core=EspSas(rng=random.Random(5).randbytes))  # fmt: skip


def test_a_restart_keeps_the_sas_of_before_until_the_peer_is_keyed_anew_and_its_policies_while_fdb_needs_them() -> None:
    old_in, old_out = Sa(ADDR[B], ADDR[A], 0x5711_1111), Sa(ADDR[A], ADDR[B], 0x5722_2222)
    old_policies = {Policy(ADDR[A], ADDR[B], "out", PORT), Policy(ADDR[B], ADDR[A], "in", PORT)}
    kernel: dict[str, Any] = {"sas": {old_in, old_out}, "policies": set(old_policies)}
    runtime = _runtime(kernel)
    # Just restarted: no connection yet, the FDB entries adopted from the kernel still send to B.
    last, blocked = runtime.sync_first(runtime.sync_input(), frozenset({ADDR[B]}))
    runtime.sync_last(last)
    assert kernel["sas"] == {old_in, old_out} and kernel["policies"] == old_policies and not blocked
    # The connection is back: new SAs come, the old ones stay until the peer is keyed both ways.
    runtime.links = {B: Link(ADDR[A], ADDR[B], session_pair(1)[0])}
    runtime.core.set_links(0.0, runtime.links)
    last, blocked = runtime.sync_first(runtime.sync_input(), frozenset({ADDR[B]}))
    runtime.sync_last(last)
    assert {old_in, old_out} < kernel["sas"] and not blocked
    # Nothing sends to B any more (retention over) and B has no link: all of it goes.
    runtime.links = {}
    runtime.core.set_links(0.0, {})
    last, _ = runtime.sync_first(runtime.sync_input(), frozenset())
    runtime.sync_last(last)
    assert kernel["sas"] == set() and kernel["policies"] == set()


def test_a_peer_whose_policies_cannot_be_put_in_place_gets_no_vxlan() -> None:
    refused = Policy(ADDR[B], ADDR[A], "in", PORT)
    kernel: dict[str, Any] = {"sas": set(), "policies": set(), "refuse": {refused}}
    runtime = _runtime(kernel)
    runtime.links = {B: Link(ADDR[A], ADDR[B], session_pair(1)[0])}
    runtime.core.set_links(0.0, runtime.links)
    _, blocked = runtime.sync_first(runtime.sync_input(), frozenset({ADDR[B]}))
    assert blocked == {ADDR[B]} and any("refused" in e for e in runtime.errors)
    kernel["broken"] = True  # `ip xfrm` itself fails: every ESP peer waits
    _, blocked = runtime.sync_first(runtime.sync_input(), frozenset({ADDR[B]}))
    assert blocked == {ADDR[B]} and runtime.errors and runtime.sync_last([]) is None


def test_status_shows_each_peers_encryption() -> None:
    import io

    from rich.console import Console
    from rich.table import Table

    from weave_node import status_view

    peer = {
        "nickname": "b",
        "name": "x",
        "vtep": ADDR[B],
        "mode": "fastdp",
        "last_heartbeat_ago": 0.5,
        "sleeve": None,
        "reason": "ok",
        "encryption": {"by": "esp", "established": True, "generation": 3, "spi_out": "0x57000001"},
    }
    dp = {"fastdp": {"device": "vxlan-6784", "port": 6784}, "sleeve": None, "bridge": "weave", "mtu": 1396,
          "bridge_address": "10.32.0.1/12", "problems": [], "mtu_source": "x", "peers": [peer],
          "encryption": {"esp": True, "reason": None, "peers": 1, "established": 1}}  # fmt: skip
    assert "ESP, 1/1 keyed" in status_view._datapath_summary(dp)
    out = io.StringIO()
    console, table = Console(file=out, width=200), Table()
    status_view._datapath_table(console, table, dp)
    console.print(table)
    assert "ESP keyed, gen 3, out 0x57000001" in out.getvalue()
    off = {**dp, "encryption": {"esp": False, "reason": "WEAVE_ENCRYPTION=sleeve"}}
    assert "no kernel encryption (WEAVE_ENCRYPTION=sleeve)" in status_view._datapath_summary(off)
