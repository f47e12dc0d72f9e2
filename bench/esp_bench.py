"""ESP's control-plane cost, measured on this machine (its kernel has xfrm but no ESP: the SAs themselves, and
throughput, can only be shown on the lab's emulated VMs, which say nothing about speed).

    .venv/bin/python bench/esp_bench.py [--peers 100] [--runs 7]

- core: the pure SA agreement (overlay/esp/sas.py) of one router with `--peers` peers, from the links to both
  directions keyed (set_links, desired, observed -> OFFERs, the peers' OFFERs, observed -> ACKs, their ACKs), and
  one rekey round for all of them; against the baseline of the same peers' VXLAN entries computed by
  overlay/desired.peer_entries (what the router computes for any peer without a password).
- kernel: in a network namespace of our own, the policies for `--peers` peers (two each) put in place with one
  `ip -batch` (datapath/xfrm_shell.py) and taken out again; against the baseline of the same peers' FDB entries
  (two each) through netlink (datapath/netlink.py), on a VXLAN device in the same namespace.
- wireguard: WireGuard's pairs (overlay/wireguard/pairs.py) with `--peers` peers: the KEY exchange and the
  device plan (datapath/wireguard.py) of all of them, against the same VXLAN-entries baseline.
- probe: the kernel probes at router start (an SA added and removed; a WireGuard device made and removed; here
  both fail: no ESP, no WireGuard).
Medians of `--runs`; the namespace is deleted at the end, also on failure.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import time
from collections.abc import Callable

from weave_node.datapath import netlink, wireguard_shell, xfrm, xfrm_shell
from weave_node.datapath.model import FLOOD_MAC, Fdb, bridge_mac
from weave_node.datapath.netns import made_in
from weave_node.datapath.ops import AddFdb, CreateBridge, CreateVxlan, DelFdb
from weave_node.datapath.wireguard import WgDevice, WgObserved
from weave_node.datapath.wireguard import plan as wg_plan
from weave_node.mesh.crypto import SessionKeys
from weave_node.overlay.desired import peer_entries
from weave_node.overlay.esp import wire
from weave_node.overlay.esp.keys import esp_keys
from weave_node.overlay.esp.sas import EspSas, Link
from weave_node.overlay.peers import PeerInfo
from weave_node.overlay.wireguard import keys as wg_key
from weave_node.overlay.wireguard import wire as wg_wire
from weave_node.overlay.wireguard.keys import wg_keys
from weave_node.overlay.wireguard.pairs import Link as WgLink
from weave_node.overlay.wireguard.pairs import WgPairs

PORT = 6784
ME = "198.18.0.1"


def remote(i: int) -> str:
    return f"198.18.{1 + i // 250}.{1 + i % 250}"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def core_round(peers: int) -> float:
    """One router's agreement with `peers` peers (both directions) and a rekey of each, in seconds."""
    rng = random.Random(1)
    links = {n: Link(ME, remote(n), esp_keys(SessionKeys(rng.randbytes(32), rng.randbytes(32)))) for n in range(peers)}
    core = EspSas(rng=rng.randbytes, rekey_interval=10.0)

    def agree(now: float) -> None:
        core.set_links(now, links)
        offers = core.observed(now, core.desired(PORT).sas)
        for name, data in offers:  # the peer answers our OFFER (ACK) and sends its own
            offer = wire.decode(data)
            assert isinstance(offer, wire.Offer)
            spi = 0x5780_0000 + name
            core.on_message(now, name, wire.encode(wire.Offer(offer.session, offer.generation, spi)))
            core.on_message(now, name, wire.encode(wire.Ack(offer.session, offer.spi)))
        core.observed(now, core.desired(PORT).sas)

    start = time.perf_counter()
    agree(0.0)
    core.tick(11.0)  # every peer due: a new inbound SA each
    core.observed(11.0, core.desired(PORT).sas)
    elapsed = time.perf_counter() - start
    assert all(core.established(n) for n in links) and core.rekeys == peers
    return elapsed


