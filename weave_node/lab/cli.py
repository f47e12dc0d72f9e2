"""`weave-node lab up|down|status|ssh`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

from weave_node.lab.spec import MAX_HOSTS

DEFAULT_NAME = os.environ.get("WEAVE_LAB", "lab")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = sub.add_parser("lab", help="the local lab of real systemd hosts in network namespaces")
    lab_sub = lab.add_subparsers(dest="lab_cmd", required=True, metavar="COMMAND")

    def named(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--name", default=DEFAULT_NAME, help="lab name (default: $WEAVE_LAB or 'lab')")
        return p

    p = named(lab_sub.add_parser("up", help="bring up N hosts (reuses a running lab of the same size)"))
    p.add_argument("--hosts", type=int, default=3, help=f"number of hosts, 1-{MAX_HOSTS} (default 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--kubernetes",
        action="store_true",
        help="make the hosts a Kubernetes 1.20 cluster: containerd, kubelet and kube-proxy on every host, the "
        "control plane on node1 (binaries built from Debian's source package once per machine, ~7 min)",
    )
    p.add_argument(
        "--ipv6",
        action="store_true",
        help="an IPv6-only underlay: the hosts get 2001:db8:18::N/64 and no IPv4 address",
    )
    p.add_argument(
        "--dual-stack",
        action="store_true",
        help="a dual-stack underlay: the hosts get 2001:db8:18::N/64 beside 198.18.0.N/24 (SSH and the inventory "
        "use IPv4's)",
    )
    p.add_argument(
        "--vm",
        type=int,
        nargs="?",
        const=-1,
        default=0,
        metavar="N",
        help="the first N hosts (all without N) are QEMU VMs with Debian's own kernel (IPsec ESP, WireGuard), "
        "emulated: slow (~1 min to boot), for functional tests only",
    )
    p.set_defaults(func=cmd_up)
    p = named(lab_sub.add_parser("down", help="stop every host and remove everything the lab created"))
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_down)
    p = named(lab_sub.add_parser("status", help="hosts, addresses, systemd state, memory"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = named(lab_sub.add_parser("ssh", help="ssh into a host (or run a command there)"))
    p.add_argument("host", help="host name, e.g. node1")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command to run (default: a login shell)")
    p.set_defaults(func=cmd_ssh)
    # Every argument goes to kubectl (-n, -o...): only a leading --name LAB is ours.
    p = lab_sub.add_parser(
        "kubectl",
        help="kubectl against a --kubernetes lab (from this machine)",
        usage="weave-node lab kubectl [--name LAB] KUBECTL-ARGS...",
        prefix_chars="+",
        add_help=False,
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="kubectl's arguments, e.g. -n kube-system get pods")
    p.set_defaults(func=cmd_kubectl)
    p = named(
        lab_sub.add_parser("reboot", help="reboot a host as a machine reboots (its disk stays, /run and links go)")
    )
    p.add_argument("host", help="host name, e.g. node3")
    p.set_defaults(func=cmd_reboot)
    p = named(lab_sub.add_parser("ssh-config", help="print the path of the lab's ssh_config"))
    p.set_defaults(func=cmd_ssh_config)


def cmd_up(args: argparse.Namespace) -> int:
    from weave_node.lab import lab
    from weave_node.lab.progress import Progress

    progress = Progress(quiet=args.quiet)
    vms = args.hosts if args.vm == -1 else args.vm
    st = lab.up(
        args.name, args.hosts, progress, kubernetes=args.kubernetes, ipv6=args.ipv6, dual=args.dual_stack, vms=vms
    )
    total = sum(progress.timings.values())
    if not args.quiet and st.paths is not None:
        progress.console.print(
            f"[bold]lab {args.name!r} is up[/bold]: {len(st.hosts)} hosts in {total:.1f} s. "
            f"Try: weave-node lab ssh node1 · pyinfra inventory/lab.py ... · weave-node lab down"
        )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from weave_node.lab import lab
    from weave_node.lab.progress import Progress

    progress = Progress(quiet=args.quiet)
    if not lab.down(args.name, progress) and not args.quiet:
        progress.console.print(f"lab {args.name!r} is not up: nothing to remove")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from weave_node.lab import lab

    st = lab.status(args.name)
    if args.json:
        doc = {
            "name": st.name,
            "up": st.up,
            "hosts": [asdict(h) for h in st.hosts],
            "leftovers": st.leftovers,
            "ssh_config": str(st.paths.ssh_config) if st.paths and st.spec else None,
            "underlay_netns": st.spec.underlay_netns if st.spec else None,
        }
        print(json.dumps(doc, indent=2))
        return 0 if st.up else 3
    console = Console(highlight=False)
    if st.spec is None:
        console.print(f"lab {st.name!r} is down")
        if st.leftovers:
            console.print("leftovers (removed by `weave-node lab down`): " + ", ".join(st.leftovers))
        return 3
    table = Table(title=f"lab {st.name!r}: {'up' if st.up else 'DEGRADED'}")
    for col in ("host", "address", "netns", "PID 1 (here)", "systemd", "memory (PSS)"):
        table.add_column(col)
    for h in st.hosts:
        table.add_row(h.name, h.address, h.netns, str(h.pid1 or "-"), h.system_state, f"{h.pss_mib:.1f} MiB")
    console.print(table)
    if st.paths:
        console.print(f"ssh: weave-node lab ssh node1   (or ssh -F {st.paths.ssh_config} node1)")
    return 0 if st.up else 3


def cmd_ssh(args: argparse.Namespace) -> int:
    from weave_node.lab import lab

    argv = lab.ssh_argv(args.name, args.host, list(args.command))
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process with ssh on purpose


def cmd_kubectl(args: argparse.Namespace) -> int:
    from weave_node.lab import lab

    rest, name = list(args.args), DEFAULT_NAME
    if rest[:1] == ["--name"] and len(rest) > 1:
        name, rest = rest[1], rest[2:]
    elif rest[:1] and rest[0].startswith("--name="):
        name, rest = rest[0].split("=", 1)[1], rest[1:]
    argv = lab.kubectl_argv(name, rest)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - replaces this process with kubectl on purpose


def cmd_reboot(args: argparse.Namespace) -> int:
    from weave_node.lab.reboot import reboot

    took = reboot(args.name, args.host)
    print(f"{args.host} rebooted: sshd answers again after {took:.1f} s")
    return 0


def cmd_ssh_config(args: argparse.Namespace) -> int:
    from weave_node.lab import lab

    _spec, paths = lab.require_up(args.name)
    print(paths.ssh_config)
    return 0
