"""Whether bridged pod traffic goes through iptables (`net.bridge.bridge-nf-call-iptables`), decided (pure).

Measured (docs/benchmarks.md, "fastdp and iptables"): with `br_netfilter` loaded and any iptables table in the
namespace, every bridged frame is handed to the IPv4 hooks, and that, not conntrack, is what separates fastdp from
a hand-built bridge + VXLAN: `raw NOTRACK` for everything left the gap as it was (0.87x), the sysctl at 0 closed it
(0.99x). The sysctl is one value for every bridge of the host, so we turn it off only where nothing else can need
it, and on wherever Kubernetes is (kube-proxy un-NATs the replies of Service traffic between pods on one bridge,
and NetworkPolicy engines filter bridged traffic, only through it).

Modes (`WEAVE_BRIDGE_NETFILTER`, `weave_bridge_netfilter`):
- `on`: 1 (Weave's behaviour; the DaemonSet's);
- `off`: 0, whatever else is on the host (the operator's call);
- `auto` (default): 1 on a Kubernetes node (kubelet's directory, or kube-proxy's chains) and where another bridge
  or Docker's chains show someone else may rely on it (the kernel's default, also after we had turned it off);
  0 otherwise (a bare host where `weave` is the only bridge: nothing but our own rules would see the bridged
  packets, and those accept them).
Masquerade to the outside and portmap's hostPorts are routed traffic, which iptables sees either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from weave_node.core.facts import BRIDGE_NETFILTER_MODES as MODES
from weave_node.datapath.model import BRIDGE, Observed

KUBE_CHAINS = ("KUBE-SERVICES", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS")
DOCKER_CHAINS = ("DOCKER", "DOCKER-USER", "DOCKER-ISOLATION-STAGE-1")


@dataclass(frozen=True)
class Decision:
    value: str | None  # "1", "0", or None: leave the sysctl as it is
    reason: str


def decide(mode: str, observed: Observed, key: str, *, kubelet: bool) -> Decision:
    """`key`: the sysctl's path (present in `observed.sysctls` only when br_netfilter is loaded); `kubelet`:
    whether this host is a Kubernetes node (the shell looks for kubelet's directory)."""
    if mode not in MODES:
        raise ValueError(f"bridge netfilter mode must be one of {', '.join(MODES)}, not {mode!r}")
    if key not in observed.sysctls:
        return Decision(None, "br_netfilter is not loaded: bridged traffic never reaches iptables")
    if mode == "on":
        return Decision("1", "on (WEAVE_BRIDGE_NETFILTER=on)")
    if mode == "off":
        return Decision("0", "off (WEAVE_BRIDGE_NETFILTER=off)")
    return _auto(observed, kubelet=kubelet)


def _auto(observed: Observed, *, kubelet: bool) -> Decision:
    chains = _chain_names(observed.iptables or {})
    others = sorted(name for name, link in observed.links.items() if link.kind == "bridge" and name != BRIDGE)
    if kubelet:
        return Decision("1", "a Kubernetes node (kubelet): kube-proxy and NetworkPolicy need bridged traffic seen")
    if chains & set(KUBE_CHAINS):
        return Decision("1", "kube-proxy's chains are here: Service replies between pods need bridged traffic seen")
    if others:
        return Decision("1", f"other bridges ({', '.join(others)}) may rely on it: the kernel's default")
    if chains & set(DOCKER_CHAINS):
        return Decision("1", "Docker's chains are here: the kernel's default")
    return Decision("0", "nothing but weave-node uses a bridge here: bridged pod traffic skips iptables")


def _chain_names(tables: Mapping[str, Mapping[str, tuple[str, ...]]]) -> set[str]:
    return {name for chains in tables.values() for name in chains}
