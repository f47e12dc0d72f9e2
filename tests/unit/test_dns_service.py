"""The router's name records (weave_node/dns/service.py): its own kept across restarts, everyone's gossiped, a
departed peer's gone with its space. Two or three services joined by a fake channel; the file is real."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from weave_node.core.address import parse_ip
from weave_node.dns import wire
from weave_node.dns.node import pod_names
from weave_node.dns.records import InvalidRecord
from weave_node.dns.service import DnsRecords

pytestmark = pytest.mark.unit
A, B, C = 0xA1, 0xB2, 0xC3


class Channel:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def gossip(self, data: bytes) -> None:
        self.sent.append(data)


def service(me: int, path: Path, clock: itertools.count[int]) -> tuple[DnsRecords, Channel]:
    s = DnsRecords(me, path, clock_ns=lambda: next(clock))
    ch = Channel()
    s.attach(ch)  # type: ignore[arg-type]
    return s, ch


def test_own_names_survive_a_restart_without_those_of_pods_gone_meanwhile(tmp_path: Path) -> None:
    clock = itertools.count(1_000)
    a, ch = service(A, tmp_path / "dns.json", clock)
    a.start([])
    assert a.set_container("c1/eth0", ["web", "Web.Shop", "bad..name"], [parse_ip("10.32.0.5")]) == ["web", "web.shop"]
    a.set_container("c2/eth0", ["db"], [parse_ip("10.32.0.6")])
    a.add("legacy", parse_ip("10.40.0.9"))
    assert len(ch.sent) == 4 and a.lookup("web") == [parse_ip("10.32.0.5")]
    assert a.set_container("c1/eth0", ["web"], [parse_ip("10.32.0.5")]) == ["web"] and a.lookup("web.shop") == []
    again, ch2 = service(A, tmp_path / "dns.json", clock)
    again.start(["c1/eth0"])  # c2 went while the router was down
    assert {r["name"] for r in again.listing()} == {"web", "legacy"} and again.lookup("db") == []
    assert again.records.books[A].version > a.records.books[A].version and len(ch2.sent) == 1
    assert again.drop_container("c1/eth0") == 1 and again.remove("legacy", parse_ip("10.40.0.10")) == 0
    assert again.remove("legacy.") == 1 and again.listing() == []
    with pytest.raises(InvalidRecord):
        again.add("-bad-", parse_ip("10.32.0.1"))


def test_books_travel_between_routers_and_a_departed_peer_s_names_go_with_its_space(tmp_path: Path) -> None:
    clock = itertools.count(1_000)
    a, _ = service(A, tmp_path / "a.json", clock)
    b, chb = service(B, tmp_path / "b.json", clock)
    c, _ = service(C, tmp_path / "c.json", clock)
    for s in (a, b, c):
        s.start([])
    b.set_container("p/eth0", ["api"], [parse_ip("10.36.0.2")])
    relayed = a.on_gossip(B, chb.sent[-1])
    assert relayed is not None and a.lookup("api") == [parse_ip("10.36.0.2")]
    assert a.on_gossip(B, chb.sent[-1]) is None  # nothing new: nothing passed on
    assert c.on_gossip(A, relayed) is not None and c.lookup("api") == [parse_ip("10.36.0.2")]
    full = a.gossip_state()
    assert full is not None and {bk.owner for bk in wire.decode(full)} == {A, B}
    a.space_changed([A, B])
    a.space_changed([A])  # B's space went to another (retired or reclaimed): its names go
    assert a.lookup("api") == [] and a.status()["owners_removed"] == 1
    assert a.on_gossip(C, wire.encode([c.records.books[B]])) is None  # a late gossip cannot bring them back
    a.space_changed([A, B])  # B holds space again: readmitted
    assert a.on_gossip(C, wire.encode([c.records.books[B]])) is not None and a.lookup("api")


def test_an_unreadable_file_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "dns.json"
    path.write_text('{"records": [["web", "not-an-ip", "c/eth0"]]}')
    s, _ = service(A, path, itertools.count(1))
    s.start(["c/eth0"])
    assert s.listing() == []


def test_pods_are_named_from_the_cri_s_args_and_never_share_a_name_across_namespaces() -> None:
    assert pod_names({"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "default"}) == ["web", "web.default"]
    assert pod_names({"K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "shop"}) == ["web.shop"]
    assert pod_names({"K8S_POD_NAME": "web.shop", "K8S_POD_NAMESPACE": "default"}) == ["web.shop.default"]
    assert pod_names({"K8S_POD_NAME": "web"}) == ["web", "web.default"] and pod_names({"K8S_POD_NAMESPACE": "x"}) == []


def test_a_name_too_long_for_the_domain_is_refused_and_a_failed_write_loses_nothing(tmp_path: Path) -> None:
    s, ch = service(A, tmp_path / "dns.json", itertools.count(1))
    s.max_name = 20
    s.start([])
    with pytest.raises(InvalidRecord, match="too long"):
        s.add("a" * 21, parse_ip("10.32.0.1"))
    assert s.set_container("c/eth0", ["b" * 21, "ok"], [parse_ip("10.32.0.2")]) == ["ok"]
    (tmp_path / "dns.json").unlink()
    (tmp_path / "dns.json").mkdir()  # the file cannot be written now
    sent = len(ch.sent)
    s.drop_container("c/eth0")  # still taken and gossiped
    assert s.lookup("ok") == [] and len(ch.sent) == sent + 1 and wire.decode(ch.sent[-1])[0].records == ()
