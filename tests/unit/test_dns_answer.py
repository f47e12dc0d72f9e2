"""What the DNS server answers (weave_node/dns/answer.py), its settings and the upstreams it reads (pure)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weave_node.core.address import parse_ip, parse_ip6
from weave_node.core.errors import ConfigError
from weave_node.dns import answer
from weave_node.dns.settings import from_pick, nameservers, parse_upstream

pytestmark = pytest.mark.unit

NAMES = {
    "web": [parse_ip("10.32.0.5"), parse_ip("10.32.0.9"), parse_ip6("fd00::5")],
    "db.shop": [parse_ip("10.32.0.7")],
    "only6": [parse_ip6("fd00::6")],
    "many": [parse_ip("10.32.1.0") + i for i in range(100)],
}


def _reverse(ip: int) -> list[str]:
    return sorted(n for n, ips in NAMES.items() if ip in ips)


def _ours(ip: int) -> bool:
    return parse_ip("10.32.0.0") <= ip < parse_ip("10.48.0.0") or parse_ip6("fd00::") <= ip < parse_ip6("fd00::1:0")


def _below(name: str) -> bool:
    return any(n.endswith("." + name) for n in NAMES)


ZONE = answer.Zone.of("weave.local", 5, lambda n: list(NAMES.get(n, [])), _reverse, _ours, below=_below)


def ask(name: str, rdtype: str = "A", *, tcp: bool = False, turn: int = 0, **kw: object) -> dns.message.Message:
    verdict = answer.respond(dns.message.make_query(name, rdtype, **kw).to_wire(), ZONE, tcp=tcp, turn=turn)  # type: ignore[arg-type]
    assert isinstance(verdict, answer.Reply), verdict
    return dns.message.from_wire(verdict.wire)


def texts(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rr in msg.answer for rd in rr]


def test_names_in_the_domain_are_answered_authoritatively_per_family() -> None:
    a = ask("web.weave.local")
    assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA and a.flags & dns.flags.RA
    assert texts(a) == ["10.32.0.5", "10.32.0.9"] and a.answer[0].ttl == 5
    assert texts(ask("WEB.Weave.Local.", "AAAA")) == ["fd00::5"]  # names are case-insensitive
    assert sorted(texts(ask("web.weave.local", "ANY"))) == ["10.32.0.5", "10.32.0.9", "fd00::5"]
    assert texts(ask("db.shop.weave.local")) == ["10.32.0.7"]


def test_missing_names_and_types_say_so_with_our_soa_for_negative_caching() -> None:
    nx = ask("nobody.weave.local")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA
    assert nx.authority[0].rdtype == dns.rdatatype.SOA and nx.authority[0][0].minimum == 5
    for name, rdtype in (("only6.weave.local", "A"), ("web.weave.local", "MX"), ("weave.local", "A"),
                         ("shop.weave.local", "A")):  # (a parent of names: NODATA, RFC 8020)  # fmt: skip
        nodata = ask(name, rdtype)
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority, (name, rdtype)
    assert ask("web.weave.local", "A", rdclass="CH").rcode() == dns.rcode.REFUSED


def test_addresses_of_a_name_come_first_in_turn() -> None:
    firsts = [texts(ask("web.weave.local", turn=t))[0] for t in range(4)]
    assert firsts == ["10.32.0.5", "10.32.0.9", "10.32.0.5", "10.32.0.9"]


def test_reverse_names_of_the_pod_range_are_ours_others_are_forwarded() -> None:
    ptr = ask("5.0.32.10.in-addr.arpa", "PTR")
    assert texts(ptr) == ["web.weave.local."] and ptr.flags & dns.flags.AA
    assert ask("1.0.32.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN  # ours, no one holds it
    assert texts(ask(dns.reversename.from_address("fd00::6").to_text(), "PTR")) == ["only6.weave.local."]
    outside = ["1.1.168.192.in-addr.arpa", "32.10.in-addr.arpa", "example.org", "weave.localhost"]
    outside += [dns.reversename.from_address("::a20:5").to_text()]  # (IPv4-compatible: not 10.32.0.5's name)
    NAMES["outside"] = [parse_ip("192.0.2.9")]  # someone named an address outside the pod range: not ours
    outside += ["9.2.0.192.in-addr.arpa"]
    try:
        for name in outside:
            assert answer.respond(dns.message.make_query(name, "PTR").to_wire(), ZONE) == answer.FORWARD, name
    finally:
        del NAMES["outside"]
    NAMES["x" * 60 + "." + "y" * 60 + "." + "z" * 60 + "." + "w" * 60] = [parse_ip("10.32.0.77")]  # too long
    try:  # under our domain: no PTR to it, and no exception
        assert ask("77.0.32.10.in-addr.arpa", "PTR").answer == []
    finally:
        del NAMES["x" * 60 + "." + "y" * 60 + "." + "z" * 60 + "." + "w" * 60]


def test_an_answer_too_big_for_udp_is_truncated_and_whole_over_tcp_or_edns() -> None:
    small = ask("many.weave.local")
    assert small.flags & dns.flags.TC and not small.answer
    assert len(texts(ask("many.weave.local", tcp=True))) == 100
    edns = ask("many.weave.local", use_edns=0, payload=4096)  # we cap at 1232: 100 A records (~1.6 KB) do not fit
    assert edns.flags & dns.flags.TC
    assert (
        len(texts(ask("web.weave.local", use_edns=0, payload=4096))) == 2
        and ask("web.weave.local", use_edns=0).edns == 0
    )


def test_what_is_not_a_query_is_dropped_or_refused_and_never_raises() -> None:
    query = dns.message.make_query("web.weave.local", "A")
    query.flags |= dns.flags.QR  # a response: never answered (no loops between two servers)
    assert answer.respond(query.to_wire(), ZONE) is None
    assert answer.respond(b"\x12", ZONE) is None
    loop = bytes.fromhex("abcd01000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01"
    reply = answer.respond(loop, ZONE)
    assert isinstance(reply, answer.Reply) and reply.kind == "error"
    assert reply.wire[:2] == b"\xab\xcd" and reply.wire[3] & 0xF == dns.rcode.FORMERR
    notify = dns.message.make_query("web.weave.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(answer.respond(notify.to_wire(), ZONE).wire).rcode() == dns.rcode.NOTIMP  # type: ignore[union-attr]
    failed = dns.message.from_wire(answer.servfail(dns.message.make_query("example.org", "A").to_wire()))
    assert failed.rcode() == dns.rcode.SERVFAIL and failed.question[0].name.to_text() == "example.org."


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_never_raise(data: bytes) -> None:
    verdict = answer.respond(data, ZONE)
    assert verdict is None or verdict == answer.FORWARD or isinstance(verdict, answer.Reply)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 255)), min_size=1, max_size=8), st.booleans())
def test_damaged_queries_never_raise(changes: list[tuple[int, int]], tcp: bool) -> None:
    wire = bytearray(dns.message.make_query("web.weave.local", "A", use_edns=0).to_wire())
    for at, value in changes:
        wire[at % len(wire)] = value
    verdict = answer.respond(bytes(wire), ZONE, tcp=tcp)
    if isinstance(verdict, answer.Reply):
        assert len(verdict.wire) <= (answer.TCP_SIZE if tcp else answer.EDNS_SIZE)


def test_settings_and_upstreams() -> None:
    env = {
        "WEAVE_DNS_DOMAIN": "Cluster.Lan.",
        "WEAVE_DNS_TTL": "0",
        "WEAVE_DNS_UPSTREAMS": "10.0.0.2 [2001:db8::53]:5353",
    }
    s = from_pick(lambda _flag, var: env.get(var), lambda v: not v)
    assert (s.enabled, s.domain, s.ttl, s.upstreams) == (
        True,
        "cluster.lan",
        0,
        (("10.0.0.2", 53), ("2001:db8::53", 5353)),
    )
    assert not from_pick(lambda _f, var: "1" if var == "WEAVE_NO_DNS" else None, lambda v: not v).enabled
    assert parse_upstream("10.0.0.2:5353") == ("10.0.0.2", 5353) and parse_upstream("2001:db8::1") == (
        "2001:db8::1",
        53,
    )
    for bad, words in (
        ({"WEAVE_DNS_DOMAIN": "bad_.-x"}, "WEAVE_DNS_DOMAIN"),
        ({"WEAVE_DNS_DOMAIN": "10.in-addr.arpa"}, "reverse"),
        ({"WEAVE_DNS_TTL": "-1"}, "WEAVE_DNS_TTL"),
        ({"WEAVE_DNS_PORT": "70000"}, "WEAVE_DNS_PORT"),
        ({"WEAVE_DNS_UPSTREAMS": "resolver.example"}, "not an IP address"),
        ({"WEAVE_DNS_UPSTREAMS": "10.0.0.1:0"}, "port"),
        ({"WEAVE_DNS_UPSTREAMS": "1.1.1.1 1.0.0.1 8.8.8.8 9.9.9.9"}, "at most 3"),
    ):
        with pytest.raises(ConfigError, match=words):
            from_pick(lambda _f, var, bad=bad: bad.get(var), lambda v: not v)  # type: ignore[misc]
    conf = "# a comment\nnameserver 10.32.0.1\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\n" \
        "search example\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n"  # fmt: skip
    assert nameservers(conf, exclude={"10.32.0.1"}) == [("127.0.0.53", 53), ("10.0.0.2", 53), ("10.0.0.3", 53)]


def test_the_server_keeps_answers_per_question_and_turn_until_the_names_change() -> None:
    from weave_node.dns.server import DnsServer
    from weave_node.dns.settings import DnsSettings

    names = {"web": [parse_ip("10.32.0.5"), parse_ip("10.32.0.9")]}
    generation = [0]
    zone = answer.Zone.of("weave.local", 5, lambda n: list(names.get(n, [])), _reverse, _ours)
    server = DnsServer(DnsSettings(), zone, lambda: generation[0])

    def first(ident: int) -> tuple[int, str]:
        query = dns.message.make_query("web.weave.local", "A", id=ident).to_wire()
        reply = server.handle(query, tcp=False)
        assert isinstance(reply, answer.Reply)
        msg = dns.message.from_wire(reply.wire)
        return msg.id, texts(msg)[0]

    got = [first(i) for i in range(1, 7)]
    assert [i for i, _ in got] == list(range(1, 7))  # each its own id, from the cache too
    assert {ip for _, ip in got} == {"10.32.0.5", "10.32.0.9"} and got[0][1] != got[1][1]  # round-robin kept
    assert server.counters["answered"] == 6 and len(server._cache) == 2
    names["web"] = [parse_ip("10.32.0.7")]
    generation[0] += 1  # the names changed: nothing old is given again
    assert first(9) == (9, "10.32.0.7")
    assert server.handle(dns.message.make_query("example.org", "A").to_wire(), tcp=False) == answer.FORWARD
    assert server.handle(dns.message.make_query("example.org", "A").to_wire(), tcp=False) == answer.FORWARD


def test_a_flooding_client_is_held_to_its_rate_and_others_still_get_answers() -> None:
    from weave_node.dns.limit import QueryLimit

    limit = QueryLimit(rate=100, max_clients=3)
    flood = [limit.admit("10.32.0.66", 10.0) for _ in range(1000)]  # at one instant: the burst, then nothing
    assert flood.count(True) == 200
    assert limit.admit("10.32.0.7", 10.0)  # someone else, at the same moment
    later = sum(limit.admit("10.32.0.66", 10.0 + i / 1000) for i in range(1000))  # over the next second
    assert 99 <= later <= 100  # its rate
    for i in range(50):  # many addresses: each new one untracked once the table is full, the shared bucket holds
        limit.admit(f"10.40.0.{i}", 11.0)
    assert len(limit.clients) == 3
    assert limit.admit("10.32.0.9", 200.0) and "10.32.0.9" in limit.clients  # idle clients made room
    assert all(QueryLimit(rate=0).admit("x", 0.0) for _ in range(10_000))  # 0: no limit
