"""The overlay shell: keeps the kernel datapath in line with the mesh, and runs the fast-path heartbeats. It gossips
our PeerInfo on the "overlay" channel (overlay.peers merges); reconciles desired (overlay.desired) vs observed
(datapath.netlink) -> plan -> apply in one worker thread, on every change and every `resync` seconds (drift is
repaired); sends heartbeats (overlay.heartbeats) through the tunnel, from which overlay.health decides the modes,
overlay.sleeve.plan what the sleeve does, overlay.status what `status` says. Stopping the router leaves the kernel
state alone: pod traffic keeps flowing while the router is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from weave_node.datapath.model import BRIDGE, FLOOD_MAC, VNI, VXLAN, VXLAN_PORT, Desired
from weave_node.datapath.plan import Plan
from weave_node.mesh.crypto import SessionKeys
from weave_node.mesh.neighbours import Neighbour
from weave_node.mesh.peer import format_name
from weave_node.mesh.topology import PeerRecord
from weave_node.overlay import desired as wanted
from weave_node.overlay import encryption
from weave_node.overlay import mtu as overlay_mtu
from weave_node.overlay.config import OverlayConfig
from weave_node.overlay.desired import TAP, Retention, Settings
from weave_node.overlay.direct_paths import DirectPaths, Spans
from weave_node.overlay.esp.runtime import EspRuntime
from weave_node.overlay.health import Health, Mode
from weave_node.overlay.heartbeats import HeartbeatSocket
from weave_node.overlay.kernel import Kernel, netlink_kernel, obtain_bridge_address, underlay_devices
from weave_node.overlay.peer_gossip import PeerGossip
from weave_node.overlay.peers import choose_underlay
from weave_node.overlay.pods import PodPlumbing
from weave_node.overlay.reconcile import DatapathSync
from weave_node.overlay.sleeve import plan as sleeve_plan
from weave_node.overlay.sleeve.config import PORT as SLEEVE_PORT
from weave_node.overlay.sleeve.config import Config as SleeveConfig
from weave_node.overlay.sleeve.runner import SleeveRunner
from weave_node.overlay.snapshot import snapshot
from weave_node.overlay.status import Snapshot, status
from weave_node.overlay.wireguard.keys import in_tunnel
from weave_node.overlay.wireguard.runtime import VXLAN6_OVERHEAD, WG_DEVICE, WgRuntime

log = logging.getLogger("weave_node.overlay")
CHANNEL = "overlay"


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
        neighbour: Callable[[int], Neighbour | None] = lambda _name: None,
        records: Callable[[], Mapping[int, PeerRecord]] = dict,
        kernel: Kernel | None = None,
        space: Callable[[], Spans] = dict,
        bridge_address6: Callable[[str | None], Awaitable[str]] | None = None,
    ) -> None:
        self.me, self.config, self.clock, self.wall_ns = me, config, clock, wall_ns
        self._dirty, self._tasks = asyncio.Event(), list[asyncio.Task[None]]()
        self.kernel = kernel or netlink_kernel(ipv6=config.pod_range6 is not None or config.pod_range.ipv6)
        self._bridge_address, self._bridge_address6 = bridge_address, bridge_address6
        self.mtu_choice = overlay_mtu.configured(config.mtu)
        self._local: list[str] = []  # our mesh connections' local addresses
        self._underlay_found: list[tuple[str, int]] = []  # the underlay devices (name, MTU) found at start
        self.fastdp = config.fastdp and (not config.encrypt or config.esp or config.wireguard)  # (VXLAN, encrypted)
        self.esp = encryption.runtime(me, config, self.fastdp, self.kernel, clock, self._dirty.set)  # ESP or WireGuard
        range6 = str(config.pod_range6) if config.pod_range6 else ""
        self.settings = Settings(me, str(config.pod_range), self.mtu, self.fastdp, pod_range6=range6,
                                 esp=isinstance(self.esp, EspRuntime),  # (WireGuard: VXLAN between tunnel addresses)
                                 vxlan_local=self.esp.local if isinstance(self.esp, WgRuntime) else "",
                                 tunnel=WG_DEVICE if self.tunnelled else "")  # fmt: skip
        self.no_esp = frozenset[int]()  # with ESP or WireGuard: the peers that get none (no VXLAN: the sleeve)
        self.link_keys, self.neighbour = link_keys, neighbour  # our connection to a peer, as values
        self.records = records
        self.sleeve = SleeveRunner(me, encrypt=config.encrypt, nicknames=lambda: self.nicknames)
        self.gossip = PeerGossip(me, config.pod_range, wall_ns, self._dirty.set)
        self.table = self.gossip.table  # every peer's PeerInfo, ours included
        self.retention = Retention(retain=config.retain, started=clock())
        self.health = Health(me, interval=config.heartbeat_interval, timeout=config.heartbeat_timeout)
        self.heartbeats = HeartbeatSocket(self.health, clock)
        self.peers, self.nicknames, self.direct = set[int](), dict[int, str](), dict[int, str]()
        self.vteps: dict[int, str] = {}  # the VTEP in use per peer (kept while a departed peer is retained)
        self.bridge_cidr: str | None = None
        self.bridge_cidr6: str | None = None  # dual-stack: the bridge's IPv6 address (pods' IPv6 gateway)
        self.problems: tuple[str, ...] = ()
        self.datapath_sync = DatapathSync(self.kernel, config.bridge_netfilter)
        self.last_sync: dict[str, Any] = {}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datapath")
        self.pods = PodPlumbing(self.kernel)
        self.direct_paths = DirectPaths(self.kernel, space)  # direct mode: candidates, their IPAM space
        self._applied_cidr: str | None = None  # the bridge address the last successful sync put in place
        self.flood_entries = 0  # in the last desired state: what the VXLAN device floods to
        self.flush = 0  # raised on every switch to or from the sleeve
        # The peers in the sleeve, and the direct peers routed: in the last desired state, and in the last applied
        self.planned_sleeve = self.applied_sleeve = self.planned_direct = self.applied_direct = frozenset[int]()

    @property
    def mtu(self) -> int:
        return self.mtu_choice.mtu

    def _advertise(self, bridge_cidr: str | None) -> None:
        if self.fastdp:  # (without it peers install nothing for our bridge)
            self.gossip.advertise(bridge_cidr)

    # --- mesh events -------------------------------------------------------------------------------------

    def topology_changed(self, nicknames: dict[int, str], direct: dict[int, str], local: Sequence[str] = ()) -> None:
        """On every topology change: the peers, our connections' remote addresses, and their local addresses (one
        per connection: where we are on the underlay)."""
        self.nicknames = dict(nicknames)
        now = self.clock()
        # Peers that just left were present until now: their retention counts from this moment.
        self.retention.present(self.peers, now)
        self.peers = set(nicknames) - {self.me}
        self.retention.present(self.peers, now)
        self.direct = dict(direct)
        self.table.forget(set(nicknames) | self.retention.kept(self.clock()) | {self.me})
        self._local = list(local)
        self._learn_underlay(self.gossip.mine.underlay or ("" if self.tunnelled else self.settings.vxlan_local))
        self._dirty.set()

    def _learn_underlay(self, current: str) -> None:
        """Our underlay address, from our connections' local addresses and sticky to `current`
        (peers.choose_underlay): gossiped, and its family (with IPv6, it too, as the source) is our VXLAN
        device's: a VXLAN device carries one family, peers of the other go through the sleeve."""
        chosen = choose_underlay(self._local, current)
        if chosen:
            self.gossip.update_mine(underlay=chosen)
            local = self.esp.local if isinstance(self.esp, WgRuntime) else chosen if ":" in chosen else ""
            self.settings = replace(self.settings, vxlan_local=local)  # (WireGuard: VXLAN between tunnel addresses)
            self._relearn_mtu(":" in chosen)

    def space_changed(self) -> None:  # IPAM's ring changed: a direct peer's routes follow its space
        if self.direct_paths.space_changed():
            self._dirty.set()

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        observed = await loop.run_in_executor(self.executor, self.kernel.observe)
        if self.config.mtu is None:
            self.mtu_choice = await loop.run_in_executor(self.executor, self._underlay_mtu)
        await loop.run_in_executor(self.executor, encryption.prepare, self.esp, self.kernel)
        if self.config.sleeve:
            await loop.run_in_executor(self.executor, self.sleeve.start)
        self.health.sleeve_available = self.sleeve.running
        self.direct_paths.start(wanted=self.config.direct, fastdp=self.fastdp, encrypt=self.config.encrypt,
                                ipv6_only=self.config.pod_range.ipv6)  # fmt: skip
        self.direct_paths.adopt(observed, until=self.clock() + 2 * self.config.heartbeat_timeout)
        self.settings = replace(self.settings, mtu=self.mtu, sleeve=self.sleeve.running, direct=self.direct_paths.on)
        self.retention.adopted_fdb = wanted.adoptable(observed.fdb, in_tunnel, tunnelled=self.tunnelled)
        self.retention.adopted_neigh = observed.neigh
        vxlan = observed.links.get(VXLAN)
        if vxlan is not None and vxlan.kind == "vxlan" and ":" in vxlan.local and not self.tunnelled:
            self._learn_underlay(vxlan.local)  # an IPv6 device from before: its source stays ours while a
        self._relearn_mtu(self.underlay_ipv6)  # connection (or none yet) is at it; connections may have come
        bridge = observed.links.get(BRIDGE)
        if bridge is not None and bridge.kind == "bridge":
            self.bridge_cidr = wanted.adopted_bridge_cidr(bridge.addresses, self.config.pod_range)
            self._advertise(self.bridge_cidr)  # peers keep our entries across a restart
            if self.config.pod_range6 is not None:
                self.bridge_cidr6 = wanted.adopted_bridge_cidr(bridge.addresses, self.config.pod_range6)
        if (self.config.pod_range6 or self.config.pod_range.ipv6) and self.mtu < overlay_mtu.MIN_IPV6:
            log.error("MTU %d is below IPv6's minimum (%d): pods' IPv6 will not work", self.mtu, overlay_mtu.MIN_IPV6)
        fast = f"on ({VXLAN}, UDP {VXLAN_PORT}, VNI {VNI})" if self.fastdp else "off"
        adopted = f"{len(observed.fdb)} FDB and {len(observed.neigh)} neighbour entries"
        log.info("datapath: bridge %s, MTU %d (%s), fast datapath %s; adopting %s", BRIDGE, self.mtu, *(
            self.mtu_choice.source, fast, adopted))  # fmt: skip
        if self.sleeve.running:
            role = "fallback for peers whose fast datapath fails"
            if self.config.encrypt:
                role = "encrypted (keys from each mesh connection, cipher per link): all pod traffic between hosts"
            log.info("sleeve: %s on UDP %d, %s", TAP, SLEEVE_PORT, role)
        self._tasks = [
            asyncio.create_task(self._reconcile_loop()),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._get_bridge_address()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.heartbeats.close()
        await self.sleeve.stop()
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)
        await self.pods.close()

    async def _get_bridge_address(self) -> None:
        self.bridge_cidr = await obtain_bridge_address(self._bridge_address, self.bridge_cidr)
        self._dirty.set()
        if self._bridge_address6 is not None:
            self.bridge_cidr6 = await obtain_bridge_address(self._bridge_address6, self.bridge_cidr6)
            self._dirty.set()

    # --- reconcile ---------------------------------------------------------------------------------------

    def _underlay_mtu(self) -> overlay_mtu.Mtu:
        hosts = overlay_mtu.probe_hosts(self.config.peer_hosts)
        # An IPv6 underlay costs 20 bytes more per packet: assumed when any initial peer is IPv6's (or, with none,
        # when the host routes only IPv6 by default), corrected when the mesh connections say so (`_relearn_mtu`)
        ipv6 = any(":" in h for h in hosts) or (not hosts and self.kernel.default_ipv6_only())
        self._underlay_found = underlay_devices(self.kernel, hosts)
        return self._mtu_for(ipv6)

    def _mtu_for(self, ipv6: bool) -> overlay_mtu.Mtu:
        return overlay_mtu.from_underlay(self._underlay_found, encrypt=self.config.encrypt, ipv6=ipv6,
                                         wireguard=self.tunnelled)  # fmt: skip

    @property
    def tunnelled(self) -> bool:
        """VXLAN runs inside WireGuard (between tunnel addresses, over IPv6)."""
        return isinstance(self.esp, WgRuntime)

    @property
    def underlay_ipv6(self) -> bool:
        return ":" in (self.gossip.mine.underlay or "") if self.tunnelled else bool(self.settings.vxlan_local)

    def _relearn_mtu(self, ipv6: bool) -> None:
        """Our underlay turned out IPv6's while the MTU was chosen for IPv4's (a first peer given by name, or
        none): 20 bytes less, for the devices and the pods attached from now on."""
        if self.config.mtu is not None or not ipv6 or self.mtu_choice.ipv6:
            return
        self.mtu_choice = self._mtu_for(True)
        self.settings = replace(self.settings, mtu=self.mtu)
        log.warning("datapath: the underlay is IPv6's: MTU %d (%s)", self.mtu, self.mtu_choice.source)

    def _sync(self, desired: Desired, esp: Any = None) -> tuple[Plan, int, list[str], Any]:
        """One reconcile: with ESP, its policies and new SAs first (a peer whose policies are not in place gets no
        VXLAN entry), what goes of it last (overlay/esp/runtime.py); WireGuard's peers likewise."""
        last: list[Any] = []
        if self.esp is not None and esp is not None:
            last, blocked = self.esp.sync_first(esp, frozenset(e.dst for e in desired.fdb))
            if blocked:
                desired = replace(desired, fdb=frozenset(e for e in desired.fdb if e.dst not in blocked))
        result, applied, errors = self.datapath_sync(desired, self.settings.mtu)
        return result, applied, errors, (self.esp.sync_last(last) if self.esp is not None else None)

    def desired(self) -> Desired:
        now = self.clock()
        kept = self.peers | self.retention.kept(now)
        ipv6, under6 = bool(self.settings.vxlan_local), self.underlay_ipv6
        self.vteps = wanted.vteps_in_use(self.vteps, self.peers, kept, self.table.infos, self.direct, ipv6=under6)
        if self.esp is not None:  # the peers that get no ESP (or WireGuard) get no VXLAN either
            self.no_esp = frozenset(kept - self.esp.update(kept, self.vteps, self.neighbour))
        if isinstance(self.esp, WgRuntime):  # VXLAN to their tunnel addresses, in a device that fits it
            self.vteps, self.esp.mtu = self.esp.tunnel_vteps(self.vteps), self.settings.mtu + VXLAN6_OVERHEAD
        sleeve = self.sleeve_peers()  # `applied_sleeve` once applied; a change re-learns MACs (a flush)
        self.flush, self.planned_sleeve = self.flush + (sleeve != self.planned_sleeve), sleeve
        fdb, neigh, bridges = wanted.peer_entries(kept, self.table.infos, self.vteps, self.me, sleeve, ipv6=ipv6,
                                                  no_vxlan=self.no_esp | self.no_vxlan_there())  # fmt: skip
        fdb, neigh = wanted.merge_adopted(fdb, neigh, self.retention, now)
        self.heartbeats.peers = bridges if self.fastdp else {}
        src = (self.bridge_cidr or "").split("/")[0]  # the host's own traffic to direct peers' pods leaves from it
        entries = self.direct_paths.entries(self.me, self.vteps, bridges, self.health.direct_peers(), src=src, now=now)
        desired = wanted.desired_state(
            self.settings, self.bridge_cidr, fdb, neigh, self.flush, direct=entries, bridge_cidr6=self.bridge_cidr6
        )
        self.planned_direct = entries.peers if self.direct_paths.on else frozenset()
        self.flood_entries = sum(1 for e in desired.fdb if e.mac == FLOOD_MAC)
        return desired

    async def _reconcile_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._dirty.clear()
            started = time.monotonic()
            try:
                desired, planned, direct = self.desired(), self.planned_sleeve, self.planned_direct
                esp = self.esp.sync_input() if self.esp else None
                result, applied, errors, xfrm = await loop.run_in_executor(self.executor, self._sync, desired, esp)
            except Exception as exc:  # a kernel error must not kill the router
                log.error("datapath: %s", exc)
                self.last_sync = {"at": self.clock(), "ops": 0, "error": str(exc)}
            else:
                if self.esp is not None and xfrm is not None:
                    self.esp.synced(xfrm)  # SAs now in the kernel: offered, or acknowledged
                for error in [*errors, *(self.esp.errors if self.esp else ())]:
                    log.error("datapath: %s", error)
                if result.problems != self.problems:
                    for problem in result.problems:
                        log.error("datapath: %s", problem)
                self.problems = result.problems
                self.applied_sleeve = planned
                self.last_sync = {
                    "at": self.clock(),
                    "ops": applied,
                    "error": "; ".join(errors) or None,
                    "seconds": round(time.monotonic() - started, 4),
                }
                if applied:
                    log.info("datapath: applied %d change(s): %s", applied, result.summary())
                cidr = desired.bridge.addresses[0] if desired.bridge.addresses else None
                self._applied_cidr = self._applied_cidr if errors else cidr
                if not any("Route(" in e or "Rule(" in e for e in errors):  # direct peers' routes are in place
                    self.applied_direct = direct
                self._advertise(cidr)
            if await loop.run_in_executor(self.executor, self.direct_paths.probe, list(self.vteps.values())):
                self._dirty.set()  # a VTEP's route changed: candidates (and probe routes) follow
            self.health.watch(set(self.heartbeats.peers), self.clock())
            self.health.watch_direct(set(self.direct_paths.found), self.clock())
            await self.heartbeats.bind(self._applied_cidr.split("/")[0] if self._applied_cidr and self.fastdp else None)
            timeout = self.config.resync
            deadline = self.retention.next_deadline()
            if deadline is not None:
                timeout = max(0.05, min(timeout, deadline - self.clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._dirty.wait()

    # --- heartbeats and the sleeve -----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                self._heartbeat_step()
            except Exception:  # this loop decides every peer's mode: it must survive anything
                log.exception("heartbeats: unexpected error")
            await asyncio.sleep(min(self.config.heartbeat_interval, 0.5))

    def _heartbeat_step(self) -> None:
        now = self.clock()
        if self.esp is not None:
            self.esp.tick()  # resent OFFERs, rekeys, retired SAs
        self.heartbeats.send_due(now)
        switches = self.health.evaluate(now)
        for s in switches:
            nickname = self.nicknames.get(s.peer, "?")
            log.info("peer %s(%s): %s -> %s: %s", format_name(s.peer), nickname, s.old.value, s.new.value, s.reason)
        if any(Mode.SLEEVE in (s.old, s.new) or Mode.DIRECT in (s.old, s.new) for s in switches):
            # Flood entries follow the modes; MACs learned on the old path are learned again (the next sync flushes)
            self._dirty.set()
        if self.sleeve.running:
            self.sleeve.push(self.sleeve_config(), self.peers)

    def no_vxlan_there(self) -> frozenset[int]:
        """Peers with a password connected to us in plaintext (while encryption is switched): they run no VXLAN, so
        they get no entries on ours either (not even their bridge's MAC: a frame to it, an ARP reply say, must flood
        to the sleeve, not vanish into a tunnel nobody ends)."""
        return frozenset(n for n in self.direct if (c := self.neighbour(n)) and c.peer_password and not c.encrypted)

    def no_vxlan(self) -> frozenset[int]:
        """The peers with no VXLAN between us: the sleeve is their only way."""
        other = wanted.other_family(self.peers, self.vteps, bool(self.settings.vxlan_local))
        return self.no_vxlan_there() | self.no_esp | other

    def sleeve_peers(
        self, modes: Mapping[int, Mode] | None = None, none: frozenset[int] | None = None
    ) -> frozenset[int]:
        """The peers whose pod traffic goes through the sleeve (`modes`, `none`: the peers' modes and no_vxlan(),
        when the caller has them already)."""
        modes = {n: h.mode for n, h in self.health.peers.items()} if modes is None else modes
        none = self.no_vxlan() if none is None else none
        return sleeve_plan.sleeve_peers(self.sleeve.running, self.fastdp, self.peers, modes, none)

    def sleeve_config(self) -> SleeveConfig:
        """What the forwarder should do now."""
        mtu, encrypt = self.mtu_choice.underlay, self.config.encrypt
        modes, none = {n: h.mode for n, h in self.health.peers.items()}, self.no_vxlan()
        return sleeve_plan.sleeve_config(
            me=self.me,
            links=sleeve_plan.direct_links(self.direct, mtu, encrypt, self.link_keys, self.neighbour),
            up=self.sleeve.up_links(),
            records=self.records(),
            sleeve=self.sleeve_peers(modes, none),
            fastdp=self.fastdp,
            peers=self.peers,
            encrypt=encrypt,
            modes=modes,
            no_vxlan=none,
        )

    def snapshot(self) -> Snapshot:
        return snapshot(self)

    def status(self) -> dict[str, Any]:
        return status(self.snapshot(), self.clock())
