"""The kernel calls the overlay shell makes, as one injectable value: netlink's in the router, fakes in tests (so
the service is built and driven without a kernel). Every call runs in one of the service's worker threads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weave_node.datapath import kernel_routes, netlink, underlay, wireguard_shell, xfrm_shell
from weave_node.datapath import pods as pod_links
from weave_node.datapath.model import BRIDGE, Bridge, Observed, Pod
from weave_node.datapath.ops import Op
from weave_node.datapath.wireguard import WgObserved, WgOp
from weave_node.datapath.xfrm import Xfrm, XfrmOp
from weave_node.overlay.desired import SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6, SYSCTL_FORWARD, SYSCTL_FORWARD6

BRIDGE_SYSCTLS = tuple(key for key, _ in Bridge(proxy_arp=True, ipv6=True).sysctls())  # on `weave`
log = logging.getLogger("weave_node.overlay")
KUBELET_DIR = "/var/lib/kubelet"  # every kubelet has it (its root directory) before it runs a pod


@dataclass(frozen=True)
class Kernel:
    observe: Callable[[], Observed]
    apply: Callable[[Sequence[Op]], tuple[int, list[str]]]  # (applied, errors): one failure does not stop the rest
    route_mtu: Callable[[str], tuple[str, int] | None]  # the device (and its MTU) that reaches an address
    default_route_mtu: Callable[[], tuple[str, int] | None]
    attach_pod: Callable[[Pod], dict[str, str]]
    detach_pod: Callable[[Pod], bool]
    pod_state: Callable[[Pod], dict[str, Any]]
    kubelet: Callable[[], bool] = lambda: False  # is this host a Kubernetes node (overlay.netfilter)?
    routes_via: Callable[[list[str]], dict[str, tuple[str, str] | None]] = dict.fromkeys
    # ^ (device, gateway) to each address
    ebtables: Callable[[], bool] = lambda: False  # can direct mode keep ARP answers apart?
    rp_filter: Callable[[str], int] = lambda _dev: 0  # a device's effective reverse-path filter (max of it and all)
    default_ipv6_only: Callable[[], bool] = lambda: False  # a default route of IPv6 and none of IPv4?
    xfrm_observe: Callable[[], Xfrm] = Xfrm  # our ESP SAs and policies (datapath.xfrm_shell)
    xfrm_apply: Callable[[list[XfrmOp]], tuple[int, list[str]]] = lambda ops: (len(ops), [])
    wg_observe: Callable[[], WgObserved] = WgObserved  # our WireGuard device (datapath.wireguard_shell)
    wg_apply: Callable[[list[WgOp]], tuple[int, list[str]]] = lambda ops: (len(ops), [])
    wg_remove: Callable[[], bool] = lambda: False


def netlink_kernel(*, ipv6: bool = False) -> Kernel:
    """`ipv6`: dual-stack, so IPv6's sysctls are observed too. ip6tables' chains always are: ours of an earlier
    configuration (a dual-stack range, ESP's guard over an IPv6 underlay) go when nothing wants them."""
    sysctls = [
        SYSCTL_FORWARD,
        SYSCTL_BRIDGE_NF,
        *BRIDGE_SYSCTLS,
        *([SYSCTL_FORWARD6, SYSCTL_BRIDGE_NF6] if ipv6 else []),
    ]
    return Kernel(
        observe=lambda: netlink.observe(sysctls=sysctls, ip6tables=True),
        apply=netlink.apply_all,
        route_mtu=underlay.route_mtu,
        default_route_mtu=underlay.default_route_mtu,
        attach_pod=pod_links.attach_pod,
        detach_pod=pod_links.detach_pod,
        pod_state=pod_links.pod_state,
        kubelet=lambda: os.path.isdir(KUBELET_DIR),
        routes_via=underlay.routes_via,
        ebtables=kernel_routes.ebtables_available,
        rp_filter=_rp_filter,
        default_ipv6_only=underlay.default_ipv6_only,
        xfrm_observe=xfrm_shell.observe,
        xfrm_apply=xfrm_shell.apply,
        wg_observe=wireguard_shell.observe,
        wg_apply=wireguard_shell.apply,
        wg_remove=wireguard_shell.remove,
    )


def _rp_filter(dev: str) -> int:
    values = []
    for name in ("all", dev):
        try:
            values.append(int(Path(f"/proc/sys/net/ipv4/conf/{name}/rp_filter").read_text()))
        except (OSError, ValueError):
            values.append(0)
    return max(values)


def underlay_devices(kernel: Kernel, hosts: Iterable[str]) -> list[tuple[str, int]]:
    """The devices (name, MTU) that carry traffic to these hosts; if none, the default route's."""
    found: list[tuple[str, int]] = []
    for host in hosts:
        with contextlib.suppress(netlink.DatapathError):
            dev = kernel.route_mtu(host)
            if dev:
                found.append(dev)
    if not found:
        dev = kernel.default_route_mtu()
        found = [dev] if dev else []
    return found


async def obtain_bridge_address(get: Callable[[str | None], Awaitable[str]], current: str | None) -> str:
    """The bridge's address of one family from IPAM (keeping `current`, the one found at start, if IPAM agrees),
    retried every 2 s while IPAM is not ready."""
    while True:
        try:
            cidr = await get(current)
        except Exception as exc:  # IPAM not ready yet: retry, and say why
            log.info("bridge address: %s; retrying", exc)
            await asyncio.sleep(2.0)
            continue
        if cidr != current:
            log.info("bridge %s gets address %s", BRIDGE, cidr)
        return cidr
