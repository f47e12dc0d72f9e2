"""Composition root of the router: the only module that wires every layer together."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from weave_node.api.metrics import MetricsServer, RouterMetrics
from weave_node.api.pods import PodService
from weave_node.api.reload import Apply, NeedsRestart
from weave_node.api.server import ApiServer, full_status
from weave_node.config import RouterConfig, live_settings, mesh_settings
from weave_node.core.address import Range, ip_str
from weave_node.datapath.model import BRIDGE
from weave_node.dns.node import Dns
from weave_node.dns.service import CHANNEL as DNS_CHANNEL
from weave_node.dns.service import DnsRecords
from weave_node.ipam.allocator import Allocator
from weave_node.ipam.errors import IpamError
from weave_node.ipam.families import CHANNEL6, FEATURE_FAMILIES, FEATURE_IPV4, FEATURE_IPV6, Ipam
from weave_node.ipam.model import Key
from weave_node.ipam.service import CHANNEL, IpamService
from weave_node.ipam.store import Store
from weave_node.mesh.crypto import PasswordKey, SessionKeys
from weave_node.mesh.hostid import load_or_create_host_id
from weave_node.mesh.peer import format_name, name_from_host_id, new_uid, parse_name
from weave_node.mesh.protocol import Identity, ProtocolConfig
from weave_node.mesh.router import Router
from weave_node.overlay import encryption
from weave_node.overlay.config import OverlayConfig
from weave_node.overlay.esp.runtime import CHANNEL as ESP_CHANNEL
from weave_node.overlay.esp.runtime import FEATURE as FEATURE_ESP
from weave_node.overlay.esp.runtime import EspRuntime
from weave_node.overlay.peers import vtep_address
from weave_node.overlay.service import CHANNEL as OVERLAY_CHANNEL
from weave_node.overlay.service import OverlayService
from weave_node.overlay.sleeve import codec
from weave_node.overlay.wireguard.runtime import CHANNEL as WG_CHANNEL
from weave_node.overlay.wireguard.runtime import FEATURE as FEATURE_WG

log = logging.getLogger("weave_node")
BRIDGE_CONTAINER_ID = "weave:bridge"  # the IPAM allocation of the bridge's own address (Weave's "weave:expose")


def setup_logging(level: str = "info") -> None:
    # Under systemd (journald adds its own timestamps) a line is "LEVEL message"; elsewhere it has a time.
    fmt = "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


SLEEVE_AESGCM = "sleeve-aes256gcm"  # mesh feature: this router's CPU can seal sleeve datagrams with AES-256-GCM


def make_identity(config: RouterConfig) -> Identity:
    if config.name:
        name = parse_name(config.name)
    else:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        name = name_from_host_id(load_or_create_host_id(config.state_dir / "host-id"))
    return Identity(name=name, nickname=config.nickname, uid=new_uid(random.SystemRandom()))


def make_ipam(config: RouterConfig, identity: Identity, router: Router) -> Ipam:
    """IPAM on the router's "ipam" gossip channel, persisted in <state-dir>/ipam.db, fed the topology; dual-stack,
    the IPv6 range's beside it on "ipam6", in ipam6.db (ipam/families.py)."""
    first, range6 = config.ipalloc_range, config.ipalloc_range6
    v4 = None if first.ipv6 else _ipam_service(config, identity, router, first, channel=CHANNEL, db="ipam.db")
    range6 = first if first.ipv6 else range6  # (an IPv6 range alone)
    v6 = None if range6 is None else _ipam_service(config, identity, router, range6, channel=CHANNEL6, db="ipam6.db")
    held = {"IPv4": "", "IPv6": ""}  # why each family's ring is held back (ipam/families.py)

    def features_changed() -> None:
        nicks = {n: r.nickname for n, r in router.topology.records.items()}
        for family, service, lacks, why in (
            ("IPv6", v6, frozenset(), "IPALLOC_RANGE without one, or an older weave-node"),
            ("IPv4", v4, frozenset({FEATURE_FAMILIES, FEATURE_IPV6}), "an IPv6 range alone"),
        ):  # (`lacks`: the features shared with a peer that lacks the family, beside lacking the family's own)
            feature = FEATURE_IPV6 if family == "IPv6" else FEATURE_IPV4
            lacking = sorted(f"{format_name(n.name)}({nicks.get(n.name, '')})" for n in router.neighbours()
                             if service is not None and feature not in n.features and lacks <= n.features)  # fmt: skip
            reason = (
                f"connected peer(s) {', '.join(lacking)} carry no {family} range ({why}): give every router the same "
                "IPALLOC_RANGE"
                if lacking
                else ""
            )
            if reason != held[family]:
                message = reason or "every connected peer carries it"
                (log.warning if reason else log.info)("%s IPAM: %s", family, message)
                held[family] = reason

    router.on_change.append(features_changed)
    return Ipam(v4, v6, held6=lambda: held["IPv6"], held4=lambda: held["IPv4"])


