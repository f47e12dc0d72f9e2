"""IPAM in real routers (separate processes, real sqlite, real HTTP over the unix socket): crash safety,
concurrency, bad input, bootstrap between two routers, rmpeer from the CLI."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, poll, run_cli
from tests.netns.hosts import Net, RouterProc, netns_hosts
from weave_node.api.client import _UnixHTTPConnection

FAST = ["--heartbeat-interval", "0.5", "--gossip-interval", "1"]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with netns_hosts(3, tmp_path) as n:
        yield n


def call(r: RouterProc, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    conn = _UnixHTTPConnection(str(r.socket), timeout=30)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, data, {"Content-Type": "application/json"} if data is not None else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def allocate(r: RouterProc, cid: str) -> str:
    status, doc = call(r, "POST", "/ipam/allocate", {"container_id": cid})
    assert status == 200, doc
    return str(doc["ip"])


def test_sigkill_keeps_every_allocation_and_never_hands_one_out_twice(net: Net) -> None:
    r = net.start_router(1, *FAST)
    first = {f"pod-{i}": allocate(r, f"pod-{i}") for i in range(1000)}
    assert len(set(first.values())) == 1000
    r.proc.send_signal(signal.SIGKILL)
    r.proc.wait()
    r = net.start_router(1, *FAST)
    for cid, ip in first.items():  # re-adding every container gets its own address back
        status, doc = call(r, "POST", "/ipam/claim", {"container_id": cid, "ip": ip})
        assert (status, doc["ip"]) == (200, ip)
        status, doc = call(r, "POST", "/ipam/allocate", {"container_id": cid})
        assert (status, doc["ip"]) == (200, ip)
    more = [allocate(r, f"new-{i}") for i in range(100)]
    assert len(set(more)) == 100 and not set(more) & set(first.values())
    status, rows = call(r, "GET", "/ipam/allocations")
    assert status == 200 and len(rows) == 1100 and len({row["ip"] for row in rows}) == 1100
    assert "1000 allocation(s) restored" in r.log_text()


def test_fifty_concurrent_allocations_are_all_unique(net: Net) -> None:
    r = net.start_router(1, *FAST)
    with ThreadPoolExecutor(max_workers=50) as pool:
        ips = list(pool.map(lambda i: allocate(r, f"c{i}"), range(50)))
        again = list(pool.map(lambda i: allocate(r, f"c{i % 10}"), range(50)))  # same ids: same answers
    assert len(set(ips)) == 50
    assert again == [ips[i % 10] for i in range(50)]


def test_bad_input_gets_a_clear_4xx_and_changes_nothing(net: Net) -> None:
    r = net.start_router(1, *FAST)
    allocate(r, "keep")
    _, before = call(r, "GET", "/ipam/allocations")
    cases: list[tuple[str, bytes, int, str]] = [
        ("/ipam/allocate", b"{not json", 400, "not valid JSON"),
        ("/ipam/allocate", b"[1, 2]", 400, "JSON object"),
        ("/ipam/allocate", b'{"container_id": 7}', 400, "must be strings"),
        ("/ipam/allocate", b'{"container_id": "x", "ifname": "a/b"}', 400, "ifname"),
        ("/ipam/allocate", b'{"container_id": "x", "wait": "soon"}', 400, "wait"),
        ("/ipam/allocate", b"x" * 70_000, 400, "too large"),
        ("/ipam/release", b'{"container_id": "ghost"}', 404, "no address is allocated to ghost"),
        ("/ipam/claim", b'{"container_id": "x", "ip": "10.99.0.1"}', 400, "not a usable address"),
        ("/ipam/claim", b'{"container_id": "x", "ip": "10.32.0.0"}', 400, "not a usable address"),
        ("/ipam/claim", b'{"container_id": "x", "ip": "banana"}', 400, "not an IPv4 address"),
        ("/ipam/rmpeer/nobody", b"", 404, "no peer named"),
    ]
    for path, raw, code, text in cases:
        status, doc = call(r, "POST", path, raw=raw)
        assert status == code and text in doc["error"], (path, raw[:40], status, doc)
    _, after = call(r, "GET", "/ipam/allocations")
    assert after == before
    out = run_cli("weave-node", "ipam", "release", "ghost", "--socket", str(r.socket))
    assert out.returncode == 1 and out.stderr.strip() == "weave-node: error: no address is allocated to ghost"


def test_two_routers_bootstrap_by_consensus_and_allocate_disjoint_addresses(net: Net) -> None:
    h = net.hosts
    r1 = net.start_router(1, *FAST, h[1].address)
    r2 = net.start_router(2, *FAST, h[0].address)  # consensus=2: each waits for the other
    a = allocate(r1, "a")
    b = allocate(r2, "b")
    assert a != b
    doc = poll(lambda: r1.status().get("ipam", {}), timeout=5, what="ipam status")
    assert doc["ready"] and doc["init"] == "consensus=2"
    owners = poll(lambda: [o for o in r1.status()["ipam"]["owners"] if o["nickname"]], timeout=5, what="owners")
    assert {o["nickname"] for o in owners} == {"h1", "h2"}
    assert sum(o["size"] for o in owners) == 1 << 20
    out = run_cli("weave-node", "status", "ipam", "--socket", str(r1.socket), check=True)
    assert "10.32.0.0/12 (consensus=2): ready" in out.stdout and "h2" in out.stdout
    # h2 goes away for good; rmpeer on h1 takes its space at once, refused while it is still reachable.
    refused = run_cli("weave-node", "ipam", "rmpeer", "h2", "--socket", str(r1.socket))
    assert refused.returncode == 1 and "is reachable" in refused.stderr
    r2.proc.kill()
    r2.proc.wait()
    poll(lambda: r1.established() == set(), timeout=10, what="h2 gone")
    poll(lambda: len(r1.peers()) == 1, timeout=10, what="h2 out of the topology")
    out = run_cli("weave-node", "ipam", "rmpeer", "h2", "--socket", str(r1.socket), check=True)
    assert out.stdout.startswith("took over 5242") and "rmpeer: took over" in r1.log_text()
    assert [o["nickname"] for o in r1.status()["ipam"]["owners"]] == ["h1"]


def test_a_wrong_range_is_refused_before_anything_starts(net: Net, tmp_path: Path) -> None:
    out = run_cli("weave-node", "router", "--ipalloc-range", "10.32.0.1/12", "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 1 and "not an IPv4 or IPv6 CIDR with its host bits zero" in out.stderr
    r = net.start_router(1, *FAST)
    allocate(r, "x")
    r.proc.terminate()
    r.proc.wait()
    out = r.host.run(
        str(BIN / "weave-node"), "router", "--ipalloc-range", "10.40.0.0/16", "--state-dir",
        str(r.host.workdir / "state"), "--status-socket", "none", "--status-addr", "none", check=False,
    )  # fmt: skip
    assert out.returncode == 1 and "is for the range 10.32.0.0/12, not 10.40.0.0/16" in out.stderr


def test_a_killed_router_s_space_is_reclaimed_and_it_comes_back_clean(net: Net) -> None:
    h = net.hosts
    reclaim = ["--ipam-reclaim-after", "3"]
    r1 = net.start_router(1, *FAST, *reclaim, h[1].address, h[2].address)
    r2 = net.start_router(2, *FAST, *reclaim, h[0].address, h[2].address)
    r3 = net.start_router(3, *FAST, *reclaim, h[0].address, h[1].address)
    held = allocate(r3, "pod-on-h3")
    allocate(r1, "pod-on-h1")
    r3.proc.kill()
    r3.proc.wait()

    def owners() -> set[str]:
        return {o["nickname"] for o in r1.status().get("ipam", {}).get("owners", [])}

    poll(lambda: owners() == {"h1", "h2"}, timeout=15, what="h3's space reclaimed")
    reclaimer = [r for r in (r1, r2) if "reclaimed" in r.log_text()]
    assert len(reclaimer) == 1, "exactly one survivor reclaims"
    assert "unreachable for" in reclaimer[0].log_text()
    # h3 comes back with its old state: its space is gone, but its pod's address is still free at the reclaimer,
    # so h3 asks for it back and the pod keeps it (issue 18 item 3); new pods get space anew.
    r3 = net.start_router(3, *FAST, *reclaim, h[0].address, h[1].address)
    poll(lambda: "our space was reclaimed by peer" in r3.log_text(), timeout=15, what="h3 learns of the reclaim")
    assert "pod-on-h3/eth0=" + held in r3.log_text()
    poll(lambda: f"took back {held} for pod pod-on-h3/eth0" in r3.log_text(), timeout=15, what="the pod's address back")
    again = allocate(r3, "pod-on-h3-again")
    _, rows1 = call(r1, "GET", "/ipam/allocations")
    _, rows2 = call(r2, "GET", "/ipam/allocations")
    _, rows3 = call(r3, "GET", "/ipam/allocations")
    ips = [row["ip"] for row in rows1 + rows2 + rows3]
    assert len(ips) == len(set(ips)) == 3 and again in ips
    assert {row["container_id"]: row["ip"] for row in rows3}["pod-on-h3"] == held
