"""Sleeve numbers: TCP pod -> pod through the sleeve (plain and encrypted) against the kernel VXLAN fast datapath
measured in the same run, the router CPU it costs per Gbit/s, how long a peer takes to fall back to the sleeve
when UDP 6784 is blocked and to return when it is unblocked, and the codec's sealing speed.

    .venv/bin/python bench/sleeve_bench.py [--runs 3] [--seconds 5] [--switch-runs 3]

Needs root: three pairs of hosts (network namespaces on an underlay bridge, tests/netns/hosts.py), each with two
real `weave-node router` processes and a pod on each host:
  fastdp     the default: kernel VXLAN (the baseline of every ratio)
  sleeve     `--no-fastdp`: every frame through the TAP and the forwarder, plain datagrams
  encrypted  `--password-file`: every frame sealed (NaCl secretbox), pods' MTU 1396
iperf3, one TCP stream, median of `runs`, the order of the paths rotating run by run. CPU = utime + stime of
both routers (from /proc/PID/stat) over the run, divided by the Gbit/s moved; user (Python's own work) and
system (the kernel's, in the routers' system calls: copies, and the bridge and pod stack a TAP write drives)
are shown apart. Fallback: on the fastdp pair, UDP
6784 dropped between the hosts in the underlay's FORWARD chain at t = 0; time until both routers report "sleeve"
(and a ping through), then unblocked: time until both report "fastdp". The VM has 2 cores (iperf3's client,
server, both routers and both kernels' softirqs share them) and about +-10-15 % noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import terminate_cleanly
from datapath_bench import FAST, iperf, launch_router, median, ns_run, peer_mode

from tests.helpers import poll
from tests.netns.hosts import Net, RouterProc, netns_hosts
from tests.netns.pods import PodNs, make_pod, remove_pods
from weave_node.overlay.sleeve.codec import packed_size

PATHS = [("fastdp", "kernel VXLAN (fastdp)"), ("sleeve", "sleeve, plain"), ("encrypted", "sleeve, encrypted")]
WEAVE_GO_SLEEVE = 0.279  # Gbit/s, Weave's Go sleeve on these machines (../shared/SLEEVE-NOTES.md)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(r: RouterProc) -> tuple[float, float]:
    """(user, system) CPU seconds of a router: Python's own work, and the kernel's in its system calls."""
    fields = Path(f"/proc/{r.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def router_cpu(routers: list[RouterProc]) -> tuple[float, float]:
    times = [cpu_seconds(r) for r in routers]
    return sum(u for u, _ in times), sum(s for _, s in times)


def mesh(net: Net, *args: str, mode: str) -> list[RouterProc]:
    a1, a2 = (h.address for h in net.hosts)
    routers = [launch_router(net, 1, *FAST, *args, a2), launch_router(net, 2, *FAST, *args, a1)]
    for r, other in zip(routers, ("h2", "h1"), strict=True):
        poll(lambda r=r, o=other: peer_mode(r, o) == mode, timeout=60, what=f"{r.host.netns}: {mode}", interval=0.1)
    return routers


def block(net: Net, add: bool) -> None:
    a1, a2 = (h.address for h in net.hosts)
    for src, dst in ((a1, a2), (a2, a1)):
        ns_run(net.underlay, "iptables", "-w", "5", "-I" if add else "-D", "FORWARD", "-s", src, "-d", dst,
               "-p", "udp", "--dport", "6784", "-j", "DROP")  # fmt: skip


def throughput(base: Path, runs: int, seconds: int, switch_runs: int, mtu: int = 1500) -> dict[str, Any]:
    pw = base / "password"
    pw.write_text("sleeve benchmark password")
    pw.chmod(0o600)
    args = {"fastdp": ("fastdp", []), "sleeve": ("sleeve", ["--no-fastdp"]),
            "encrypted": ("sleeve", ["--password-file", str(pw)])}  # fmt: skip
    results: dict[str, list[tuple[float, float, float]]] = {k: [] for k, _ in PATHS}  # (bit/s, user, system)
    pods: list[PodNs] = []
    with (
        netns_hosts(2, base / "fastdp", mtu) as n_fast,
        netns_hosts(2, base / "sleeve", mtu) as n_sleeve,
        netns_hosts(2, base / "enc", mtu) as n_enc,
    ):
        nets = {"fastdp": n_fast, "sleeve": n_sleeve, "encrypted": n_enc}
        try:
            routers: dict[str, list[RouterProc]] = {}
            pairs: dict[str, tuple[str, str, str]] = {}
            for key, net in nets.items():
                mode, extra = args[key]
                routers[key] = mesh(net, *extra, mode=mode)
                pods.append(make_pod(routers[key][0], f"{key[:3]}a"))  # one by one: a failure still cleans up
                pods.append(make_pod(routers[key][1], f"{key[:3]}b"))
                a, b = pods[-2:]
                pairs[key] = (a.name, b.name, b.ip)
                ns_run(a.name, "ping", "-c", "1", "-W", "5", b.ip)
            mtus = {k: r[0].status()["datapath"]["mtu"] for k, r in routers.items()}
            print(f"throughput: iperf3, 1 TCP stream, {seconds} s (first second omitted), median of {runs} runs")
            print(f"  underlay MTU {mtu}, pod MTU: {mtus}")
            for key in ("sleeve", "encrypted"):  # the datagram size the probes verified
                link = routers[key][0].status()["datapath"]["peers"][0]["sleeve"]["link"]
                print(f"  {key}: sleeve datagrams verified at {link['verified_mtu']} B")
            keys = list(pairs)
            for run in range(runs):
                for key in keys[run % len(keys) :] + keys[: run % len(keys)]:
                    u0, s0 = router_cpu(routers[key])
                    t0 = time.monotonic()
                    res = iperf(*pairs[key], seconds)
                    u1, s1 = router_cpu(routers[key])
                    wall = time.monotonic() - t0
                    results[key].append((res.bps, (u1 - u0) / wall, (s1 - s0) / wall))
                print(f"  run {run + 1}: " + ", ".join(f"{k} {v[-1][0] / 1e9:.2f}" for k, v in results.items()))
            counters = {k: routers[k][0].status()["datapath"].get("sleeve") for k in ("sleeve", "encrypted")}
            switch = fallback(n_fast, routers["fastdp"], pods[0], pods[1], switch_runs)
        finally:
            remove_pods(pods)
    med = {k: median([b for b, _, _ in v]) for k, v in results.items()}
    user = {k: median([u for _, u, _ in v]) for k, v in results.items()}
    system = {k: median([s for _, _, s in v]) for k, v in results.items()}
    cpu = {k: user[k] + system[k] for k in results}
    base_bps = med["fastdp"]
    print(
        f"  {'path':<26}{'Gbit/s':>8}{'x fastdp':>10}{'x Go sleeve':>13}{'router CPU':>12}{'user+sys':>12}"
        f"{'CPU s/Gbit':>12}"
    )
    for key, label in PATHS:
        gbit = med[key] / 1e9
        print(
            f"  {label:<26}{gbit:>8.2f}{med[key] / base_bps:>10.2f}{gbit / WEAVE_GO_SLEEVE:>13.1f}"
            f"{cpu[key]:>11.2f}c{user[key]:>6.2f}+{system[key]:.2f}{cpu[key] / gbit:>12.2f}"
        )
    for key, goal in (("sleeve", 0.6), ("encrypted", 0.35)):
        ratio = med[key] / base_bps
        print(f"  goal {key} >= {goal} x fastdp: {ratio:.2f} -> {'met' if ratio >= goal else 'MISSED'}")
    for k, c in counters.items():
        print(f"  {k} forwarder on h1: counters {c and c.get('counters')}, drops {c and c.get('drops')}")
    print(
        f"  fallback after blocking UDP 6784: median {switch['fallback']:.1f} s, "
        f"return after unblocking: median {switch['return']:.1f} s ({switch_runs} runs)"
    )
    return {"median_bps": med, "cpu": cpu, "switch": switch}


def fallback(net: Net, routers: list[RouterProc], a: PodNs, b: PodNs, runs: int) -> dict[str, float]:
    out: dict[str, list[float]] = {"fallback": [], "return": []}
    for _ in range(runs):
        block(net, add=True)
        t0 = time.monotonic()
        try:
            poll(lambda: all(peer_mode(r, o) == "sleeve" for r, o in zip(routers, ("h2", "h1"), strict=True)),
                 timeout=30, what="sleeve", interval=0.05)  # fmt: skip
            out["fallback"].append(time.monotonic() - t0)
            ns_run(a.name, "ping", "-c", "1", "-W", "5", b.ip)
        finally:
            block(net, add=False)
        t0 = time.monotonic()
        poll(lambda: all(peer_mode(r, o) == "fastdp" for r, o in zip(routers, ("h2", "h1"), strict=True)),
             timeout=30, what="fastdp", interval=0.05)  # fmt: skip
        out["return"].append(time.monotonic() - t0)
        ns_run(a.name, "ping", "-c", "1", "-W", "5", b.ip)
    return {k: median(v) for k, v in out.items()}


def codec(rounds: int = 300) -> None:
    """Sealing a 62 KB super-frame into 1472-byte datagrams, one core: PyNaCl's high-level secretbox per
    datagram plus concatenation (the first version: the baseline), against what the forwarder does (in place,
    one buffer laid out for UDP GSO), with each cipher."""
    import nacl.bindings

    from weave_node.overlay.sleeve.codec import INNER, MODE_AESGCM, OUTER, Sealer, aesgcm_available, overhead

    message = os.urandom(62_000)
    key = bytes(32)
    out = bytearray(packed_size(len(message), 1472))
    src, dst = b"\x02" * 6, b"\x03" * 6

    def naive() -> None:
        room = 1472 - overhead(True)
        view = memoryview(message)
        count = -(-len(message) // room)
        parts = []
        for i in range(count):
            inner = INNER.pack(1, 0, count, 1, i, 8, 0, src, dst)
            box = nacl.bindings.crypto_secretbox(inner + bytes(view[i * room : (i + 1) * room]), bytes(24), key)
            parts.append(OUTER.pack(1, 1, 0, i) + box)
        b"".join(parts)

    def packer(sealer: Sealer) -> Callable[[], None]:
        return lambda: sealer.pack(out, message, msg_id=1, src=src, dst=dst, segment_size=1472) and None

    cases = [("naive", naive), ("secretbox", packer(Sealer(key))), ("plain", packer(Sealer(None)))]
    if aesgcm_available():
        cases.append(("aes-gcm", packer(Sealer(key, mode=MODE_AESGCM))))
    rates = {}
    for name, fn in cases:
        fn()
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        rates[name] = rounds * len(message) * 8 / (time.perf_counter() - t0) / 1e9
    print("codec, one core, 62 KB super-frame into 1472-byte datagrams (Gbit/s of payload, x baseline):")
    labels = {"naive": "PyNaCl secretbox per datagram + join (baseline)", "secretbox": "in place, secretbox",
              "aes-gcm": "in place, AES-256-GCM", "plain": "in place, plain (no password)"}  # fmt: skip
    for name, rate in rates.items():
        print(f"  {labels[name]:<50}{rate:6.2f}  {rate / rates['naive']:5.2f}x")


def receive(batches: int = 600) -> None:
    """The receive side, one core, in process: a GRO batch of the datagrams of a 62 KB super-frame handed to the
    forwarder's fast path (`_batch_plain` / `_batch_sealed`: what the router does) against the same datagrams one
    by one through the general path (`_datagram`: open, window, reassembler; the baseline). The TAP is /dev/null,
    so the frame's write is in the time too."""
    import socket

    from weave_node.mesh.crypto import SessionKeys
    from weave_node.overlay.sleeve.codec import FLAG_VNET, MODE_AESGCM, MODE_SECRETBOX, Sealer, aesgcm_available
    from weave_node.overlay.sleeve.config import Config, LinkSpec
    from weave_node.overlay.sleeve.forwarder import Forwarder, name_bytes

    modes = [("plain", None), ("secretbox", MODE_SECRETBOX)]
    if aesgcm_available():
        modes.append(("aes-gcm", MODE_AESGCM))
    message, seg = bytes(10 + 62_000), 1472
    print("receive, one core, a 62 KB super-frame's datagrams (us per datagram; x the general path):")
    for name, mode in modes:
        rates = {}
        for path in ("general", "fast"):
            tap = os.open("/dev/null", os.O_WRONLY)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                fwd = Forwarder(1, tap, sock)
                keys = None if mode is None else SessionKeys(send=os.urandom(32), receive=os.urandom(32))
                spec = LinkSpec(2, "192.0.2.2", keys=keys, cipher=mode or MODE_SECRETBOX)
                fwd._apply(Config(links={2: spec}, routes={2: 2}, sleeve=frozenset({2})))
                link = fwd.links[2]
                sealer = Sealer(None if keys is None else keys.receive, mode=spec.cipher)
                sealer.seq = link.opener.window.highest + 1
                out = bytearray(packed_size(len(message), seg))
                grams = []
                for i in range(batches):
                    count, total = sealer.pack(out, message, msg_id=i, src=name_bytes(2), dst=name_bytes(1),
                                               segment_size=seg, flags=FLAG_VNET)  # fmt: skip
                    grams.append(bytearray(out[:total]))
                t0 = time.perf_counter()
                for buf in grams:
                    view = memoryview(buf)
                    if path == "general":
                        for off in range(0, len(buf), seg):
                            fwd._datagram(link, view[off : off + seg])
                    elif mode is None:
                        fwd._batch_plain(link, view, len(buf), seg)
                    else:
                        fwd._batch_sealed(link, buf, view, len(buf), seg)
                rates[path] = (time.perf_counter() - t0) / (batches * count) * 1e6
                assert fwd.counters["frames_in"] == batches, fwd.counters
            finally:
                sock.close()
                os.close(tap)
        print(f"  {name:<10} general {rates['general']:.2f} us, fast path {rates['fast']:.2f} us: "
              f"{rates['general'] / rates['fast']:.2f}x")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--switch-runs", type=int, default=3)
    ap.add_argument("--codec-only", action="store_true")
    ap.add_argument("--mtu", type=int, default=1500, help="the underlay's MTU (9000: jumbo frames)")
    args = ap.parse_args()
    codec()
    receive()
    if args.codec_only:
        return
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    with terminate_cleanly(), tempfile.TemporaryDirectory(prefix="sleeve-bench-") as tmp:
        throughput(Path(tmp), args.runs, args.seconds, args.switch_runs, args.mtu)


if __name__ == "__main__":
    main()
