"""Real routers (separate processes) in network namespaces: mesh formation, failure detection, restart,
password mismatch and a garbling peer."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import poll
from tests.netns.hosts import Net, netns_hosts

FAST = ["--heartbeat-interval", "0.5", "--gossip-interval", "1"]  # heartbeat timeout = 1.5 s


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with netns_hosts(4, tmp_path) as n:
        yield n


def test_three_routers_form_a_full_mesh_from_a_chain_of_seeds_and_survive_a_kill(net: Net, tmp_path: Path) -> None:
    h = net.hosts
    r1 = net.start_router(1, *FAST)
    r2 = net.start_router(2, *FAST, h[0].address)
    r3 = net.start_router(3, *FAST, h[1].address)  # r3 only knows r2: it learns r1 from the topology
    for r, others in ((r1, {"h2", "h3"}), (r2, {"h1", "h3"}), (r3, {"h1", "h2"})):
        poll(lambda r=r, o=others: r.established() == o, timeout=20, what=f"{r.host.netns} connected to {others}")
    names = {frozenset(r.peers()) for r in (r1, r2, r3)}
    assert names == {frozenset({"h1", "h2", "h3"})}
    # Frozen (no FIN, no RST): only heartbeats can tell. Seen within the heartbeat timeout (+ scheduling slack).
    r2.proc.send_signal(signal.SIGSTOP)
    poll(lambda: r1.established() == {"h3"} and r3.established() == {"h1"}, timeout=6, what="r2's loss seen")
    assert "heartbeat timeout" in r1.log_text()
    r2.proc.send_signal(signal.SIGCONT)
    r2.proc.kill()
    r2.proc.wait()
    old_uid = r1.peers().get("h2", {}).get("uid")
    poll(lambda: "h2" not in r1.peers(), timeout=10, what="h2 gone from r1's topology")
    # Restart: a new UID; it rejoins and its new record replaces the old one everywhere.
    r2b = net.start_router(2, *FAST, h[0].address)
    poll(lambda: r3.established() == {"h1", "h2"}, timeout=20, what="r2 back in the mesh")
    new_uid = r3.peers()["h2"]["uid"]
    assert new_uid != old_uid
    poll(lambda: r1.peers().get("h2", {}).get("uid") == new_uid, timeout=10, what="r1 sees r2's new uid")
    assert r2b.established() == {"h1", "h3"}


def test_wrong_password_is_rejected_and_both_sides_say_why(net: Net, tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("correct horse\n")
    bad.write_text("battery staple\n")
    good.chmod(0o600)
    bad.chmod(0o600)
    r1 = net.start_router(1, *FAST, "--password-file", str(good))
    r2 = net.start_router(2, *FAST, "--password-file", str(good), net.hosts[0].address)
    poll(lambda: r1.established() == {"h2"}, timeout=20, what="r1-r2 encrypted connection")
    assert r1.status()["router"]["encryption"] is True
    r3 = net.start_router(3, *FAST, "--password-file", str(bad), net.hosts[0].address)
    poll(lambda: "authentication failed" in r3.log_text(), timeout=20, what="r3 logs the failed handshake")
    poll(lambda: "authentication failed" in r1.log_text(), timeout=20, what="r1 logs the failed handshake")
    # r3 never learns the topology; r1 never adds r3.
    assert set(r3.peers()) == {"h3"}
    assert "h3" not in r1.peers()
    r4 = net.start_router(4, *FAST, net.hosts[0].address)  # no password at all
    poll(lambda: "password" in r4.log_text(), timeout=20, what="r4 told it needs a password")
    assert r1.established() == {"h2"}
    assert "correct horse" not in r1.log_text() + r2.log_text()


def test_a_peer_that_speaks_garbage_is_disconnected_and_the_router_keeps_serving(net: Net) -> None:
    r1 = net.start_router(1, *FAST)
    r2 = net.start_router(2, *FAST, net.hosts[0].address)
    poll(lambda: r1.established() == {"h2"}, timeout=20, what="r1-r2 connection")
    script = (
        "import socket,os\n"
        f"s=socket.create_connection(('{net.hosts[0].address}',6783),timeout=5)\n"
        "s.sendall(b'\\xff\\xff\\xff\\xff'+os.urandom(4096))\n"
        "data=b''\n"
        "try:\n"
        "    while True:\n"
        "        chunk=s.recv(65536)\n"
        "        if not chunk: break\n"
        "        data+=chunk\n"
        "except ConnectionResetError: pass\n"
        "print('closed')\n"
    )
    out = net.hosts[2].run("python3", "-c", script)
    assert out.stdout.strip() == "closed"  # the router hung up on us
    for _ in range(3):
        junk = net.hosts[2].run("python3", "-c", script.replace("b'\\xff\\xff\\xff\\xff'+", ""), check=False)
        assert junk.returncode == 0, junk.stderr
    assert r1.proc.poll() is None
    assert r1.established() == {"h2"}
    assert "connection failed" in r1.log_text()
    assert r2.status()["router"]["peers"] == 2


def test_status_api_is_loopback_only(net: Net) -> None:
    r1 = net.start_router(1, *FAST)
    fetch = (
        "import sys,urllib.request\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)\n"
        "except OSError as e:\n"
        "    print('refused', e)\n"
    )
    inside = net.hosts[0].run("python3", "-c", fetch, "http://127.0.0.1:6784/status")
    assert inside.stdout.strip() == "200"
    # from another namespace, at the host's own address: nothing listens there
    outside = net.hosts[1].run("python3", "-c", fetch, f"http://{net.hosts[0].address}:6784/status")
    assert outside.stdout.startswith("refused"), outside.stdout
    # and on the host itself, at its non-loopback address, neither
    own = net.hosts[0].run("python3", "-c", fetch, f"http://{net.hosts[0].address}:6784/status")
    assert own.stdout.startswith("refused"), own.stdout
    assert r1.proc.poll() is None


def test_simultaneous_dials_end_in_one_connection_both_sides_agree_on(net: Net) -> None:
    h = net.hosts
    r1 = net.start_router(1, *FAST, h[1].address)
    r2 = net.start_router(2, *FAST, h[0].address)  # each dials the other: a duplicate to resolve

    def one_each() -> bool:
        c1 = [c for c in r1.status().get("connections", []) if c["state"] == "established"]
        c2 = [c for c in r2.status().get("connections", []) if c["state"] == "established"]
        return len(c1) == 1 and len(c2) == 1 and (c1[0]["direction"] == "->") == (c2[0]["direction"] == "<-")

    poll(one_each, timeout=20, what="exactly one connection, seen the same way from both ends")
    # The side whose dial lost is connected all the same: no target left "retrying" a peer it is connected to
    # (a dial refused before the other router listened is retried, and then resolved as a duplicate).
    for r in (r1, r2):
        poll(lambda r=r: [t["state"] for t in r.status()["targets"]] == ["connected"], timeout=20,
             what=f"{r.host.netns}: its target connected")  # fmt: skip
    assert one_each()
    terminations = r1.status()["router"]["terminations"]
    # stable: a few heartbeat and gossip rounds later it is the same single connection
    poll(lambda: r1.status()["router"]["uptime_seconds"] > 4, timeout=10, what="a few rounds")
    assert one_each()
    assert r1.status()["router"]["terminations"] == terminations