def _ipam_service(config: RouterConfig, identity: Identity, router: Router, span: Range, *, channel: str,
                  db: str) -> IpamService:  # fmt: skip
    init = config.init
    config.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.state_dir / db, me=identity.name, span=span)
    loaded = store.load()
    alloc = Allocator(
        identity.name,
        span,
        init,
        reclaim_after=config.ipam_reclaim_after,
        reclaim_replaced=config.ipam_reclaim_replaced,
        now=router.clock.now(),
        ring=loaded.ring,
        claims=loaded.claims,
        allocations=loaded.allocations,
        away=store.away(),
        seen_ago=loaded.seen_ago,
        orphans=loaded.orphans,
        shared_nicknames=loaded.shared,
        leaving=loaded.leaving,
    )
    log.info(
        "IPAM: range %s, %s, %d allocation(s) restored, reclaim after %gs%s",
        span,
        init.mode if init.mode != "consensus" else f"consensus among {init.peers} peer(s)",
        len(loaded.allocations),
        config.ipam_reclaim_after,
        "" if config.ipam_reclaim_replaced else ", a replaced host's old identity too (WEAVE_NO_IPAM_RECLAIM_REPLACED)",
    )
    service = IpamService(alloc, store, router.clock)
    service.attach(router.register_channel(channel, service))

    def topology_changed() -> None:
        service.set_reachable({n: r.nickname for n, r in router.topology.records.items()})

    router.on_change.append(topology_changed)
    topology_changed()
    return service


def make_overlay(
    config: RouterConfig, identity: Identity, router: Router, ipam: Ipam, crypt: tuple[str, str | None] = ("", None)
) -> OverlayService:
    """The kernel datapath, fed the topology, with the bridge's address(es) from IPAM (like Weave's `weave expose`).
    `crypt`: the kernel encryption VXLAN may take with a password, or why none (kernel_encryption)."""

    def bridge_address(service: IpamService) -> Callable[[str | None], Awaitable[str]]:
        async def get(current: str | None) -> str:
            key = Key(BRIDGE_CONTAINER_ID, BRIDGE)
            if current:
                # Keep the address the bridge already has (running pods use it as their gateway) if IPAM agrees.
                try:
                    await service.claim(key, int(ipaddress.ip_interface(current).ip))
                except IpamError as exc:
                    log.warning("bridge address %s cannot be kept (%s): taking a new one", current, exc)
            ip = await service.allocate(key, wait=30.0)
            return f"{ip_str(ip)}/{service.range.prefix}"

        return get

    overlay = OverlayService(
        identity.name,
        OverlayConfig(
            pod_range=config.ipalloc_range,
            pod_range6=config.ipalloc_range6,
            mtu=config.mtu,
            peer_hosts=tuple(p.host for p in config.peers),
            fastdp=config.fastdp,
            retain=config.peer_retain,
            sleeve=config.sleeve,
            encrypt=config.password is not None,
            bridge_netfilter=config.bridge_netfilter,
            direct=config.direct,
            esp=crypt[0] == "esp",
            wireguard=crypt[0] == "wireguard",
            esp_rekey=config.esp_rekey,
            esp_note=crypt[1] or "",
        ),
        bridge_address(ipam.primary),
        link_keys=lambda name: _sleeve_keys(router, name),
        neighbour=router.neighbour,
        records=lambda: router.topology.records,
        space=ipam.primary.spans,  # direct mode routes IPv4 only (IPv6 crosses hosts on layer 2)
        bridge_address6=None if ipam.dual is None else bridge_address(ipam.dual),
    )
    overlay.gossip.attach(router.register_channel(OVERLAY_CHANNEL, overlay.gossip))
    if overlay.esp is not None:
        channel = ESP_CHANNEL if isinstance(overlay.esp, EspRuntime) else WG_CHANNEL
        overlay.esp.channel = router.register_channel(channel, overlay.esp)
    ipam.set_on_change(overlay.space_changed)

    def topology_changed() -> None:
        direct, local = {}, []
        for n in router.neighbours():
            if vtep_address(n.remote_address):
                direct[n.name] = vtep_address(n.remote_address)
            if vtep_address(n.local_address):
                local.append(vtep_address(n.local_address))
        overlay.topology_changed({n: r.nickname for n, r in router.topology.records.items()}, direct, local)

    router.on_change.append(topology_changed)
    topology_changed()
    return overlay


