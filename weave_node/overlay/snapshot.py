"""A Snapshot (overlay.status) of the overlay service's values: what `status` is made from."""

from __future__ import annotations

from typing import TYPE_CHECKING

from weave_node.overlay.sleeve.config import Config as SleeveConfig
from weave_node.overlay.status import EspView, PeerHealthView, Snapshot

if TYPE_CHECKING:
    from weave_node.overlay.service import OverlayService


def snapshot(svc: OverlayService) -> Snapshot:
    links, counters, drops = svc.sleeve.snapshot()
    return Snapshot(
        fastdp=svc.fastdp,
        encrypt=svc.config.encrypt,
        sleeve_running=svc.sleeve.running,
        sleeve_error=svc.sleeve.error,
        mtu=svc.mtu,
        mtu_source=svc.mtu_choice.source,
        bridge_cidr=svc.bridge_cidr,
        bridge_cidr6=svc.bridge_cidr6,
        peers=frozenset(svc.peers),
        heartbeat_peers=dict(svc.heartbeats.peers),
        health={n: PeerHealthView(h.mode, h.reason, h.last_rx) for n, h in svc.health.peers.items()},
        infos=dict(svc.table.infos),
        direct=dict(svc.direct),
        nicknames=dict(svc.nicknames),
        sleeving=svc.sleeve_peers(),
        routes=dict((svc.sleeve.pushed or SleeveConfig()).routes),
        links=links,
        counters=counters,
        drops=drops,
        flood_entries=svc.flood_entries,
        problems=svc.problems,
        bridge_netfilter=(nf.value, nf.reason) if (nf := svc.datapath_sync.bridge_nf) else None,
        direct_off=svc.direct_paths.off_reason,
        direct_devices={name: c.dev for name, c in svc.direct_paths.found.items()},
        last_sync=dict(svc.last_sync),
        applied_sleeve=svc.applied_sleeve,
        applied_direct=svc.applied_direct,
        vxlan_local=svc.settings.vxlan_local,
        esp=esp_view(svc),
    )


def esp_view(svc: OverlayService) -> EspView | None:
    """With a password: ESP's part (None without one)."""
    if not svc.config.encrypt:
        return None
    esp = svc.esp
    if esp is None:
        return EspView(on=False, note=svc.config.esp_note or "fast datapath off")
    peers = {name: {**esp.peer_status(name), "why_not": esp.why_not.get(name)} for name in svc.peers | set(esp.links)}
    return EspView(on=True, note="", summary=esp.summary(), peers=peers, no_esp=svc.no_esp)
