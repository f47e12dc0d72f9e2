"""Our iptables rules and the parser of `iptables-save` output (pure).

Rules are written exactly as `iptables-save` prints them, so observed == desired compares strings. We own only
chains named WEAVE-NODE-* and one jump into each from a built-in chain; kube-proxy's and everyone else's rules
are read, never rewritten (iptables-restore --noflush).
"""

from __future__ import annotations

from weave_node.datapath.model import BRIDGE, CHAIN_PREFIX, Chain

TABLES = ("filter", "nat")
FORWARD_CHAIN = CHAIN_PREFIX + "FORWARD"
NAT_CHAIN = CHAIN_PREFIX + "NAT"


def weave_chains(
    pod_range: str,
    bridge: str = BRIDGE,
    *,
    masquerade: bool = True,
    direct: bool = False,
    direct_sources: tuple[str, ...] = (),
) -> tuple[Chain, ...]:
    """FORWARD: pod<->pod (also hairpin through the same port) and pod->outside accepted, replies let back in;
    with direct mode, pod traffic routed in from a peer's underlay too. NAT: pod traffic that leaves the range is
    masqueraded; multicast stays as it is."""
    rules: tuple[str, ...] = (
        f"-i {bridge} -o {bridge} -j ACCEPT",
        f"-i {bridge} ! -o {bridge} -j ACCEPT",
        f"-o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )
    if direct:  # routed in over the underlay: pods of direct peers, and what their hosts send (host, NodePort SNAT)
        rules += (f"-s {pod_range} -d {pod_range} ! -i {bridge} -o {bridge} -j ACCEPT",)
        rules += tuple(f"-s {src}/32 -d {pod_range} ! -i {bridge} -o {bridge} -j ACCEPT" for src in direct_sources)
    forward = Chain("filter", FORWARD_CHAIN, rules, "FORWARD")
    if not masquerade:
        return (forward,)
    nat = Chain(
        "nat",
        NAT_CHAIN,
        (
            f"-s {pod_range} -d 224.0.0.0/4 -j RETURN",
            f"-s {pod_range} ! -d {pod_range} -j MASQUERADE",
        ),
        "POSTROUTING",
    )
    return (forward, nat)


ESP_OUT_CHAIN = CHAIN_PREFIX + "ESP-OUT"
ESP_IN_CHAIN = CHAIN_PREFIX + "ESP-IN"
TUNNEL_OUT_CHAIN = CHAIN_PREFIX + "WG-OUT"  # with WireGuard: VXLAN leaves only through the tunnel
TUNNEL_IN_CHAIN = CHAIN_PREFIX + "WG-IN"  # and arrives only through it


def esp_guard(port: int, family: str = "ip") -> tuple[Chain, ...]:
    """With ESP for fastdp: VXLAN (UDP to `port`) that no IPsec policy covers is dropped, sent or received, so
    nothing else (a missing policy, a bug) can carry pod traffic between hosts in the clear. `family`: the
    underlay's ("ip6": ip6tables)."""
    match = f"-p udp -m udp --dport {port} -m policy --dir"
    return (
        Chain("filter", ESP_OUT_CHAIN, (f"{match} out --pol none -j DROP",), "OUTPUT", family),
        Chain("filter", ESP_IN_CHAIN, (f"{match} in --pol none -j DROP",), "INPUT", family),
    )


def tunnel_guard(port: int, device: str) -> tuple[Chain, ...]:
    """With VXLAN inside WireGuard (an IPv6 VXLAN device between tunnel addresses): VXLAN (UDP to `port`) that
    does not leave or arrive through `device` is dropped, so nothing carries pod traffic between hosts in the clear
    (a stale FDB entry, a missing tunnel route) and nobody injects frames into the bridge from outside the tunnels
    (the VXLAN device's socket listens on every IPv6 address)."""
    match = f"-p udp -m udp --dport {port} -j DROP"
    return (
        Chain("filter", TUNNEL_OUT_CHAIN, (f"! -o {device} {match}",), "OUTPUT", "ip6"),
        Chain("filter", TUNNEL_IN_CHAIN, (f"! -i {device} {match}",), "INPUT", "ip6"),
    )


def weave_chains6(pod_range: str, bridge: str = BRIDGE, *, masquerade: bool = True) -> tuple[Chain, ...]:
    """ip6tables' chains for a dual-stack range: the same FORWARD rules (direct mode is IPv4's), and masquerade
    of what leaves the IPv6 range, multicast (ff00::/8) excepted."""
    forward = weave_chains(pod_range, bridge, masquerade=False)[0]
    chains = (Chain("filter", forward.name, forward.rules, "FORWARD", "ip6"),)
    if not masquerade:
        return chains
    nat = (f"-s {pod_range} -d ff00::/8 -j RETURN", f"-s {pod_range} ! -d {pod_range} -j MASQUERADE")
    return (*chains, Chain("nat", NAT_CHAIN, nat, "POSTROUTING", "ip6"))


def parse_save(text: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """`iptables-save` output -> table -> chain -> rules (without the "-A CHAIN " prefix), in order."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {})
        elif current is None or line == "COMMIT":
            continue
        elif line.startswith(":"):
            current.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            current.setdefault(chain, []).append(rest[0] if rest else "")
    return {t: {c: tuple(r) for c, r in chains.items()} for t, chains in tables.items()}
