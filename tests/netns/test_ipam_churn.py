"""IPAM through host churn in real routers (issue 18): a host that leaves hands its space over; a re-imaged host's
old identity is reclaimed at once; a host that fences and unfences says so in the log, with what to do; departed
owners are shown the same way everywhere, with when they were last seen."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import poll, run_cli
from tests.netns.hosts import Net, RouterProc, netns_hosts
from tests.netns.test_ipam_routers import FAST, allocate, call

pytestmark = pytest.mark.netns


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with netns_hosts(4, tmp_path) as n:
        yield n


def mesh(net: Net, count: int, *extra: str) -> list[RouterProc]:
    h = net.hosts
    out = []
    for i in range(1, count + 1):
        others = [h[j].address for j in range(count) if j != i - 1]
        out.append(net.start_router(i, *FAST, "--ipalloc-init", f"consensus={count}", *extra, *others))
    for r in out:
        poll(lambda r=r: r.status().get("ipam", {}).get("ready"), timeout=20, what=f"{r.host.netns} IPAM ready")  # type: ignore[misc]
    return out


def owners(r: RouterProc) -> dict[str, dict[str, object]]:
    return {str(o["peer"]): o for o in r.status().get("ipam", {}).get("owners", [])}


def cli(r: RouterProc, *args: str) -> tuple[int, str, str]:
    out = run_cli("weave-node", *args, "--socket", str(r.socket), timeout=60)
    return out.returncode, out.stdout, out.stderr


def test_leave_hands_the_space_over_then_the_host_goes_without_costing_a_quorum(net: Net) -> None:
    r1, r2, r3 = mesh(net, 3, "--ipam-reclaim-after", "6")
    allocate(r3, "pod-on-h3")
    name3 = r3.status()["router"]["name"]
    poll(lambda: name3 in owners(r1), timeout=10, what="h3 an owner")
    code, _, err = cli(r1, "ipam", "rmpeer", "h3")
    assert code == 1 and "is reachable: stop it" in err, err  # rmpeer of a live peer stays refused
    code, _, err = cli(r3, "ipam", "leave")
    assert code == 1 and "still in use by pods" in err, err
    assert name3 in owners(r1), "a refused leave changes nothing"
    code, out, err = cli(r3, "ipam", "leave", "--force")
    assert code == 0, err
    assert out.startswith("handed ") and " addresses to peer " in out, out
    poll(lambda: name3 not in owners(r1) and name3 not in owners(r2), timeout=10, what="h3 owns nothing")
    status, doc = call(r3, "POST", "/ipam/allocate", {"container_id": "late", "wait": 0})
    assert status == 503 and "left the ring" in doc["error"]
    r3.proc.terminate()
    r3.proc.wait()
    # h3 is gone; h1 and h2 are 2 of 2 owners: past the fence time (3 s) they still allocate.
    poll(lambda: "h3" not in r1.established(), timeout=10, what="h1 to notice h3 gone")
    deadline_logs = poll(lambda: r1.status()["ipam"]["ready"], timeout=5, what="ready")
    assert deadline_logs
    for i in range(8):
        allocate(r1, f"after-{i}")
    assert "IPAM fenced" not in r1.log_text() + r2.log_text()


def test_a_re_imaged_host_s_old_identity_is_reclaimed_at_once(net: Net) -> None:
    r1, r2, r3 = mesh(net, 3)  # the default grace period: 600 s
    allocate(r3, "makes-h3-an-owner")
    old = r3.status()["router"]["name"]
    assert old in owners(r1)
    r3.proc.kill()
    r3.proc.wait()
    shutil.rmtree(net.hosts[2].workdir / "state")  # re-installed: a new identity, the same host name
    h = net.hosts
    r3 = net.start_router(3, *FAST, "--ipalloc-init", "consensus=3", h[0].address, h[1].address)
    new = r3.status()["router"]["name"]
    assert new != old
    poll(lambda: old not in owners(r1), timeout=20, what="the old identity reclaimed")
    log = r1.log_text() + r2.log_text()
    assert f"replaced by peer {new} (h3)" in log, log[-2000:]
    allocate(r3, "on-the-new-h3")
    assert all(r.status()["ipam"]["ready"] for r in (r1, r2, r3))


def test_fencing_and_unfencing_are_logged_and_departed_owners_show_when_last_seen(net: Net) -> None:
    r1, r2, r3 = mesh(net, 3, "--ipam-reclaim-after", "4")
    for r in (r2, r3):
        allocate(r, "makes-it-an-owner")
    poll(lambda: len(owners(r1)) == 3, timeout=10, what="three owners")
    for r in (r2, r3):
        r.proc.kill()
        r.proc.wait()
    poll(lambda: "IPAM fenced" in r1.log_text(), timeout=15, what="h1 to log that it fenced")
    line = next(ln for ln in r1.log_text().splitlines() if "IPAM fenced" in ln)
    assert "ERROR" in line and "1 of the 3 owners" in line and "rmpeer" in line and "(h2)" in line, line
    doc = r1.status()["ipam"]
    assert not doc["ready"] and doc["waiting"].startswith("fenced")
    away = [o for o in doc["owners"] if not o["reachable"]]
    assert {o["nickname"] for o in away} == {"h2", "h3"}
    assert all(o["last_seen"] and o["last_seen"] != "now" and o["unreachable_for"] > 0 for o in away), away
    code, out, _ = cli(r1, "status", "ipam")
    assert code == 0 and " ".join(out.split()).count("no, seen ") == 2, out
    h = net.hosts
    net.start_router(2, *FAST, "--ipalloc-init", "consensus=3", "--ipam-reclaim-after", "4", h[0].address)
    poll(lambda: "IPAM unfenced" in r1.log_text(), timeout=20, what="h1 to log that it unfenced")
    allocate(r1, "after-unfence")


def test_a_host_that_joins_later_knows_departed_owners_by_name(net: Net) -> None:
    r1, _r2, r3 = mesh(net, 3)
    allocate(r3, "makes-h3-an-owner")
    gone = r3.status()["router"]["name"]
    poll(lambda: gone in owners(r1), timeout=10, what="h3 an owner")
    r3.proc.kill()
    r3.proc.wait()
    h = net.hosts
    r4 = net.start_router(4, *FAST, h[0].address, h[1].address)
    poll(lambda: gone in owners(r4), timeout=20, what="h4 to learn the ring")
    poll(lambda: owners(r4)[gone]["nickname"] == "h3", timeout=10, what="h3's nickname gossiped to h4")
    assert owners(r4)[gone]["unreachable_for"] is None and owners(r4)[gone]["last_seen"] is None
    code, out, _ = cli(r4, "status", "ipam")
    assert code == 0 and "never seen here" in " ".join(out.split()) and "h3" in out, out
    assert owners(r1)[gone]["nickname"] == "h3"
