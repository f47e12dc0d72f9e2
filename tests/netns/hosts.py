"""Hosts as bare network namespaces on an underlay bridge (lighter than the lab: no systemd), and routers
started in them as real processes. Everything is named after this test process and removed at the end."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import BIN, poll
from weave_node.lab.system import ip_batch

SUBNET = "198.19.{}.{}"
SUBNET6 = "2001:db8:19::{}"  # an IPv6-only underlay (documentation range, inside our namespaces)
FAST = ["--heartbeat-interval", "0.5", "--gossip-interval", "1"]


@dataclass
class NsHost:
    netns: str
    address: str
    workdir: Path

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *args], capture_output=True, text=True, check=check, timeout=timeout
        )


@dataclass
class RouterProc:
    host: NsHost
    proc: subprocess.Popen[bytes]
    log: Path
    socket: Path
    args: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(BIN / "weave-node"), "status", "--json", "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if out.returncode != 0:
            return {}
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc

    def established(self) -> set[str]:
        doc = self.status()
        return {c["nickname"] for c in doc.get("connections", []) if c["state"] == "established"}

    def peers(self) -> dict[str, dict[str, Any]]:
        return {p["nickname"]: p for p in self.status().get("peers", [])}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Net:
    def __init__(self, tag: str, count: int, base: Path, mtu: int = 1500, ipv6: bool = False) -> None:
        self.tag = tag
        self.mtu = mtu
        self.ipv6 = ipv6
        self.underlay = f"wnt-{tag}-u"
        self.hosts = [
            NsHost(f"wnt-{tag}-h{i}", SUBNET6.format(i) if ipv6 else SUBNET.format(0, i), base / f"h{i}")
            for i in range(1, count + 1)
        ]
        self.routers: list[RouterProc] = []

    def up(self) -> None:
        cmds = [f"netns add {self.underlay}"] + [f"netns add {h.netns}" for h in self.hosts]
        cmds += [
            f"link add v{i} netns {self.underlay} type veth peer name eth0 netns {h.netns}"
            for i, h in enumerate(self.hosts, 1)
        ]
        ip_batch(None, cmds)
        ip_batch(
            self.underlay,
            ["link set lo up", f"link add br0 mtu {self.mtu} type bridge", "link set br0 up"]
            + [f"link set v{i} mtu {self.mtu} master br0 up" for i in range(1, len(self.hosts) + 1)],
        )
        for h in self.hosts:
            h.workdir.mkdir(parents=True, exist_ok=True)
            ip_batch(
                h.netns,
                [
                    "link set lo up",
                    f"addr add {h.address}/64 dev eth0 nodad" if self.ipv6 else f"addr add {h.address}/24 dev eth0",
                    f"link set eth0 mtu {self.mtu} up",
                ],
            )

    def start_router(
        self, index: int, *args: str, env: dict[str, str] | None = None, datapath: bool = False
    ) -> RouterProc:
        """A router in host `index`; without `datapath` it runs mesh and IPAM only (--datapath none)."""
        host = self.hosts[index - 1]
        sock = host.workdir / "weave.sock"
        log = host.workdir / f"router-{len(self.routers)}.log"
        cmd = [
            "ip",
            "netns",
            "exec",
            host.netns,
            str(BIN / "weave-node"),
            "router",
            "--nickname",
            f"h{index}",
            "--state-dir",
            str(host.workdir / "state"),
            "--status-socket",
            str(sock),
            *([] if datapath else ["--datapath", "none"]),
            *args,
        ]
        full_env = dict(os.environ, **(env or {}))
        full_env.pop("WEAVE_PASSWORD", None)
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env)
        r = RouterProc(host=host, proc=proc, log=log, socket=sock, args=list(args))
        self.routers.append(r)
        poll(lambda: proc.poll() is not None or r.status(), timeout=20, what=f"router h{index} to answer")
        assert proc.poll() is None, log.read_text()
        return r

    def down(self) -> None:
        for r in self.routers:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGCONT)
                    r.proc.kill()
                r.proc.wait(timeout=10)
        for ns in [h.netns for h in self.hosts] + [self.underlay]:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


_nets = itertools.count()


@contextlib.contextmanager
def netns_hosts(count: int, base: Path, mtu: int = 1500, *, ipv6: bool = False) -> Iterator[Net]:
    """`count` hosts; several sets may be up at once (named after this process and a counter). `mtu`: the
    underlay's (9000: jumbo frames); `ipv6`: an IPv6-only underlay (SUBNET6), no IPv4 address on it."""
    net = Net(f"{os.getpid() % 100000}{next(_nets)}", count, base, mtu, ipv6)
    try:
        net.up()
        yield net
    finally:
        net.down()


def peers_fastdp(r: RouterProc, count: int) -> bool:
    peers = r.status().get("datapath", {}).get("peers", [])
    return len(peers) == count and all(p["mode"] in ("fastdp", "direct") for p in peers)  # the kernel datapath


def start_mesh(net: Net, *extra: str) -> list[RouterProc]:
    addrs = [h.address for h in net.hosts]
    routers = [
        net.start_router(i, *FAST, *extra, *[a for a in addrs if a != h.address], datapath=True)
        for i, h in enumerate(net.hosts, 1)
    ]
    for r in routers:
        poll(lambda r=r: peers_fastdp(r, len(routers) - 1), timeout=40, what=f"{r.host.netns}: fastdp to all peers")
    return routers
