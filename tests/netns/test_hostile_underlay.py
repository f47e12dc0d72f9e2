"""A hostile host on the underlay against real routers (separate processes in network namespaces):

- a crafted unicast (a destination beyond 48 bits) costs the sender its connection, with no traceback, and the
  router keeps serving;
- 200 idle TCP connections, reopened as soon as the router closes one, from 17 addresses: a real peer still
  joins within seconds, unauthenticated connections stay under their cap, and the router's log stays short;
- datagrams from unknown senders and empty ones on UDP 6783 show in weave_node_sleeve_drops_total.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BIN, poll
from tests.netns.hosts import FAST, Net, RouterProc, netns_hosts
from tests.netns.test_operator import scrape, value
from weave_node.lab.system import ip_batch
from weave_node.mesh.admission import MAX_HANDSHAKES

pytestmark = pytest.mark.netns
JOIN_BOUND = 8.0  # seconds for a real peer to join through the flood (the handshake deadline is 10 s)
LOG_BOUND = 25  # lines the attacked router may log during the flood (unlimited: one per connection closed)
FLOOD_CLOSES = 20_000  # connections the router must have closed (refused, evicted) before the log is counted
EXTRA_SOURCES = 16  # addresses the attacker adds to its host: more than the per-source cap could hold off

CRAFTED_UNICAST = """
import socket, sys, time
from weave_node.mesh.protocol import Connection, Identity, ProtocolConfig
target, name = sys.argv[1], 0x02EE00000001
s = socket.create_connection((target, 6783), timeout=10)
c = Connection(Identity(name, "evil", 1), ProtocolConfig(), outbound=True, now=time.monotonic())
s.sendall(c.data_to_send())
while c.state == "handshake":
    data = s.recv(65536)
    if not data:
        sys.exit("closed during the handshake")
    c.receive_data(data, time.monotonic())
    s.sendall(c.data_to_send())
assert c.state == "established", c.close_reason
crafted = bytes([3, 4]) + b"ipam" + name.to_bytes(8, "big") + (1 << 48).to_bytes(8, "big") + b"x"
c.send_message(crafted, time.monotonic())
s.sendall(c.data_to_send())
try:
    while s.recv(65536):
        pass
except ConnectionResetError:
    pass
print("closed")
"""

# Keeps COUNT idle connections open, spread over the source addresses, and opens another as soon as the router
# closes one (refused, evicted, or at its handshake deadline). Prints "ready", then counters every second.
FLOOD = """
import selectors, socket, sys, time
target, count, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
sel = selectors.DefaultSelector()
opened = closed = 0
def open_one(i):
    global opened
    s = socket.socket()
    s.setblocking(False)
    s.bind((sources[i % len(sources)], 0))
    try:
        s.connect((target, 6783))
    except BlockingIOError:
        pass
    except OSError:
        s.close()
        return
    sel.register(s, selectors.EVENT_READ, i)
    opened += 1
for i in range(count):
    open_one(i)
print("ready", flush=True)
last = time.monotonic()
while True:
    for key, _ in sel.select(0.5):
        try:
            data = key.fileobj.recv(65536)
        except OSError:
            data = b""
        if not data:
            sel.unregister(key.fileobj)
            key.fileobj.close()
            closed += 1
            open_one(key.data)
    if time.monotonic() - last >= 1:
        last = time.monotonic()
        print(opened, closed, flush=True)
"""


def _closed(flood: subprocess.Popen[str]) -> int:
    """The flood's count of connections the router closed, from its next line of counters."""
    assert flood.stdout is not None
    line = flood.stdout.readline().split()
    return int(line[1]) if len(line) == 2 else 0


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    with netns_hosts(3, tmp_path) as n:
        yield n


def _clean(r: RouterProc) -> None:
    text = r.log_text()
    assert "Traceback" not in text and "Task exception was never retrieved" not in text, text[-3000:]


