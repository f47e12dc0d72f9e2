"""Router memory with many peers: one real `weave-node router` process on loopback, N simulated peers.

    .venv/bin/python bench/router_rss.py [--peers 100]

The simulated peers are Router objects in this process (conn_limit 1: each keeps one connection, to the router
under test). Baseline measured in the same run: the same router with no peer. Prints RSS and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BIN, free_port

from weave_node.core.address import PeerAddress
from weave_node.mesh.protocol import Identity, ProtocolConfig
from weave_node.mesh.router import Router
from weave_node.mesh.settings import MeshSettings


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def status(sock: Path) -> dict[str, object]:
    out = subprocess.run(
        [str(BIN / "weave-node"), "status", "--json", "--socket", str(sock)],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


async def run(n: int) -> None:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="weave-rss-"))
    sock = tmp / "weave.sock"
    proc = subprocess.Popen(
        [
            str(BIN / "weave-node"),
            "router",
            "--listen-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--status-addr",
            "none",
            "--status-socket",
            str(sock),
            "--state-dir",
            str(tmp / "state"),
            "--nickname",
            "under-test",
            "--datapath",
            "none",
            "--metrics-addr",
            "none",
            "--log-level",
            "warning",
        ],
    )
    routers: list[Router] = []
    try:
        deadline = time.monotonic() + 20
        while not status(sock):
            if time.monotonic() > deadline:
                raise SystemExit("router did not start")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        base = rss_mib(proc.pid)
        rng = random.Random(7)
        for i in range(n):
            cfg = MeshSettings(
                port=0,
                listen_host="127.0.0.1",
                peers=(PeerAddress("127.0.0.1", port),),
                conn_limit=1,
                gossip_interval=10.0,
            )
            ident = Identity(name=rng.getrandbits(47) | 1 << 41, nickname=f"sim{i}", uid=rng.getrandbits(63) | 1)
            r = Router(cfg, ident, ProtocolConfig(), rng=random.Random(i))
            await r.start()
            routers.append(r)
        t0 = time.monotonic()
        while True:
            doc = status(sock)
            router = doc.get("router", {}) if doc else {}
            if isinstance(router, dict) and router.get("connections_by_state", {}).get("established", 0) >= n:
                break
            if time.monotonic() - t0 > 60:
                raise SystemExit(f"only {router} after 60 s")
            await asyncio.sleep(0.2)
        mesh_s = time.monotonic() - t0
        await asyncio.sleep(2.0)  # a couple of gossip/heartbeat rounds
        loaded = rss_mib(proc.pid)
        print(f"router RSS, no peer (baseline): {base:.1f} MiB")
        print(f"router RSS, {n} peers connected: {loaded:.1f} MiB  ({loaded / base:.2f}x baseline; goal <= 60 MiB)")
        print(f"{n} peers established in {mesh_s:.2f} s")
    finally:
        for r in routers:
            await r.stop()
        proc.terminate()
        proc.wait(timeout=10)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(args.peers))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
