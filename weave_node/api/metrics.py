"""Prometheus metrics on :6782/metrics, with Weave's names where Weave had one.

The gauges are computed at scrape time from the status snapshot (the same document `weave-node status --json`
shows), by `families()`, a pure function; only the CNI operation counters and latency histograms are live
instruments. Each router has its own registry (no process-global state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from weave_node.core.address import parse_hostport

log = logging.getLogger("weave_node.metrics")
CONNECTION_STATES = ("established", "pending", "connecting", "retrying")
MODES = ("fastdp", "direct", "pending", "down", "sleeve")


def families(doc: dict[str, Any]) -> list[Metric]:
    """Every status-derived metric family from one status snapshot (pure)."""
    r = doc["router"]
    out: list[Metric] = []
    info = GaugeMetricFamily("weave_node_info", "This router.", labels=["version", "name", "nickname"])
    info.add_metric([doc["version"], r["name"], r["nickname"]], 1)
    out.append(info)
    conns = GaugeMetricFamily(
        "weave_connections", "Number of peer-to-peer connections.", labels=["state", "type", "encryption"]
    )
    by_state = dict(r["connections_by_state"])
    by_state["pending"] = by_state.pop("handshaking", 0) + by_state.get("pending", 0)
    for state in CONNECTION_STATES:
        conns.add_metric([state, "tcp", "yes" if r["encryption"] else ""], by_state.get(state, 0))
    out.append(conns)
    out.append(
        CounterMetricFamily(
            "weave_connection_terminations", "Number of peer-to-peer connections terminated.", value=r["terminations"]
        )
    )
    refused = CounterMetricFamily(
        "weave_node_connections_refused", "Inbound connections refused or evicted, by reason.", labels=["reason"]
    )
    for reason, n in r.get("refused", {}).items():
        refused.add_metric([reason], n)
    failed = CounterMetricFamily(
        "weave_node_messages_failed", "Received peer messages that failed, by outcome.", labels=["outcome"]
    )
    for outcome, n in r.get("message_errors", {}).items():
        failed.add_metric([outcome], n)
    out += [refused, failed]
    out.append(GaugeMetricFamily("weave_node_peers", "Peers in the topology, this one included.", value=r["peers"]))
    out.append(
        GaugeMetricFamily("weave_node_reachable_peers", "Peers this router has a route to.", value=r["reachable"])
    )
    if "ipam" in doc:
        out += _ipam(doc["ipam"])
        if "ipv6" in doc["ipam"]:
            out += _ipam6(doc["ipam"]["ipv6"])
        elif doc["ipam"].get("family") == "ipv6":  # an IPv6 range alone: its series under both names
            out += _ipam6(doc["ipam"])
    if "datapath" in doc:
        out += _datapath(doc["datapath"])
    if doc.get("dns", {}).get("enabled"):
        out += _dns(doc["dns"])
    return out


def _dns(d: dict[str, Any]) -> list[Metric]:
    records = GaugeMetricFamily("weave_node_dns_records", "Names this router answers, by owner.", labels=["owner"])
    records.add_metric(["self"], d["own_records"])
    records.add_metric(["all"], d["records"])
    queries = CounterMetricFamily(
        "weave_node_dns_queries", "DNS queries by outcome (answered, nxdomain, nodata, forwarded, ...).",
        labels=["outcome"],
    )  # fmt: skip
    for outcome, n in sorted(d["counters"].items()):
        if outcome != "queries":
            queries.add_metric([outcome], n)
    up = GaugeMetricFamily("weave_node_dns_serving", "1 when the DNS server is bound to the bridge's address.")
    up.add_metric([], 1 if d["address"] and not d["problem"] else 0)
    return [records, queries, up]


def _ipam(i: dict[str, Any]) -> list[Metric]:
    ips = GaugeMetricFamily("weave_ips", "Number of IP addresses.", labels=["state"])
    ips.add_metric(["local-used"], i["used"])
    ips.add_metric(["local-free"], i["free"])
    prefix = int(str(i["range"]).split("/")[1])
    size = 2 ** ((128 if ":" in str(i["range"]) else 32) - prefix)  # (an IPv6 range alone is the first range)
    unreachable = [o for o in i["owners"] if not o["reachable"]]
    lost = sum(o["size"] for o in unreachable)
    orphans = GaugeMetricFamily(
        "weave_node_ipam_orphaned_addresses",
        "Pods' addresses in space reclaimed while this host was cut off: asking for them back, or in conflict.",
        labels=["state"],
    )
    for state in ("asking", "conflict"):
        orphans.add_metric([state], sum(1 for o in i.get("orphans", []) if o["state"] == state))
    return [
        ips,
        GaugeMetricFamily("weave_max_ips", "Size of IP address space used by allocator.", value=size),
        GaugeMetricFamily(
            "weave_ipam_unreachable_count",
            "Number of unreachable peers that own IPAM addresses.",
            value=len(unreachable),
        ),
        GaugeMetricFamily(
            "weave_ipam_unreachable_percentage",
            "Percentage of all IP addresses owned by unreachable peers.",
            value=100.0 * lost / size,
        ),
        GaugeMetricFamily(
            "weave_ipam_pending_allocates", "Number of pending allocates.", value=i.get("pending_allocates", 0)
        ),
        GaugeMetricFamily("weave_node_ipam_ready", "1 when IPAM can allocate.", value=1 if i["ready"] else 0),
        orphans,
    ]


def _ipam6(i: dict[str, Any]) -> list[Metric]:
    """The IPv6 range: its own series (the Weave-compatible ones above are the first range's: IPv4's, dual-stack)."""
    ips = GaugeMetricFamily("weave_node_ipam_ipv6_ips", "IPv6 addresses here.", labels=["state"])
    ips.add_metric(["local-used"], i["used"])
    ips.add_metric(["local-free"], i["free"])
    size = 2 ** (128 - int(str(i["range"]).split("/")[1]))
    lost = sum(o["size"] for o in i["owners"] if not o["reachable"])
    return [
        ips,
        GaugeMetricFamily(
            "weave_node_ipam_ipv6_unreachable_percentage",
            "Percentage of the IPv6 range owned by unreachable peers.",
            value=100.0 * lost / size,
        ),
        GaugeMetricFamily("weave_node_ipam_ipv6_ready", "1 when IPv6 IPAM can allocate.", value=1 if i["ready"] else 0),
    ]


def _datapath(d: dict[str, Any]) -> list[Metric]:
    modes = GaugeMetricFamily("weave_node_datapath_peers", "Remote peers by datapath mode.", labels=["mode"])
    for mode in MODES:
        modes.add_metric([mode], sum(1 for p in d["peers"] if p["mode"] == mode))
    per_peer = GaugeMetricFamily(
        "weave_node_datapath_peer_fastdp", "1 while the peer's fast datapath works.", labels=["peer", "nickname"]
    )
    direct = GaugeMetricFamily(
        "weave_node_datapath_peer_direct",
        "1 while pod traffic to the peer is routed over the underlay without encapsulation (direct mode).",
        labels=["peer", "nickname"],
    )
    for p in d["peers"]:
        per_peer.add_metric([p["name"], p["nickname"]], 1 if p["mode"] in ("fastdp", "direct") else 0)
        direct.add_metric([p["name"], p["nickname"]], 1 if p["mode"] == "direct" else 0)
    return [
        modes,
        per_peer,
        direct,
        *_sleeve(d.get("sleeve") or {}),
        *_encryption(d),
        GaugeMetricFamily("weave_node_mtu", "MTU of the bridge, the VXLAN device and pods.", value=d["mtu"]),
        GaugeMetricFamily(
            "weave_node_datapath_problems", "Conflicts the router will not fix itself.", value=len(d["problems"])
        ),
    ]


def _encryption(d: dict[str, Any]) -> list[Metric]:
    """With a password: each peer's encryption (esp, wireguard or sleeve), ESP pairs keyed, rekeys; WireGuard's
    peers with a handshake."""
    enc = d.get("encryption")
    if not enc:
        return []
    by = GaugeMetricFamily(
        "weave_node_encryption_peer",
        "1 for how the peer's pod traffic is encrypted.",
        labels=["peer", "nickname", "by"],
    )
    for p in d["peers"]:
        how = (p.get("encryption") or {}).get("by") or "none"
        by.add_metric([p["name"], p["nickname"], how], 1)
    out: list[Metric] = [by]
    if enc.get("esp"):
        out += [
            GaugeMetricFamily("weave_node_esp_peers", "Peers whose VXLAN is ESP's.", value=enc.get("peers", 0)),
            GaugeMetricFamily(
                "weave_node_esp_established", "ESP peers keyed both ways.", value=enc.get("established", 0)
            ),
            CounterMetricFamily("weave_node_esp_rekeys", "ESP rekeys started (inbound).", value=enc.get("rekeys", 0)),
            GaugeMetricFamily(
                "weave_node_esp_errors", "xfrm changes that failed in the last sync.", value=len(enc.get("errors", []))
            ),
        ]
    if enc.get("kind") == "wireguard":
        out += [
            GaugeMetricFamily("weave_node_wireguard_peers", "Peers whose VXLAN is in WireGuard.", value=enc["peers"]),
            GaugeMetricFamily(
                "weave_node_wireguard_established", "WireGuard peers with a handshake.", value=enc["established"]
            ),
            GaugeMetricFamily(
                "weave_node_wireguard_errors", "WireGuard changes that failed in the last sync.",
                value=len(enc.get("errors", [])),
            ),
        ]  # fmt: skip
    return out


def _sleeve(sl: dict[str, Any]) -> list[Metric]:
    if "counters" not in sl:
        return []
    c = sl["counters"]
    frames = CounterMetricFamily("weave_node_sleeve_frames", "Frames carried by the sleeve.", labels=["direction"])
    octets = CounterMetricFamily("weave_node_sleeve_bytes", "Frame bytes carried by the sleeve.", labels=["direction"])
    for direction, key in (("out", "out"), ("in", "in")):
        frames.add_metric([direction], c.get(f"frames_{key}", 0))
        octets.add_metric([direction], c.get(f"bytes_{key}", 0))
    drops = CounterMetricFamily(
        "weave_node_sleeve_drops", "Datagrams the sleeve dropped, by reason.", labels=["reason"]
    )
    for reason, n in sorted(sl.get("drops", {}).items()):
        drops.add_metric([reason], n)
    return [
        frames,
        octets,
        drops,
        CounterMetricFamily(
            "weave_node_sleeve_relayed", "Segments relayed for other peers.", value=c.get("relayed", 0)
        ),
    ]


class _StatusCollector(Collector):
    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())


class RouterMetrics:
    """The router's registry: status-derived families plus the CNI instruments."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(snapshot))
        self.cni_seconds = Histogram(
            "weave_node_cni_operation_seconds",
            "Time the router spent on a CNI operation.",
            ["op"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
            registry=self.registry,
        )
        self.cni_ops = Counter(
            "weave_node_cni_operations",
            "CNI operations handled by the router.",
            ["op", "result"],
            registry=self.registry,
        )

    def observe_cni(self, op: str, seconds: float, ok: bool) -> None:
        self.cni_seconds.labels(op).observe(seconds)
        self.cni_ops.labels(op, "ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """GET /metrics on its own address (default 127.0.0.1:6782; the operator opens it to Prometheus)."""

    def __init__(self, metrics: RouterMetrics, addr: str) -> None:
        self.metrics = metrics
        self.addr = addr
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def _metrics(self, _req: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def start(self) -> None:
        host, port = parse_hostport(self.addr, "--metrics-addr")
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    async def stop(self) -> None:
        await self.runner.cleanup()