def test_a_crafted_unicast_costs_only_its_connection_and_no_traceback(net: Net) -> None:
    r1 = net.start_router(1, *FAST)
    crafted = net.hosts[2].run(str(BIN / "python"), "-c", CRAFTED_UNICAST, net.hosts[0].address, check=False)
    assert crafted.returncode == 0 and crafted.stdout.strip() == "closed", crafted.stderr
    poll(lambda: "bad message: destination" in r1.log_text(), timeout=10, what="the bad message logged")
    # the router stays healthy: a real peer joins, and the connection task died with no traceback
    r2 = net.start_router(2, *FAST, net.hosts[0].address)
    poll(lambda: r1.established() == {"h2"} and r2.established() == {"h1"}, timeout=20, what="r1-r2 connection")
    assert r1.proc.poll() is None
    assert "evil" not in r1.peers()  # its connection is gone, and with it its place in the topology
    _clean(r1)


def test_a_flood_of_idle_connections_keeps_no_peer_out_nor_floods_the_log(net: Net) -> None:
    h1, _h2, h3 = net.hosts
    sources = [h3.address] + [f"198.19.0.{100 + i}" for i in range(EXTRA_SOURCES)]
    ip_batch(h3.netns, [f"addr add {a}/24 dev eth0" for a in sources[1:]])
    r1 = net.start_router(1, *FAST)
    lines_before = len(r1.log_text().splitlines())
    flood = subprocess.Popen(
        ["ip", "netns", "exec", h3.netns, "python3", "-c", FLOOD, h1.address, "200", *sources],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "ready", flood.stderr
        r2 = net.start_router(2, *FAST, h1.address)
        joined = time.monotonic()
        poll(lambda: r1.established() == {"h2"}, timeout=JOIN_BOUND, what="the real peer joined through the flood")
        joined = time.monotonic() - joined
        handshaking = [c for c in r1.status()["connections"] if c["state"] == "handshaking"]
        assert 0 < len(handshaking) <= MAX_HANDSHAKES
        # The flood goes on until the router has closed FLOOD_CLOSES of its connections (the counters come
        # every second), and the peer's connection stays up through it.
        poll(lambda: _closed(flood) >= FLOOD_CLOSES, timeout=60, what=f"{FLOOD_CLOSES} connections closed")
        assert r2.established() == {"h1"} and r1.established() == {"h2"} and flood.poll() is None
    finally:
        flood.send_signal(signal.SIGTERM)
        flood.communicate(timeout=10)
    lines = r1.log_text().splitlines()
    stats = f"joined after {joined:.2f} s; {len(lines)} log lines"
    assert len(lines) - lines_before <= LOG_BOUND, stats + "\n" + "\n".join(lines[-60:])
    assert any("refused" in line for line in lines)
    _clean(r1)


def test_hostile_datagrams_on_the_sleeve_port_are_counted_as_drops(net: Net) -> None:
    h1, _h2, h3 = net.hosts
    r1 = net.start_router(1, *FAST, "--metrics-addr", f"{h1.address}:6782", datapath=True)
    poll(lambda: "counters" in (r1.status().get("datapath", {}).get("sleeve") or {}), timeout=20, what="the sleeve")
    send = (
        "import socket, sys\n"
        "for port, payload, n in ((6783, b'', 5), (6783, b'hostile', 7), (0, b'x' * 100, 3)):\n"
        "    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
        "        s.bind(('', port))\n"
        "        for _ in range(n):\n"
        "            s.sendto(payload, (sys.argv[1], 6783))\n"
    )
    h3.run("python3", "-c", send, h1.address)

    def drops() -> tuple[float, float]:
        samples = scrape(net, r1)
        return (
            value(samples, "weave_node_sleeve_drops_total", reason="empty"),
            value(samples, "weave_node_sleeve_drops_total", reason="unknown_sender"),
        )

    poll(lambda: drops() == (5, 10), timeout=10, what="5 empty and 10 unknown-sender drops in the metrics")
    sleeve = r1.status()["datapath"]["sleeve"]
    assert sleeve["drops"] == {"empty": 5, "unknown_sender": 10} and "unknown_sender" not in sleeve["counters"]
    _clean(r1)
