"""One sync of the datapath, in the overlay's worker thread: observe, decide bridge-nf-call-iptables from what the
host shows (overlay.netfilter), plan, apply. Keeps what must survive between syncs: the last netfilter decision and
the flush generation last tried."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from weave_node.datapath.model import BRIDGE, Desired
from weave_node.datapath.ops import SetLink
from weave_node.datapath.plan import Plan, plan
from weave_node.overlay import desired as wanted
from weave_node.overlay import netfilter
from weave_node.overlay.desired import TAP
from weave_node.overlay.kernel import Kernel

log = logging.getLogger("weave_node.overlay")


@dataclass
class DatapathSync:
    kernel: Kernel
    bridge_netfilter: str  # "auto", "on" or "off"
    bridge_nf: netfilter.Decision | None = None  # the last decision on bridge-nf-call-iptables
    flushed: int = 0  # the flush generation last tried (a failed flush is not repeated)

    def __call__(self, desired: Desired, mtu: int) -> tuple[Plan, int, list[str]]:
        observed = replace(self.kernel.observe(), flushed=self.flushed)
        decision = netfilter.decide(
            self.bridge_netfilter, observed, wanted.SYSCTL_BRIDGE_NF, kubelet=self.kernel.kubelet()
        )
        if decision != self.bridge_nf:
            log.info("bridged pod traffic and iptables: %s", decision.reason)
            self.bridge_nf = decision
        desired = wanted.with_bridge_nf(desired, decision.value)
        result = plan(desired, observed)
        applied, errors = self.kernel.apply(result.ops)
        self.flushed = desired.flush  # tried once, like any flush: a failed one is not repeated
        attached = any(isinstance(op, SetLink) and op.name == TAP and op.master for op in result.ops)
        if attached and not any(TAP in error for error in errors):  # (a failure is logged with the errors)
            log.info("sleeve: %s on bridge %s, MTU %d", TAP, BRIDGE, mtu)
        return result, applied, errors