def wireguard_round(peers: int) -> float:
    """WireGuard's pairs with `peers` peers: the KEY exchange (ours out, theirs in, answered) and the device plan of
    all of them against an empty device, in seconds."""
    rng = random.Random(2)
    links = {n: WgLink(remote(n), wg_keys(SessionKeys(rng.randbytes(32), rng.randbytes(32)))) for n in range(peers)}
    ours = wg_key.public_key(wg_key.new_private_key())
    theirs = {n: wg_key.public_key(wg_key.new_private_key()) for n in links}  # (made before the clock starts)
    start = time.perf_counter()
    core = WgPairs(ours)
    core.set_links(0.0, links)
    for name, link in links.items():
        core.on_message(0.0, name, wg_wire.encode(wg_wire.Key(link.session, theirs[name], reply=True)))
    device = WgDevice(bytes(32), "fd57:6561:7665::1/64", 1440, peers=core.peers())
    first, _ = wg_plan(device, WgObserved())
    elapsed = time.perf_counter() - start
    assert len(first) == peers + 3 and all(core.keyed(n) for n in links)
    return elapsed


def baseline_round(peers: int) -> float:
    infos = {n: PeerInfo(n, 1, f"10.40.{n // 250}.{n % 250 + 1}", 12, bridge_mac(n), remote(n)) for n in range(peers)}
    direct = {n: remote(n) for n in range(peers)}
    return timed(lambda: peer_entries(set(infos), infos, direct, 0xFFFF))


def kernel_rounds(peers: int, runs: int) -> tuple[list[float], list[float]]:
    ns = f"wnb-esp-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        bridge = CreateBridge("br-bench", 1450, bridge_mac(1), False)
        netlink.apply([bridge, CreateVxlan("vxlan-bench", 0x6784, PORT, 1450, False, "br-bench")], netns=ns)
        policies = [p for i in range(peers) for p in (xfrm.Policy(ME, remote(i), "out", PORT),
                                                        xfrm.Policy(remote(i), ME, "in", PORT))]  # fmt: skip
        fdb = [f for i in range(peers) for f in (Fdb(FLOOD_MAC, remote(i)), Fdb(bridge_mac(i), remote(i)))]
        esp, base = [], []
        for _ in range(runs):
            add = [xfrm.AddPolicy(p) for p in policies]
            esp.append(timed(lambda add=add: made_in(ns, lambda: xfrm_shell.apply(add))))
            made_in(ns, lambda: xfrm_shell.apply(xfrm.removal(xfrm_shell.observe())))
            base.append(timed(lambda: netlink.apply([AddFdb("vxlan-bench", f) for f in fdb], netns=ns)))
            netlink.apply([DelFdb("vxlan-bench", f) for f in fdb], netns=ns)
        return esp, base
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    n = args.peers
    core = statistics.median(core_round(n) for _ in range(args.runs))
    base = statistics.median(baseline_round(n) for _ in range(args.runs))
    print(f"core: agreement + one rekey, {n} peers: {core * 1e3:.2f} ms ({core / n * 1e6:.0f} us a peer); "
          f"VXLAN entries of {n} peers: {base * 1e3:.2f} ms; ratio {core / base:.1f}x")  # fmt: skip
    wireguard = statistics.median(wireguard_round(n) for _ in range(args.runs))
    print(f"wireguard: key exchange + device plan, {n} peers: {wireguard * 1e3:.2f} ms "
          f"({wireguard / n * 1e6:.0f} us a peer); ratio {wireguard / base:.1f}x the VXLAN entries")  # fmt: skip
    esp, fdb = kernel_rounds(n, args.runs)
    k_esp, k_fdb = statistics.median(esp), statistics.median(fdb)
    print(f"kernel: {2 * n} policies in one ip -batch: {k_esp * 1e3:.1f} ms ({k_esp / n * 1e3:.2f} ms a peer); "
          f"{2 * n} FDB entries through netlink: {k_fdb * 1e3:.1f} ms; ratio {k_esp / k_fdb:.2f}x")  # fmt: skip
    probe = statistics.median(timed(xfrm_shell.probe) for _ in range(args.runs))
    print(f"probe at start: {probe * 1e3:.1f} ms (here: {xfrm_shell.probe()})")
    wg_probe = statistics.median(timed(wireguard_shell.probe) for _ in range(args.runs))
    print(f"WireGuard probe at start: {wg_probe * 1e3:.1f} ms (here: {wireguard_shell.probe()})")


if __name__ == "__main__":
    main()
