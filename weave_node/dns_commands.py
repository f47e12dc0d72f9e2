"""`weave-node dns ...` and the router's DNS flags (the client side of the router's /dns endpoints)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_router_flags(r: argparse.ArgumentParser) -> None:
    r.add_argument("--no-dns", action="store_const", const="1", help="no DNS server and no names (also WEAVE_NO_DNS)")
    r.add_argument("--dns-domain", help="the domain the router answers for (default weave.local; WEAVE_DNS_DOMAIN)")
    r.add_argument("--dns-ttl", help="seconds answers may be cached (default 5; WEAVE_DNS_TTL)")
    r.add_argument(
        "--dns-upstream",
        dest="dns_upstreams",
        action="append",
        metavar="ADDRESS[:PORT]",
        help="a resolver for every other name (repeatable; default: /etc/resolv.conf's; WEAVE_DNS_UPSTREAMS)",
    )


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], api_flags: Any) -> None:
    dns = sub.add_parser("dns", help="names in the routers' DNS: add or remove by hand, look up, list")
    dsub = dns.add_subparsers(dest="dns_cmd", required=True, metavar="COMMAND")
    p = dsub.add_parser("add", help="name an address (on this router, gossiped to every other)")
    p.add_argument("name", help="e.g. db or db.weave.local")
    p.add_argument("ip")
    p = dsub.add_parser("remove", help="remove names added here by hand (all of the name's, or one address)")
    p.add_argument("name")
    p.add_argument("ip", nargs="?")
    p = dsub.add_parser("lookup", help="the addresses of a name, as every router answers it")
    p.add_argument("name")
    p = dsub.add_parser("list", help="every name every router holds")
    p.add_argument("--json", action="store_true")
    for p in dsub.choices.values():
        api_flags(p)
    dns.set_defaults(func=cmd_dns)


def cmd_dns(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from rich.console import Console
    from rich.table import Table

    from weave_node.commands import api_get

    if args.dns_cmd == "add":
        doc = api_get(args, "/dns/records", "POST", {"name": args.name, "ip": args.ip})
        print(f"{doc['name']} -> {doc['ip']}")
    elif args.dns_cmd == "remove":
        body = {"name": args.name, **({"ip": args.ip} if args.ip else {})}
        removed = api_get(args, "/dns/remove", "POST", body)["removed"]
        print(f"removed {removed} record(s)")
        return 0 if removed else 1
    elif args.dns_cmd == "lookup":
        ips = api_get(args, f"/dns/lookup?name={quote(args.name, safe='')}")["ips"]
        print("\n".join(ips) if ips else f"{args.name}: no such name")
        return 0 if ips else 1
    else:
        rows = api_get(args, "/dns/records")
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        table = Table(box=None)
        for col in ("name", "address", "container", "peer"):
            table.add_column(col)
        for row in rows:
            table.add_row(row["name"], row["ip"], row["container"] or "(by hand)", row["owner"])
        Console(highlight=False).print(table)
    return 0
