"""`weave-node reset`: like `weave reset`, our kernel state taken away (links, chains, routes, ESP's SAs and
policies); IPAM's state stays."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from weave_node.datapath.ops import Op


def cmd_reset(args: argparse.Namespace, api_get: Callable[..., Any]) -> int:
    """Like `weave reset`: take our kernel state away (pods on the bridge lose their network). IPAM state stays."""
    from weave_node.api.client import ApiError
    from weave_node.datapath import netlink
    from weave_node.datapath.ops import SetSysctl
    from weave_node.datapath.plan import plan_removal
    from weave_node.overlay.desired import SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6

    if not args.force:
        try:
            api_get(args, "/status")
        except ApiError:
            pass
        else:
            print("weave-node reset: the router is running and would recreate it; stop it first", file=sys.stderr)
            return 1
    try:
        observed = netlink.observe(sysctls=[SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6], ip6tables=True)
        result = plan_removal(observed)
        # The router may have turned bridged traffic's iptables hooks off (overlay/netfilter.py): back to the kernel's
        # default, for whatever bridge comes next.
        for key in (SYSCTL_BRIDGE_NF, SYSCTL_BRIDGE_NF6):
            if observed.sysctls.get(key) == "0":
                result = replace(result, ops=(*result.ops, SetSysctl(key, "1")))
        netlink.apply(result.ops)
    except netlink.DatapathError as exc:
        print(f"weave-node reset: {exc}", file=sys.stderr)
        return 1
    _say_removed(result.ops)
    removed_esp = _reset_esp()
    if removed_esp is None:
        return 1
    if not result.ops and not removed_esp:
        print("nothing to remove")
    return 0


def _say_removed(ops: Sequence[Op]) -> None:
    from weave_node.datapath.ops import DeleteLink, DelRoute, DelRule, RestoreTable, SetSysctl

    for op in ops:
        if isinstance(op, DeleteLink):
            print(f"removed link {op.name}")
        elif isinstance(op, RestoreTable):
            tool = {"eth": "ebtables", "ip6": "ip6tables"}.get(op.family, "iptables")
            print(f"removed {tool} chain(s) {', '.join(op.drop_chains)} from table {op.table}")
        elif isinstance(op, DelRoute | DelRule):
            print(f"removed {op}")
        elif isinstance(op, SetSysctl):
            print(f"set {op.key.replace('/', '.')} back to {op.value}")


def _reset_esp() -> int | None:
    """Our ESP SAs and policies (reqid 0x5745) out of the kernel, after the VXLAN device that used them: how many
    went (None: it failed, said on stderr). A kernel without xfrm has none of ours."""
    from weave_node.datapath import xfrm, xfrm_shell

    try:
        ops = xfrm.removal(xfrm_shell.observe())
    except xfrm_shell.XfrmError:
        return 0  # no xfrm in this kernel (or no `ip`): nothing of ours can be there
    try:
        _, errors = xfrm_shell.apply(ops)
    except xfrm_shell.XfrmError as exc:
        print(f"weave-node reset: {exc}", file=sys.stderr)
        return None
    for error in errors:
        print(f"weave-node reset: {error}", file=sys.stderr)
    sas = sum(isinstance(op, xfrm.DeleteSa) for op in ops)
    if ops:
        print(f"removed {sas} ESP SA(s) and {len(ops) - sas} xfrm polic(ies) of weave-node's")
    return None if errors else len(ops)