def make_dns(config: RouterConfig, identity: Identity, router: Router, ipam: Ipam, overlay: OverlayService) -> Dns:
    """Names on the router's "dns" gossip channel, our own kept in <state-dir>/dns.json; a server on the bridge."""
    records = DnsRecords(identity.name, config.state_dir / "dns.json", max_name=252 - len(config.dns.domain))
    records.attach(router.register_channel(DNS_CHANNEL, records))
    ranges = ipam.ranges
    dns = Dns(config.dns, records, lambda: (overlay.bridge_cidr or "").split("/")[0] or None,
              lambda ip: any(ip in r for r in ranges))  # fmt: skip
    space_changed = overlay.space_changed

    def ring_changed() -> None:
        space_changed()
        records.space_changed(ipam.owners_with_space())

    ipam.set_on_change(ring_changed)
    records.space_changed(ipam.owners_with_space())
    return dns


def kernel_encryption(config: RouterConfig) -> tuple[str, str | None]:
    """The kernel encryption VXLAN may take here, or why none (overlay/encryption.py's `choose`)."""
    fastdp = config.datapath == "kernel" and config.fastdp
    return encryption.choose(config.encryption, password=config.password is not None, fastdp=fastdp)


def _sleeve_keys(router: Router, name: int) -> tuple[SessionKeys, int] | None:
    """The sleeve keys of our connection to `name`, and the cipher both ends can do."""
    n = router.neighbour(name)
    if n is None or n.sleeve_keys is None:
        return None
    aes = SLEEVE_AESGCM in n.features  # the intersection of both ends' features
    return n.sleeve_keys, codec.MODE_AESGCM if aes else codec.MODE_SECRETBOX


def _password_keys(
    password: bytes | None, previous: bytes | None
) -> tuple[PasswordKey | None, tuple[PasswordKey, ...]]:
    primary = PasswordKey.from_password(password) if password else None
    return primary, (PasswordKey.from_password(previous),) if primary is not None and previous else ()


