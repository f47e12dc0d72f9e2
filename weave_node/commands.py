"""`weave-node router` (the daemon), `weave-node status ...`, `weave-node connect/forget`, `ipam`, `reset`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from weave_node import day2, dns_commands
from weave_node.core.cni import CNI_PLUGIN
from weave_node.core.facts import BRIDGE_NETFILTER_MODES, DEFAULT_STATUS_ADDR, DEFAULT_STATUS_SOCKET


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_router(sub)
    _add_clients(sub)
    day2.add_parsers(sub)
    dns_commands.add_parser(sub, _api_flags)


def _add_router(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("router", help="run the router (the node agent)")
    r.add_argument("peers", nargs="*", help="initial peers: IP or host name, optionally :port (also WEAVE_PEERS)")
    r.add_argument("--name", help="peer name aa:bb:cc:dd:ee:ff (default: derived from <state-dir>/host-id)")
    r.add_argument("--nickname", help="shown to other peers (default: the host name)")
    r.add_argument("--port", type=int, help="TCP port for peers (default 6783, also WEAVE_PORT)")
    r.add_argument("--listen-host", help="address to listen on for peers (default 0.0.0.0)")
    r.add_argument("--conn-limit", type=int, help="most connections to other peers (default 100, also CONN_LIMIT)")
    r.add_argument("--password-file", help="file (mode 0600) with the mesh password (also WEAVE_PASSWORD_FILE)")
    r.add_argument(
        "--accept-unencrypted",
        action="store_const",
        const="1",
        help="with a password: take peers without one too, unencrypted (while turning encryption on or off; also "
        "WEAVE_ACCEPT_UNENCRYPTED)",
    )
    r.add_argument(
        "--previous-password-file",
        help="during a password rotation: the old password, still accepted (also WEAVE_PREVIOUS_PASSWORD_FILE)",
    )
    r.add_argument("--status-addr", help=f"status API host:port, loopback only (default {DEFAULT_STATUS_ADDR}; 'none')")
    r.add_argument("--status-any-addr", action="store_true", help="allow a non-loopback --status-addr")
    r.add_argument("--status-socket", help=f"status API unix socket (default {DEFAULT_STATUS_SOCKET}; 'none')")
    r.add_argument("--state-dir", help="persistent state (default /var/lib/weave-node)")
    r.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats (default 5)")
    r.add_argument("--heartbeat-timeout", type=float, help="seconds of silence before a peer is dropped (3 x interval)")
    r.add_argument("--gossip-interval", type=float, help="seconds between periodic gossip (default 10)")
    r.add_argument(
        "--ipalloc-range",
        help="the pod address range, CIDR (default 10.32.0.0/12, also IPALLOC_RANGE); dual-stack: "
        "an IPv4 and an IPv6 range, comma-separated (10.32.0.0/12,fd32:57::/64)",
    )
    r.add_argument(
        "--ipalloc-init",
        help="IPAM bootstrap: consensus[=N] (default: N = initial peers + 1), seed=NAME,..., observer (IPALLOC_INIT)",
    )
    r.add_argument(
        "--ipam-reclaim-after",
        type=float,
        help="seconds a peer must be unreachable before its address space is taken over (default 600; 0 = never)",
    )
    r.add_argument(
        "--no-ipam-reclaim-replaced",
        action="store_const",
        const="1",
        help="a re-imaged host's old identity (same host name) waits --ipam-reclaim-after like any other, instead of "
        "being reclaimed at once (also WEAVE_NO_IPAM_RECLAIM_REPLACED)",
    )
    r.add_argument(
        "--datapath",
        choices=("kernel", "none"),
        help="kernel = weave bridge + VXLAN (default); none = mesh and IPAM only (also WEAVE_DATAPATH)",
    )
    r.add_argument("--mtu", type=int, help="pod MTU (default: underlay MTU - 50 for VXLAN; also WEAVE_MTU)")
    r.add_argument("--no-fastdp", action="store_const", const="1", help="no VXLAN fast datapath (also WEAVE_NO_FASTDP)")
    r.add_argument(
        "--no-direct",
        action="store_const",
        const="1",
        help="no direct mode: pod traffic to L2 neighbours stays in VXLAN (also WEAVE_NO_DIRECT)",
    )
    r.add_argument(
        "--bridge-netfilter",
        choices=BRIDGE_NETFILTER_MODES,
        help="bridged pod traffic through iptables (bridge-nf-call-iptables): auto (default: on for Kubernetes, off "
        "where weave is the only bridge), on, off; also WEAVE_BRIDGE_NETFILTER",
    )
    r.add_argument(
        "--encryption",
        choices=("auto", "esp", "wireguard", "sleeve"),
        help="with a password: auto (default) = IPsec ESP for the fast datapath where both kernels can (else "
        "WireGuard where this kernel has it), the sealed sleeve otherwise; esp = ESP without probing the kernel "
        "first; wireguard = WireGuard where this kernel has it (never ESP); sleeve = the sleeve for all pod "
        "traffic (also WEAVE_ENCRYPTION)",
    )
    r.add_argument("--esp-rekey", type=float, help="seconds between ESP rekeys (default 3600; also WEAVE_ESP_REKEY)")
    r.add_argument(
        "--no-sleeve",
        action="store_const",
        const="1",
        help="no userspace fallback datapath, hence no encrypted pod traffic (also WEAVE_NO_SLEEVE)",
    )
    r.add_argument(
        "--metrics-addr",
        help="Prometheus metrics host:port (default 127.0.0.1:6782; 0.0.0.0:6782 to scrape from elsewhere; 'none')",
    )
    r.add_argument(
        "--peer-retain",
        type=float,
        help="seconds a departed peer keeps its VXLAN forwarding entries, and entries found at start are kept (60)",
    )
    dns_commands.add_router_flags(r)
    r.add_argument("--log-level", default=os.environ.get("WEAVE_LOG_LEVEL", "info"))
    r.set_defaults(func=cmd_router)


def _add_clients(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("status", help="the router's state, like `weave status`")
    s.add_argument(
        "section",
        nargs="?",
        choices=["peers", "connections", "targets", "ipam", "datapath", "dns"],
        help="one part in detail",
    )
    _api_flags(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=60.0,
        metavar="SECONDS",
        help="first wait until the router is ready: it answers, IPAM can allocate, the bridge has its address (60)",
    )
    s.add_argument("--peers", type=int, default=0, help="with --wait: also wait until this many peers are reachable")
    s.set_defaults(func=_cmd_status)
    rep = sub.add_parser("report", help="the router's full state as JSON, like `weave report`")
    _api_flags(rep)
    rep.set_defaults(func=cmd_report)
    ipam = sub.add_parser("ipam", help="IP address management: allocations, rmpeer, allocate/release by hand")
    isub = ipam.add_subparsers(dest="ipam_cmd", required=True, metavar="COMMAND")
    p = isub.add_parser("allocations", help="every address this peer has handed out")
    p.add_argument("--json", action="store_true")
    p = isub.add_parser("rmpeer", help="take over the address space of a peer that is gone, now")
    p.add_argument("peer", help="the peer's name (aa:bb:cc:dd:ee:ff) or nickname")
    p = isub.add_parser(
        "leave", help="hand this peer's address space to a reachable peer before removing the host for good"
    )
    p.add_argument("--force", action="store_true", help="even if pods here still hold addresses (they must go too)")
    p.add_argument("--wait", type=float, default=20.0, help="seconds to wait for a peer to confirm (default 20)")
    p = isub.add_parser("allocate", help="allocate an address for a container id (idempotent)")
    p.add_argument("container_id")
    p.add_argument("--ifname", default="eth0")
    p = isub.add_parser("claim", help="record that a container id has an address")
    p.add_argument("container_id")
    p.add_argument("ip")
    p.add_argument("--ifname", default="eth0")
    p = isub.add_parser("release", help="release a container id's address(es)")
    p.add_argument("container_id")
    p.add_argument("--ifname")
    for p in isub.choices.values():
        _api_flags(p)
    ipam.set_defaults(func=cmd_ipam)
    for verb, text in (("connect", "connect to a peer now (and keep trying)"), ("forget", "stop trying a peer")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("peer", help="IP or host name, optionally :port")
        _api_flags(p)
        p.set_defaults(func=cmd_peer, verb=verb)
    inst = sub.add_parser(
        "install-cni-plugin", help="write the weave-net plugin (one static executable) into a CNI bin directory"
    )
    inst.add_argument(
        "--dir", default="/opt/cni/bin", help="where the runtime looks for plugins (default /opt/cni/bin)"
    )
    inst.add_argument(
        "--conflist",
        metavar="FILE",
        help="also install this network configuration list (e.g. from the DaemonSet's ConfigMap) into --conf-dir",
    )
    inst.add_argument(
        "--conf-dir", default="/etc/cni/net.d", help="where the runtime reads configurations (default /etc/cni/net.d)"
    )
    inst.add_argument(
        "--check", action="store_true", help="change nothing: exit 0 if what would be installed is there, else 1"
    )
    inst.set_defaults(func=cmd_install_cni_plugin)
    reset = sub.add_parser("reset", help="remove the weave bridge, the VXLAN device and our iptables chains")
    reset.add_argument("--force", action="store_true", help="even if a router answers (it would recreate them)")
    _api_flags(reset)
    reset.set_defaults(func=cmd_reset)


def _api_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", help=f"the router's unix socket (default {DEFAULT_STATUS_SOCKET})")
    p.add_argument("--addr", help="the router's status API host:port instead of the socket")


def cmd_router(args: argparse.Namespace) -> int:
    from weave_node import daemon
    from weave_node.config import from_env_and_flags

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "cmd")}
    if not args.peers:
        flags["peers"] = None
    config = from_env_and_flags(os.environ, flags)
    return daemon.main(config, args.log_level)


def api_get(
    args: argparse.Namespace, path: str, method: str = "GET", body: dict[str, Any] | None = None, timeout: float = 30.0
) -> Any:
    from weave_node.api.client import request

    return request(method, path, addr=args.addr, socket_path=args.socket, body=body, timeout=timeout)


def cmd_ipam(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from rich.console import Console
    from rich.table import Table

    if args.ipam_cmd == "allocations":
        rows = api_get(args, "/ipam/allocations")
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        table = Table(box=None)
        for col in ("address", "container id", "ifname"):
            table.add_column(col)
        for row in rows:
            table.add_row(row["ip"], row["container_id"], row["ifname"])
        Console(highlight=False).print(table)
        return 0
    if args.ipam_cmd == "rmpeer":
        doc = api_get(args, f"/ipam/rmpeer/{quote(args.peer, safe='')}", "POST")
        print(f"took over {doc['addresses']} addresses of peer {doc['peer']}")
        return 0
    if args.ipam_cmd == "leave":
        # The request outlives the router's own wait, so a timeout there is answered with its reason, not ours.
        doc = api_get(args, "/ipam/leave", "POST", {"force": args.force, "wait": args.wait}, timeout=args.wait + 10)
        if doc["handed_to"] is None:
            print("this peer owns no address space: nothing to hand over")
        else:
            nick = f" ({doc['nickname']})" if doc.get("nickname") else ""
            print(f"handed {doc['addresses']} addresses to peer {doc['handed_to']}{nick}")
        return 0
    body: dict[str, Any] = {"container_id": args.container_id}
    if args.ifname:
        body["ifname"] = args.ifname
    if args.ipam_cmd == "claim":
        body["ip"] = args.ip
    doc = api_get(args, f"/ipam/{args.ipam_cmd}", "POST", body)
    print(" ".join(doc["released"]) if args.ipam_cmd == "release" else doc["cidr"])
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(json.dumps(api_get(args, "/report"), indent=2))
    return 0


def cmd_peer(args: argparse.Namespace) -> int:
    """`connect PEER` / `forget PEER`."""
    from urllib.parse import quote

    print(json.dumps(api_get(args, f"/{args.verb}/{quote(args.peer, safe='')}", "POST")))
    return 0


def cmd_install_cni_plugin(args: argparse.Namespace) -> int:
    """The plugin is one static executable (cni/weave-net/main.go; our wheel carries it, a checkout builds it once):
    it needs no Python on the node, and the runtime pays ~1 ms of start-up per ADD/DEL. Written atomically, mode
    0755. With --conflist, the network configuration goes in last (atomically too): a runtime that sees it finds
    the plugin already there."""
    conflist = None
    if args.conflist:
        try:
            conflist = Path(args.conflist).read_bytes()
            doc = json.loads(conflist)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"weave-node: cannot install {args.conflist}: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("plugins"), list) or "name" not in doc:
            raise SystemExit(f"weave-node: {args.conflist} is not a CNI network configuration list")
    from weave_node.cni import gobuild

    try:
        binary = gobuild.plugin().read_bytes()
    except (OSError, gobuild.PluginUnavailable) as exc:
        raise SystemExit(f"weave-node: cannot install the weave-net plugin: {exc}") from None
    wanted = [(Path(args.dir) / CNI_PLUGIN, binary, 0o755)]
    if conflist is not None:
        wanted.append((Path(args.conf_dir) / Path(args.conflist).name, conflist, 0o644))
    if args.check:
        stale = [str(target) for target, data, mode in wanted if not _current(target, data, mode)]
        print(f"not up to date: {' '.join(stale)}" if stale else "up to date")
        return 1 if stale else 0
    for target, data, mode in wanted:
        _install_file(target, data, mode)
    return 0


def _current(target: Path, data: bytes, mode: int) -> bool:
    try:
        return target.stat().st_mode & 0o7777 == mode and target.read_bytes() == data
    except OSError:
        return False


def _install_file(target: Path, data: bytes, mode: int) -> None:
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    if _current(target, data, mode):
        print(f"{target} is up to date")
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)  # a runtime exec-ing the old file keeps it; the next exec gets the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"installed {target}")


def cmd_reset(args: argparse.Namespace) -> int:
    from weave_node.reset import cmd_reset as reset

    return reset(args, api_get)


def _cmd_status(args: argparse.Namespace) -> int:
    from weave_node.status_view import cmd_status

    return cmd_status(args)
