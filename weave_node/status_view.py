"""`weave-node status [SECTION]`: the router's state as tables (rich), and the readiness that `--wait` and the
rollout's health gate poll for."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from weave_node.commands import api_get


def _datapath_summary(dp: dict[str, Any]) -> str:
    modes: dict[str, int] = {}
    for p in dp["peers"]:
        modes[p["mode"]] = modes.get(p["mode"], 0) + 1
    fast = f"fastdp ({dp['fastdp']['device']}, UDP {dp['fastdp']['port']})" if dp["fastdp"] else "fastdp off"
    peers = ", ".join(f"{n} {m}" for m, n in sorted(modes.items())) or "no peers"
    sleeve = dp.get("sleeve") or {}
    if "device" in sleeve:
        fast += f", sleeve ({sleeve['device']}, UDP {sleeve['port']}{', encrypted' if sleeve['encrypted'] else ''})"
    elif "error" in sleeve:
        fast += f", sleeve unavailable ({sleeve['error']})"
    enc = dp.get("encryption")
    if enc is not None:
        keyed = f", {enc.get('established', 0)}/{enc.get('peers', 0)} keyed"
        kind = {"esp": "ESP", "wireguard": "WireGuard"}.get(enc.get("kind") or ("esp" if enc["esp"] else ""))
        fast += f", {kind}{keyed}" if kind else f", no kernel encryption ({enc['reason']})"
    address = " ".join(a for a in (dp["bridge_address"], dp.get("bridge_address6")) if a) or "(no address yet)"
    text = f"{fast}, bridge {dp['bridge']} {address}, MTU {dp['mtu']}; {peers}"
    return text + (f"; {len(dp['problems'])} problem(s): see `status datapath`" if dp["problems"] else "")


def _datapath_table(console: Any, table: Any, dp: dict[str, Any] | None) -> None:
    if dp is None:
        console.print("the kernel datapath is off (--datapath none)")
        return
    console.print(_datapath_summary(dp) + f"\nMTU from {dp['mtu_source']}")
    for problem in dp["problems"]:
        console.print(f"[bold red]problem:[/] {problem}")
    encrypted = dp.get("encryption") is not None
    for col in ("peer", "vtep", "mode", "heartbeat", "sleeve", *(["encryption"] if encrypted else []), "why"):
        table.add_column(col)
    for p in dp["peers"]:
        ago = "never" if p["last_heartbeat_ago"] is None else f"{p['last_heartbeat_ago']} s ago"
        enc = [_encryption_cell(p.get("encryption") or {})] if encrypted else []
        table.add_row(p["nickname"] or p["name"], p["vtep"] or "?", p["mode"], ago, _sleeve_cell(p), *enc, p["reason"])


def _encryption_cell(enc: dict[str, Any]) -> str:
    if enc.get("by") == "esp":
        state = "keyed" if enc.get("established") else "keying"
        return f"ESP {state}, gen {enc.get('generation', 0)}, out {enc.get('spi_out') or '-'}"
    if enc.get("by") == "wireguard":
        age = enc.get("handshake_age")
        return f"WireGuard, {'handshake ' + str(age) + ' s ago' if age is not None else 'no handshake yet'}"
    return str(enc.get("by") or "-")


def _dns_summary(d: dict[str, Any]) -> str:
    host = f"[{d['address']}]" if ":" in str(d["address"]) else d["address"]  # (IPv6: the port apart)
    where = f"{d['domain']}. on {host}:{d['port']}" if d["address"] else f"{d['domain']}. (no bridge address yet)"
    if d["problem"]:
        where = f"{d['domain']}. not served: {d['problem']}"
    upstreams = ", ".join(d["upstreams"]) or "none"
    return f"{where}; {d['records']} names ({d['own_records']} here); forwarding to {upstreams}"


def _sleeve_cell(peer: dict[str, Any]) -> str:
    sleeve = peer.get("sleeve")
    if not sleeve:
        return "-"
    link = sleeve.get("link")
    parts = []
    if link:
        parts.append(f"UDP {'ok' if link['up'] else 'no answer'}")
        if link["verified_mtu"]:
            parts.append(f"MTU {link['verified_mtu']}")
    if sleeve.get("via") and sleeve["via"] != "direct":
        parts.append(f"via {sleeve['via']}")
    return ", ".join(parts) or "-"


def not_ready(doc: dict[str, Any], peers: int = 0) -> str:
    """Why a router is not ready yet ("" when it is): what deploy health gates wait for."""
    reachable = doc["router"]["reachable"] - 1
    if reachable < peers:
        return f"{reachable} of {peers} expected peer(s) reachable"
    ipam = doc.get("ipam")
    if ipam is not None and "leaving" in ipam:
        return ""  # it left the ring (it is being removed): as settled as it will get
    # (not while held back by a peer without the range's family: in a rolling change of IPALLOC_RANGE's families,
    # the peers not yet restarted hold it back, and waiting for them here would stop the roll)
    if ipam is not None and not ipam["ready"] and not ipam.get("held"):
        return f"IPAM: {ipam['waiting'] or 'not ready'}"
    v6 = (ipam or {}).get("ipv6")
    if v6 is not None and not v6["ready"] and not v6.get("held"):
        return f"IPv6 IPAM: {v6['waiting'] or 'not ready'}"
    dp = doc.get("datapath")
    if dp is not None and not dp["bridge_address"] and not (ipam or {}).get("held"):  # (held: its address too)
        return "the weave bridge has no address yet"
    return ""


def _wait_ready(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    import time

    from weave_node.api.client import ApiError
    from weave_node.core.errors import WeaveError

    deadline = time.monotonic() + seconds
    why = "no answer"
    while True:
        try:
            doc: dict[str, Any] = api_get(args, "/status")
            why = not_ready(doc, args.peers)
            if not why:
                return doc
        except ApiError as exc:
            why = str(exc)
        if time.monotonic() >= deadline:
            raise WeaveError(f"the router is not ready after {seconds:g} s: {why}")
        time.sleep(0.2)  # polling a remote state with a deadline


def _ipam_table(console: Any, table: Any, i: dict[str, Any]) -> None:
    console.print(
        f"range {i['range']} ({i['init']}): {'ready' if i['ready'] else i['waiting']}; here "
        f"{i['used']} used, {i['free']} free of {i['owned']} ({i['used_percent']}%)"
    )
    rows = []
    for o in i["owners"]:
        if o["reachable"]:
            reach = "yes"
        elif o["unreachable_for"] is None:
            reach = "no, never seen here"
        else:
            reach = f"no, seen {o['unreachable_for']:.0f} s ago"
        rows.append([o["peer"], o["nickname"], str(o["size"]), str(o["free_reported"]), reach])
    # Every column in full (the peer name is what rmpeer takes); on a narrow terminal only the ranges give way.
    heads = ["peer", "nickname", "addresses", "free", "reachable"]
    used = sum(max(len(c) for c in [h, *(r[k] for r in rows)]) + 2 for k, h in enumerate(heads))
    for h in heads:
        table.add_column(h, no_wrap=True)
    table.add_column("ranges", no_wrap=True, overflow="ellipsis", max_width=max(6, console.width - used - 2))
    for o, row in zip(i["owners"], rows, strict=True):
        table.add_row(*row, " ".join(o["ranges"][:2]))


def cmd_status(args: argparse.Namespace) -> int:  # noqa: PLR0912 - one branch per table
    from rich.console import Console
    from rich.table import Table

    doc = _wait_ready(args, args.wait) if args.wait is not None else api_get(args, "/status")
    if args.json:
        print(json.dumps(doc[args.section] if args.section else doc, indent=2))
        return 0
    console = Console(highlight=False)
    r = doc["router"]
    if args.section is None:
        states = ", ".join(f"{n} {s}" for s, n in sorted(r["connections_by_state"].items())) or "none"
        rows = [
            ("Version", doc["version"]),
            ("Name", f"{r['name']} ({r['nickname']})"),
            ("Encryption", "enabled" if r["encryption"] else "disabled"),
            ("Peers", f"{r['peers']} (reachable {r['reachable']})"),
            ("Connections", f"{sum(r['connections_by_state'].values())} ({states})"),
            ("Targets", str(len(doc["targets"]))),
            ("Port", str(r["port"])),
            ("Uptime", f"{r['uptime_seconds']} s"),
        ]
        if "ipam" in doc:
            for i in (doc["ipam"], doc["ipam"].get("ipv6")):
                if i is not None:
                    state = "ready" if i["ready"] else i["waiting"] or "not ready"
                    rows.append(("IPAM", f"{i['range']}, {state}; {i['used']} used of {i['owned']} owned"))
        if "datapath" in doc:
            rows.append(("Datapath", _datapath_summary(doc["datapath"])))
        if doc.get("dns", {}).get("enabled"):
            rows.append(("DNS", _dns_summary(doc["dns"])))
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            console.print(f"  {key:>{width}}: {value}")
        return 0
    if args.section == "dns":
        d = doc["dns"]
        console.print(_dns_summary(d) if d.get("enabled") else "DNS is off (WEAVE_NO_DNS)")
        for key, n in sorted(d.get("counters", {}).items()):
            console.print(f"  {key}: {n}")
        return 0
    table = Table(box=None)
    if args.section == "datapath":
        _datapath_table(console, table, doc.get("datapath"))
    elif args.section == "ipam":
        _ipam_table(console, table, doc["ipam"])
        if "ipv6" in doc["ipam"]:  # dual-stack: the IPv6 range's ring below
            console.print(table)
            table = Table(box=None)
            _ipam_table(console, table, doc["ipam"]["ipv6"])
    elif args.section == "peers":
        for col in ("name", "nickname", "version", "next hop", "connections"):
            table.add_column(col)
        for p in doc["peers"]:
            conns = ", ".join(
                f"{'->' if c['outbound'] else '<-'}{c['nickname'] or c['name']}" for c in p["connections"]
            )
            hop = "(self)" if p["is_local"] else (p["next_hop"] or "unreachable")
            table.add_row(p["name"], p["nickname"], str(p["version"]), hop, conns)
    elif args.section == "connections":
        for col in ("", "address", "state", "peer", "info"):
            table.add_column(col)
        for c in doc["connections"]:
            who = f"{c['name']}({c['nickname']})" if c["name"] else ""
            table.add_row(c["direction"], c["address"], c["state"], who, c["info"])
        for t in doc["targets"]:
            if t["state"] == "retrying":
                table.add_row(
                    "->", t["address"], "retrying", t["peer"] or "", f"{t['last_error']}; in {t['retry_in']} s"
                )
    else:
        for col in ("address", "origin", "state", "peer", "attempts", "last error"):
            table.add_column(col)
        for t in doc["targets"]:
            table.add_row(t["address"], t["origin"], t["state"], t["peer"] or "", str(t["attempts"]), t["last_error"])
    console.print(table)
    sys.stdout.flush()
    return 0