def live_applier(router: Router) -> Apply:
    """`weave-node reload`: a changed peer list and passwords, applied to the running router."""

    async def apply(doc: dict[str, Any]) -> dict[str, Any]:
        live = await asyncio.to_thread(live_settings, doc)  # reads the password files (ConfigError: 400)
        current = router.protocol_config
        if (live.password is None) != (current.password_key is None):
            turn = "on" if live.password is not None else "off"
            hint = (
                " (a password given in WEAVE_PASSWORD cannot be reloaded: use WEAVE_PASSWORD_FILE)"
                if turn == "off"
                else ""
            )
            raise NeedsRestart(
                f"turning encryption {turn} needs a restart of the router (the datapath changes with it): "
                f"systemctl restart weave-node{hint}"
            )
        primary, previous = await asyncio.to_thread(_password_keys, live.password, live.previous_password)
        wanted = dataclasses.replace(
            current, password_key=primary, previous_keys=previous, accept_plaintext=live.accept_unencrypted
        )
        redone = router.set_protocol_config(wanted) if wanted != current else 0
        added, dropped = router.replace_peers(live.peers)
        parts = [
            f"peers added: {' '.join(map(str, added))}" if added else "",
            f"peers no longer configured: {' '.join(map(str, dropped))}" if dropped else "",
            f"encryption settings changed ({wanted.encryption}), {redone} connection(s) re-established"
            if wanted != current
            else "",
        ]
        return {
            "summary": "; ".join(p for p in parts if p) or "nothing changed",
            "peers_added": [str(a) for a in added],
            "peers_dropped": [str(a) for a in dropped],
            "connections_reestablished": redone,
        }

    return apply


async def run_router(config: RouterConfig) -> int:
    for warning in config.warnings:
        log.warning("%s", warning)
    identity = make_identity(config)
    primary, previous = _password_keys(config.password, config.previous_password)
    crypt = await asyncio.to_thread(kernel_encryption, config) if config.password else ("", "no password")
    protocol_config = ProtocolConfig(
        password_key=primary,
        previous_keys=previous,
        accept_plaintext=config.accept_unencrypted,
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        features=frozenset(
            ({SLEEVE_AESGCM} if config.sleeve_aesgcm and codec.aesgcm_available() else set())
            | ({FEATURE_IPV6} if config.ipalloc_range6 is not None or config.ipalloc_range.ipv6 else set())
            | ({FEATURE_IPV4} if not config.ipalloc_range.ipv6 else set())
            | {FEATURE_FAMILIES}
            | ({FEATURE_ESP} if crypt[0] == "esp" else set())
            | ({FEATURE_WG} if crypt[0] == "wireguard" else set())
        ),
    )
    router = Router(mesh_settings(config), identity, protocol_config)
    ipam = make_ipam(config, identity, router)
    overlay = make_overlay(config, identity, router, ipam, crypt) if config.datapath == "kernel" else None
    dns = make_dns(config, identity, router, ipam, overlay) if overlay is not None and config.dns.enabled else None
    if overlay is not None and config.password and not config.sleeve:
        log.warning("a password is set but the sleeve is off (WEAVE_NO_SLEEVE): pods on other hosts are unreachable")
    metrics = RouterMetrics(lambda: full_status(router, ipam, overlay, dns))
    pods = (
        PodService(
            ipam,
            overlay,
            config.state_dir / "cni-pending",
            on_op=metrics.observe_cni,
            dns=dns,
        )
        if overlay is not None
        else None
    )
    metrics_server = MetricsServer(metrics, config.metrics_addr) if config.metrics_addr else None
    api = ApiServer(
        router,
        config.status_addr,
        config.status_socket,
        ipam=ipam,
        overlay=overlay,
        pods=pods,
        apply=live_applier(router),
        dns=dns,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await router.start()
    await ipam.start()
    if overlay is not None:
        await overlay.start()
    if dns is not None:
        await dns.start(f"{k.container_id}/{k.ifname}" for k in ipam.held_keys())
    if pods is not None:
        await pods.start()  # completes the DELs recorded while the router was down
    await api.start()
    if metrics_server is not None:
        await metrics_server.start()
    log.info("weave-node router %s(%s) is up", format_name(identity.name), identity.nickname)
    await stop.wait()
    log.info("shutting down")
    if metrics_server is not None:
        await metrics_server.stop()
    await api.stop()
    if pods is not None:
        await pods.stop()
    if dns is not None:
        await dns.stop()
    if overlay is not None:
        await overlay.stop()  # first, so the mesh going down changes nothing; the kernel datapath stays
    await router.stop()
    await ipam.stop()
    return 0


def main(config: RouterConfig, log_level: str = "info") -> int:
    setup_logging(log_level)
    return asyncio.run(run_router(config))
