"""IPAM numbers: durable allocation latency and throughput through the local API, bootstrap time of two routers,
and the space-donation round trip in simulation.

    .venv/bin/python bench/ipam_bench.py [--allocations 2000]

Real `weave-node router` processes on loopback (no root needed), each with its own state dir, talking HTTP over
its unix socket with keep-alive, as the CNI plugin will. Baselines measured in the same run:
- API: the same connection doing GET /status/targets (an HTTP round trip through the router, no disk write);
- disk: a bare sqlite3 WAL synchronous=FULL commit of one row in the same directory;
- bootstrap: the time until both routers answer their API at all.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import BIN, free_port

from weave_node.api.client import _UnixHTTPConnection
from weave_node.core.address import parse_range
from weave_node.ipam.model import Init, Key
from weave_node.ipam.sim import IpamSim


class Client:
    def __init__(self, sock: Path) -> None:
        self.conn = _UnixHTTPConnection(str(sock), 30)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())


def start_router(tmp: Path, name: str, port: int, peers: list[int], mac: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock = tmp / f"{name}.sock"
    args = [str(BIN / "weave-node"), "router", "--name", mac, "--nickname", name, "--port", str(port)]
    args += ["--listen-host", "127.0.0.1", "--status-addr", "none", "--status-socket", str(sock)]
    args += ["--datapath", "none", "--metrics-addr", "none"]
    args += ["--state-dir", str(tmp / name), "--gossip-interval", "1", *[f"127.0.0.1:{p}" for p in peers]]
    log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT), sock


def wait_socket(sock: Path, deadline: float) -> None:
    while not sock.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"router socket {sock} never appeared")
        time.sleep(0.002)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def sqlite_baseline(tmp: Path, n: int) -> list[float]:
    db = sqlite3.connect(str(tmp / "baseline.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (ip INTEGER PRIMARY KEY, cid TEXT)")
    out = []
    for i in range(n):
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (i, f"c{i}"))
        db.execute("COMMIT")
        out.append(time.perf_counter() - t)
    db.close()
    return out


def latency(tmp: Path, n: int) -> None:
    proc, sock = start_router(tmp, "solo", free_port(), [], "02:00:00:00:00:01")
    try:
        wait_socket(sock, time.monotonic() + 10)
        c = Client(sock)
        while c.call("GET", "/status/ipam")[1].get("ready") is not True:
            time.sleep(0.01)
        base = []
        for _ in range(n):
            t = time.perf_counter()
            c.call("GET", "/status/targets")
            base.append(time.perf_counter() - t)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            status, doc = c.call("POST", "/ipam/allocate", {"container_id": f"seq-{i}"})
            lat.append(time.perf_counter() - t)
            assert status == 200, doc
        seq_rate = n / (time.perf_counter() - t0)
        results: list[float] = []
        lock = threading.Lock()

        def worker(w: int) -> None:
            cw = Client(sock)
            for i in range(n // 8):
                t = time.perf_counter()
                status, _ = cw.call("POST", "/ipam/allocate", {"container_id": f"par-{w}-{i}"})
                assert status == 200
                with lock:
                    results.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        par_rate = len(results) / (time.perf_counter() - t0)
        disk = sqlite_baseline(tmp, n)
        ms = 1000.0
        print(f"durable allocation through the API, {n} sequential (keep-alive, unix socket):")
        print(f"  allocate       p50 {pct(lat, 50) * ms:.3f} ms  p99 {pct(lat, 99) * ms:.3f} ms  {seq_rate:,.0f}/s")
        print(f"  baseline GET   p50 {pct(base, 50) * ms:.3f} ms  p99 {pct(base, 99) * ms:.3f} ms")
        print(f"  baseline disk  p50 {pct(disk, 50) * ms:.3f} ms  p99 {pct(disk, 99) * ms:.3f} ms (sqlite WAL commit)")
        print(f"  ratio allocate/GET p50 {pct(lat, 50) / pct(base, 50):.2f}x")
        print(f"  8 concurrent clients: {par_rate:,.0f}/s, p50 {pct(results, 50) * ms:.3f} ms")
        met = pct(lat, 50) <= 0.001 and seq_rate >= 1000
        print(f"  goal p50 <= 1.0 ms and >= 1000/s: {'met' if met else 'MISSED'}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def bootstrap(tmp: Path, runs: int) -> None:
    firsts, answers = [], []
    for run in range(runs):
        d = tmp / f"boot{run}"
        d.mkdir()
        pa, pb = free_port(), free_port()
        t0 = time.monotonic()
        a, sa = start_router(d, "a", pa, [pb], "02:00:00:00:01:01")
        b, sb = start_router(d, "b", pb, [pa], "02:00:00:00:01:02")
        try:
            wait_socket(sa, t0 + 10)
            wait_socket(sb, t0 + 10)
            answered = None
            ca = Client(sa)
            while True:
                try:
                    status, _ = ca.call("POST", "/ipam/allocate", {"container_id": "first", "wait": 5})
                except OSError:
                    ca = Client(sa)
                    continue
                answered = answered or time.monotonic()
                if status == 200:
                    break
            firsts.append(time.monotonic() - t0)
            Client(sb).call("GET", "/status")
            answers.append(max(answered, time.monotonic()) - t0)
        finally:
            for p in (a, b):
                p.send_signal(signal.SIGTERM)
                p.wait()
    print(f"two routers started -> first successful allocation (consensus=2), {runs} runs:")
    print(f"  median {statistics.median(firsts):.3f} s, max {max(firsts):.3f} s (goal <= 0.5 s; Weave 2.8.1: 0.52 s)")
    print(f"  baseline: both processes answering their API: median {statistics.median(answers):.3f} s")


def donation() -> None:
    sim = IpamSim([1, 2], span=parse_range("10.32.0.0/24"), init=Init("consensus", peers=2))
    sim.run_until(sim.converged, timeout=5, dt=0.001)
    for i in range(127):
        assert sim.allocate(1, Key(f"c{i}")) is not None
    m0, t0, w0 = sim.messages, sim.now, time.perf_counter()
    sim.allocate_wait(1, Key("extra"), timeout=5, dt=0.001)
    wall = time.perf_counter() - w0
    print("space donation, simulated (a peer out of space asks; the donor grants half its largest free run):")
    print(f"  {sim.messages - m0} messages, {(sim.now - t0) * 1000:.0f} ms of simulated time at 1 ms per hop")
    print(f"  CPU for the whole exchange: {wall * 1000:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--allocations", type=int, default=2000)
    ap.add_argument("--bootstrap-runs", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="weave-ipam-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    latency(tmp, args.allocations)
    bootstrap(tmp, args.bootstrap_runs)
    donation()


if __name__ == "__main__":
    main()
