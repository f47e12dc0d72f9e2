"""The overlay shell: keeps the kernel datapath in line with the mesh, and runs the fast-path heartbeats.

- Gossips our PeerInfo (bridge address/MAC, underlay address) on the "overlay" channel and merges the others'.
- Reconciles: desired (pure, overlay.desired) vs observed (datapath.netlink) -> plan -> apply, in one worker
  thread, on every change and every `resync` seconds (so drift, e.g. someone deleting our FDB entry, is repaired).
- Heartbeats: UDP from our bridge address to each peer's, through the tunnel (overlay.health decides modes).
Stopping the router leaves the kernel state alone: pod traffic keeps flowing while the router is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from weave_node.datapath import netlink
from weave_node.datapath.model import (
    BRIDGE,
    FLOOD_MAC,
    VNI,
    VXLAN,
    VXLAN_PORT,
    Desired,
    Observed,
    Pod,
    bridge_mac,
    overlay_mtu,
)
from weave_node.datapath.plan import Plan, plan
from weave_node.mesh.crypto import SessionKeys
from weave_node.mesh.gossip import GossipChannel
from weave_node.mesh.peer import format_name
from weave_node.mesh.topology import PeerRecord
from weave_node.overlay import peers as overlay_peers
from weave_node.overlay.desired import (
    SYSCTL_BRIDGE_NF,
    SYSCTL_FORWARD,
    Retention,
    Settings,
    desired_state,
    merge_adopted,
    peer_entries,
)
from weave_node.overlay.health import Health, Mode
from weave_node.overlay.health import decode as decode_heartbeat
from weave_node.overlay.peers import PeerInfo, PeerTable
from weave_node.overlay.sleeve import codec as sleeve_codec
from weave_node.overlay.sleeve.forwarder import PORT as SLEEVE_PORT
from weave_node.overlay.sleeve.forwarder import Config as SleeveConfig
from weave_node.overlay.sleeve.forwarder import Forwarder, LinkSpec, open_socket
from weave_node.overlay.sleeve.routing import sleeve_routes
from weave_node.overlay.sleeve.tap import open_tap

log = logging.getLogger("weave_node.overlay")
CHANNEL = "overlay"
HEARTBEAT_PORT = 6785  # inside the overlay only (bridge address to bridge address); never on the underlay
TAP = "weave-sleeve"
SLEEVE_OVERHEAD = 20 + 8 + 14 + sleeve_codec.VNET_HDR_SIZE  # IPv4 + UDP + the frame's Ethernet + virtio-net


@dataclass(frozen=True)
class OverlayConfig:
    pod_range: str
    mtu: int | None = None  # None: from the underlay
    peer_hosts: tuple[str, ...] = ()  # initial peers: their routes tell which device is the underlay
    fastdp: bool = True
    retain: float = 60.0
    resync: float = 10.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 4.0
    sleeve: bool = True  # the userspace fallback (and, with a password, the only path for pod traffic)
    encrypt: bool = False  # a password is set: pod traffic only through the sleeve, sealed


class _Heartbeats(asyncio.DatagramProtocol):
    def __init__(self, service: OverlayService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        msg = decode_heartbeat(data)
        # Only from the sender's own bridge address and port: a pod cannot keep a dead peer looking alive.
        if msg is not None and addr[1] == HEARTBEAT_PORT and self.service.heartbeat_peers.get(msg[0]) == addr[0]:
            self.service.health.receive(data, self.service.clock())

    def error_received(self, exc: Exception) -> None:
        log.debug("heartbeat socket: %s", exc)


class OverlayService:
    def __init__(
        self,
        me: int,
        config: OverlayConfig,
        bridge_address: Callable[[str | None], Awaitable[str]],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
        link_keys: Callable[[int], tuple[SessionKeys, int] | None] = lambda _name: None,
        records: Callable[[], Mapping[int, PeerRecord]] = dict,
    ) -> None:
        self.me = me
        self.config = config
        self.clock = clock
        self.wall_ns = wall_ns
        self._bridge_address = bridge_address
        self.mtu, self.mtu_source = config.mtu or 1450, "WEAVE_MTU" if config.mtu else "default"
        self.fastdp = config.fastdp and not config.encrypt  # kernel VXLAN cannot encrypt
        self.settings = Settings(me=me, pod_range=config.pod_range, mtu=self.mtu, fastdp=self.fastdp)
        self.link_keys = link_keys
        self.records = records
        self.forwarder: Forwarder | None = None
        self.sleeve_error: str | None = None
        self.underlay_mtu = 1500
        self._sleeve_pushed: SleeveConfig | None = None
        self._routes_logged: dict[int, int] = {}
        self.table = PeerTable()
        self.mine = PeerInfo(me, wall_ns(), "", 0, bridge_mac(me), "")
        self.table.merge([self.mine])
        self.retention = Retention(retain=config.retain, started=clock())
        self.health = Health(me, interval=config.heartbeat_interval, timeout=config.heartbeat_timeout)
        self.peers: set[int] = set()
        self.nicknames: dict[int, str] = {}
        self.direct: dict[int, str] = {}
        self.vteps: dict[int, str] = {}  # the VTEP in use per peer (kept while a departed peer is retained)
        self.bridge_cidr: str | None = None
        self.problems: tuple[str, ...] = ()
        self.last_sync: dict[str, Any] = {}
        self.channel: GossipChannel | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datapath")
        # Pods get their own threads: an ADD never waits behind a datapath sync (per-attachment order is kept
        # by the caller's locks; different pods are independent in the kernel).
        self.pod_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pods")
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._hb_bound: str | None = None
        self._applied_cidr: str | None = None  # the bridge address the last successful sync put in place
        self.heartbeat_peers: dict[int, str] = {}
        self.flood_entries = 0  # in the last desired state: what the VXLAN device floods to

    # --- gossip (mesh.gossip.Gossiper) ---------------------------------------------------------------------

    def attach(self, channel: GossipChannel) -> None:
        self.channel = channel

    def on_gossip(self, src: int, data: bytes) -> bytes | None:
        news = self._merge(overlay_peers.decode(data))
        return overlay_peers.encode(news) if news else None

    def on_unicast(self, src: int, data: bytes) -> None:
        self._merge(overlay_peers.decode(data))

    def on_broadcast(self, src: int, data: bytes) -> None:
        self._merge(overlay_peers.decode(data))

    def gossip_state(self) -> bytes | None:
        return overlay_peers.encode(self.table.infos.values())

    def _merge(self, infos: list[PeerInfo]) -> list[PeerInfo]:
        # A bridge address outside the pod range (or ours, for another peer) would install a neighbour entry
        # for an address that is not the overlay's: such an entry is dropped.
        ours = self.mine.bridge_ip
        infos = [
            i
            for i in infos
            if i.name == self.me
            or not i.bridge_ip
            or (_in_range(i.bridge_ip, self.config.pod_range) and i.bridge_ip != ours)
        ]
        news = self.table.merge(infos)
        if any(i.name == self.me for i in news):
            # An older incarnation of us (or a clock that went back): reassert ours with a higher version.
            newest = self.table.infos[self.me]
            self._set_mine(replace(self.mine, version=newest.version + 1))
            news = [i for i in news if i.name != self.me]
        if news:
            self._dirty.set()
        return news

    def _set_mine(self, info: PeerInfo) -> None:
        self.mine = info
        self.table.infos[self.me] = info
        if self.channel is not None:
            self.channel.gossip(overlay_peers.encode([info]))

    def _update_mine(self, **changes: Any) -> None:
        new = replace(self.mine, **changes)
        if new != self.mine:
            self._set_mine(replace(new, version=max(self.wall_ns(), self.mine.version + 1)))

    # --- mesh events -------------------------------------------------------------------------------------

    def topology_changed(self, nicknames: dict[int, str], direct: dict[int, str], local_underlay: str) -> None:
        """Called by the daemon on every topology change: the peers, our direct connections' remote
        addresses, and the local address the mesh reaches us at."""
        self.nicknames = dict(nicknames)
        now = self.clock()
        # Peers that just left were present until now: their retention counts from this moment.
        self.retention.present(self.peers, now)
        self.peers = set(nicknames) - {self.me}
        self.retention.present(self.peers, now)
        self.direct = dict(direct)
        self.table.forget(set(nicknames) | self.retention.kept(self.clock()) | {self.me})
        if local_underlay:
            self._update_mine(underlay=local_underlay)
        self._dirty.set()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        observed = await loop.run_in_executor(self.executor, self._observe)
        if self.config.mtu is None:
            self.mtu, self.mtu_source = await loop.run_in_executor(self.executor, self._underlay_mtu)
        if self.config.sleeve:
            await loop.run_in_executor(self.executor, self._start_sleeve)
        self.health.sleeve_available = self.forwarder is not None
        bridge_nf = SYSCTL_BRIDGE_NF in observed.sysctls
        self.settings = replace(self.settings, bridge_nf=bridge_nf, mtu=self.mtu)
        self.retention.adopted_fdb = observed.fdb
        self.retention.adopted_neigh = observed.neigh
        bridge = observed.links.get(BRIDGE)
        if bridge is not None and bridge.kind == "bridge":
            inside = [a for a in bridge.addresses if _in_range(a, self.config.pod_range)]
            self.bridge_cidr = inside[0] if len(inside) == 1 else None
            if self.bridge_cidr and self.fastdp:
                ip, prefix = self.bridge_cidr.split("/")
                self._update_mine(bridge_ip=ip, prefix=int(prefix))  # peers keep our entries across a restart
        log.info(
            "datapath: bridge %s, MTU %d (%s), fast datapath %s; adopting %d FDB and %d neighbour entries",
            BRIDGE,
            self.mtu,
            self.mtu_source,
            f"on ({VXLAN}, UDP {VXLAN_PORT}, VNI {VNI})" if self.fastdp else "off",
            len(observed.fdb),
            len(observed.neigh),
        )
        if self.forwarder is not None:
            log.info(
                "sleeve: %s on UDP %d, %s",
                TAP,
                SLEEVE_PORT,
                "encrypted (keys from each mesh connection, cipher per link): all pod traffic between hosts"
                if self.config.encrypt
                else "fallback for peers whose fast datapath fails",
            )
        self._tasks = [
            asyncio.create_task(self._reconcile_loop()),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._get_bridge_address()),
        ]

    def _start_sleeve(self) -> None:
        try:
            sock = open_socket(SLEEVE_PORT)
        except OSError as exc:
            self.sleeve_error = f"cannot bind UDP {SLEEVE_PORT}: {exc.strerror}"
        else:
            try:
                tap = open_tap(TAP, vnet_hdr=True)
            except OSError as exc:
                sock.close()
                self.sleeve_error = f"cannot create TAP {TAP}: {exc.strerror} (is /dev/net/tun there?)"
            else:
                self.forwarder = Forwarder(self.me, tap, sock, on_verified=self._mtu_verified)
                self.forwarder.start()
                return
        log.error("sleeve: %s; no fallback datapath%s", self.sleeve_error, ", no pod traffic" * self.config.encrypt)

    def _mtu_verified(self, peer: int, size: int) -> None:
        fits = size - sleeve_codec.overhead(self.config.encrypt) - 14 - sleeve_codec.VNET_HDR_SIZE
        log.info(
            "sleeve: peer %s(%s): effective MTU verified at %d (UDP payload; pod frames up to %d in one datagram)",
            format_name(peer),
            self.nicknames.get(peer, "?"),
            size,
            fits,
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            self._transport.close()
        if self.forwarder is not None:
            await asyncio.to_thread(self.forwarder.stop)
            os.close(self.forwarder.tap_fd)  # the TAP goes with it: the sleeve needs a router
            self.forwarder.sock.close()
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self.pod_executor.shutdown, wait=True, cancel_futures=True)

    async def _get_bridge_address(self) -> None:
        while True:
            try:
                cidr = await self._bridge_address(self.bridge_cidr)
            except Exception as exc:  # IPAM not ready yet: retry, and say why
                log.info("bridge address: %s; retrying", exc)
                await asyncio.sleep(2.0)
                continue
            if cidr != self.bridge_cidr:
                log.info("bridge %s gets address %s", BRIDGE, cidr)
            self.bridge_cidr = cidr
            self._dirty.set()
            return

    # --- reconcile ---------------------------------------------------------------------------------------

    def _underlay_mtu(self) -> tuple[int, str]:
        """The smallest MTU of the devices that carry traffic to the initial peers (or of the default route's
        device), minus the VXLAN overhead."""
        found: list[tuple[str, int]] = []
        for host in self.config.peer_hosts:
            with contextlib.suppress(ValueError, netlink.DatapathError):
                ipaddress.ip_address(host)
                dev = netlink.route_mtu(host)
                if dev:
                    found.append(dev)
        if not found:
            dev = netlink.default_route_mtu()
            found = [dev] if dev else []
        dev_name, dev_mtu = min(found, key=lambda d: d[1]) if found else ("(no route found)", 1500)
        self.underlay_mtu = dev_mtu
        if self.config.encrypt:
            overhead = SLEEVE_OVERHEAD + sleeve_codec.overhead(True)
            return dev_mtu - overhead, f"underlay {dev_name} {dev_mtu} - {overhead} (encrypted sleeve)"
        return overlay_mtu(dev_mtu), f"underlay {dev_name} {dev_mtu} - 50 (VXLAN)"

    def _observe(self) -> Observed:
        return netlink.observe(sysctls=[SYSCTL_FORWARD, SYSCTL_BRIDGE_NF])

    def _sync(self, desired: Desired) -> tuple[Plan, int, list[str]]:
        observed = self._observe()
        result = plan(desired, observed)
        applied, errors = netlink.apply_all(result.ops)
        if self.forwarder is not None:
            try:
                if netlink.attach_port(TAP, self.settings.mtu):
                    log.info("sleeve: %s on bridge %s, MTU %d", TAP, BRIDGE, self.settings.mtu)
            except (netlink.DatapathError, OSError) as exc:
                errors.append(f"sleeve: cannot put {TAP} on {BRIDGE}: {exc}")
        return result, applied, errors

    def desired(self) -> Desired:
        now = self.clock()
        kept = self.peers | self.retention.kept(now)
        # A departed peer keeps the VTEP it had (not whatever it advertised): its entries must not move while
        # it is away.
        for name in self.peers:
            vtep = overlay_peers.underlay_of(name, self.table.infos, self.direct)
            if vtep:
                self.vteps[name] = vtep
        for name in [n for n in self.vteps if n not in kept]:
            del self.vteps[name]
        fdb, neigh, bridges = peer_entries(kept, self.table.infos, self.vteps, self.me, self.sleeve_peers())
        fdb, neigh = merge_adopted(fdb, neigh, self.retention, now)
        self.heartbeat_peers = bridges if self.fastdp else {}
        desired = desired_state(self.settings, self.bridge_cidr, fdb, neigh)
        self.flood_entries = sum(1 for e in desired.fdb if e.mac == FLOOD_MAC)
        return desired

    async def _reconcile_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._dirty.clear()
            desired = self.desired()
            started = time.monotonic()
            try:
                result, applied, errors = await loop.run_in_executor(self.executor, self._sync, desired)
            except Exception as exc:  # a kernel error must not kill the router
                log.error("datapath: %s", exc)
                self.last_sync = {"at": self.clock(), "ops": 0, "error": str(exc)}
            else:
                for error in errors:
                    log.error("datapath: %s", error)
                if result.problems != self.problems:
                    for problem in result.problems:
                        log.error("datapath: %s", problem)
                self.problems = result.problems
                self.last_sync = {
                    "at": self.clock(),
                    "ops": applied,
                    "error": "; ".join(errors) or None,
                    "seconds": round(time.monotonic() - started, 4),
                }
                if applied:
                    log.info("datapath: applied %d change(s): %s", applied, _summary(result))
                if not errors:
                    self._applied_cidr = desired.bridge.addresses[0] if desired.bridge.addresses else None
                if desired.bridge.addresses and self.fastdp:
                    ip, prefix = desired.bridge.addresses[0].split("/")
                    self._update_mine(bridge_ip=ip, prefix=int(prefix))
            self.health.watch(set(self.heartbeat_peers), self.clock())
            await self._bind_heartbeats()
            timeout = self.config.resync
            deadline = self.retention.next_deadline()
            if deadline is not None:
                timeout = max(0.05, min(timeout, deadline - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()

    # --- heartbeats --------------------------------------------------------------------------------------

    async def _bind_heartbeats(self) -> None:
        ip = self._applied_cidr.split("/")[0] if self._applied_cidr and self.fastdp else None
        if ip == self._hb_bound:
            return
        if self._transport is not None:
            self._transport.close()
            self._transport, self._hb_bound = None, None
        if ip is None:
            return
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Heartbeats(self), local_addr=(ip, HEARTBEAT_PORT)
            )
        except OSError as exc:
            log.error("heartbeats: cannot bind %s:%d: %s", ip, HEARTBEAT_PORT, exc.strerror)
            return
        self._transport, self._hb_bound = transport, ip

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._heartbeat_step()
            except Exception:  # this loop decides every peer's mode: it must survive anything
                log.exception("heartbeats: unexpected error")
            await asyncio.sleep(min(self.config.heartbeat_interval, 0.5))

    async def _heartbeat_step(self) -> None:
        now = self.clock()
        if self._transport is not None:
            for name, payload in self.health.due(now):
                dst = self.heartbeat_peers.get(name)
                if dst:
                    self._transport.sendto(payload, (dst, HEARTBEAT_PORT))
        switches = self.health.evaluate(now)
        for switch in switches:
            log.info(
                "peer %s(%s): %s -> %s: %s",
                format_name(switch.peer),
                self.nicknames.get(switch.peer, "?"),
                switch.old.value,
                switch.new.value,
                switch.reason,
            )
        if any(Mode.SLEEVE in (s.old, s.new) for s in switches):
            self._dirty.set()  # flood entries follow the modes
            self._push_sleeve()
            # MACs learned behind the tunnel (or the TAP) must be learned again on the path now in use.
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self.executor, netlink.flush_learned, [VXLAN, TAP])
        else:
            self._push_sleeve()

    # --- sleeve ------------------------------------------------------------------------------------------

    def sleeve_peers(self) -> frozenset[int]:
        """The peers whose pod traffic goes through the sleeve."""
        if self.forwarder is None:
            return frozenset()
        if not self.fastdp:
            return frozenset(self.peers)
        return frozenset(n for n, h in self.health.peers.items() if h.mode is Mode.SLEEVE)

    def sleeve_config(self, forwarder: Forwarder) -> SleeveConfig:
        """What the forwarder should do now (pure apart from reading the forwarder's link states)."""
        links = {}
        for name, address in sorted(self.direct.items()):
            if not self.config.encrypt:
                links[name] = LinkSpec(name, address, None, max_datagram=self.underlay_mtu - 28)
                continue
            sealed = self.link_keys(name)
            if sealed is None:
                continue  # never send a clear datagram when a password is set
            keys, cipher = sealed
            links[name] = LinkSpec(name, address, keys, max_datagram=self.underlay_mtu - 28, cipher=cipher)
        states, _, _ = forwarder.snapshot()
        usable = {n for n, st in states.items() if st.up and n in links}
        routes = sleeve_routes(self.records(), self.me, usable)
        blocked: frozenset[bytes] = frozenset()
        if self.fastdp:  # heartbeats prove the tunnel: bridge-to-bridge frames never take the sleeve
            blocked = frozenset(bytes.fromhex(bridge_mac(n).replace(":", "")) for n in self.peers | {self.me})
        return SleeveConfig(links, routes, self.sleeve_peers(), blocked)

    def _push_sleeve(self) -> None:
        if self.forwarder is None:
            return
        config = self.sleeve_config(self.forwarder)
        if config == self._sleeve_pushed:
            return
        old_links = self._sleeve_pushed.links if self._sleeve_pushed else {}
        for name, spec in config.links.items():
            if spec.keys is not None and (name not in old_links or old_links[name].cipher != spec.cipher):
                log.info(
                    "sleeve: peer %s(%s): datagrams sealed with %s, keys from this mesh connection",
                    format_name(name),
                    self.nicknames.get(name, "?"),
                    sleeve_codec.CIPHERS[spec.cipher],
                )
        for dst in sorted(config.sleeve):
            hop = config.routes.get(dst)
            if hop is not None and self._routes_logged.get(dst) != hop:
                log.info(
                    "sleeve: peer %s(%s) %s",
                    format_name(dst),
                    self.nicknames.get(dst, "?"),
                    "direct" if hop == dst else f"relayed via {format_name(hop)}({self.nicknames.get(hop, '?')})",
                )
                self._routes_logged[dst] = hop
        self.forwarder.configure(config)
        self._sleeve_pushed = config

    # --- pods (the CNI plugin's work, done by the router) ------------------------------------------------

    async def attach_pod(self, pod: Pod) -> dict[str, str]:
        return await asyncio.get_running_loop().run_in_executor(self.pod_executor, netlink.attach_pod, pod)

    async def detach_pod(self, pod: Pod) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self.pod_executor, netlink.detach_pod, pod)

    async def pod_state(self, pod: Pod) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(self.pod_executor, netlink.pod_state, pod)

    # --- status ------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        links, counters, drops = self.forwarder.snapshot() if self.forwarder is not None else ({}, {}, {})
        pushed = self._sleeve_pushed or SleeveConfig()
        sleeving = self.sleeve_peers()
        peers = []
        for name in sorted(self.peers | set(self.heartbeat_peers)):
            health = self.health.peers.get(name)
            info = self.table.infos.get(name)
            vtep = overlay_peers.underlay_of(name, self.table.infos, self.direct)
            if not self.fastdp:
                if name in sleeving:
                    mode = Mode.SLEEVE.value
                    reason = (
                        "encrypted: the kernel's VXLAN cannot encrypt"
                        if self.config.encrypt
                        else "fast datapath disabled"
                    )
                else:
                    mode = Mode.DOWN.value
                    reason = (
                        f"sleeve unavailable: {self.sleeve_error}" if self.sleeve_error else "fast datapath disabled"
                    )
            elif health is None:
                mode = Mode.PENDING.value
                reason = "no underlay address known yet" if not vtep else "no bridge address known yet"
            else:
                mode, reason = health.mode.value, health.reason
            hop = pushed.routes.get(name)
            link = links.get(name)
            sleeve = None
            if self.forwarder is not None:
                sleeve = {
                    "via": None
                    if hop is None
                    else ("direct" if hop == name else self.nicknames.get(hop, format_name(hop))),
                    "link": None
                    if link is None
                    else {
                        "up": link.up,
                        "verified_mtu": link.verified,
                        "last_ack_ago": link.last_ack_ago,
                        "cipher": link.cipher,
                    },
                }
            if mode == Mode.SLEEVE.value and hop is None:
                reason += "; no sleeve route yet"
            peers.append(
                {
                    "name": format_name(name),
                    "nickname": self.nicknames.get(name, ""),
                    "vtep": vtep,
                    "bridge_ip": info.bridge_ip if info else "",
                    "mode": mode,
                    "reason": reason,
                    "last_heartbeat_ago": round(now - health.last_rx, 1) if health and health.last_rx else None,
                    "in_topology": name in self.peers,
                    "sleeve": sleeve,
                }
            )
        return {
            "bridge": BRIDGE,
            "bridge_address": self.bridge_cidr,
            "mtu": self.mtu,
            "mtu_source": self.mtu_source,
            "fastdp": (
                {"device": VXLAN, "port": VXLAN_PORT, "vni": VNI, "flood_entries": self.flood_entries}
                if self.fastdp
                else None
            ),
            "sleeve": (
                {
                    "device": TAP,
                    "port": SLEEVE_PORT,
                    "encrypted": self.config.encrypt,
                    "counters": counters,
                    "drops": drops,
                }
                if self.forwarder is not None
                else ({"error": self.sleeve_error} if self.sleeve_error else None)
            ),
            "problems": list(self.problems),
            "last_sync": {k: (round(now - v, 1) if k == "at" else v) for k, v in self.last_sync.items()},
            "peers": peers,
        }


def _in_range(cidr: str, pod_range: str) -> bool:
    return ipaddress.ip_interface(cidr).ip in ipaddress.ip_network(pod_range)


def _summary(result: Plan) -> str:
    kinds: dict[str, int] = {}
    for op in result.ops:
        kinds[type(op).__name__] = kinds.get(type(op).__name__, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
