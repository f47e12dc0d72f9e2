"""The status snapshot: a pure function of the router's state, rendered as JSON by the API and as tables by
`weave-node status`. Field names follow `weave status` / `weave report` where they exist."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from weave_node import __version__
from weave_node.mesh.connector import Target
from weave_node.mesh.peer import format_name
from weave_node.mesh.topology import PeerRecord


@dataclass(frozen=True)
class ConnView:
    outbound: bool
    address: str
    state: str  # "established" | "handshaking"
    name: int | None
    nickname: str
    info: str  # protocol version / encryption, or the last failure


def build_status(
    *,
    name: int,
    nickname: str,
    uid: int,
    encrypted: bool,
    port: int,
    conn_limit: int,
    records: Mapping[int, PeerRecord],
    routes: Mapping[int, int],
    connections: Iterable[ConnView],
    targets: Iterable[Target],
    terminations: int,
    now: float,
    refused: Mapping[str, int] | None = None,
    message_errors: Mapping[str, int] | None = None,
    started_at: float,
) -> dict[str, Any]:
    local = records[name]
    peers = [
        {
            "name": format_name(r.name),
            "nickname": r.nickname,
            "uid": r.uid,
            "version": r.version,
            "is_local": r.name == name,
            "next_hop": format_name(routes[r.name]) if r.name in routes else None,
            "connections": [
                {
                    "name": format_name(c.peer),
                    "nickname": records[c.peer].nickname if c.peer in records else "",
                    "address": c.address,
                    "outbound": c.outbound,
                    "established": c.established,
                }
                for c in r.connections
            ],
        }
        for r in sorted(records.values(), key=lambda r: (r.name != name, r.nickname, r.name))
    ]
    connections_list = list(connections)
    conns = [
        {
            "direction": "->" if c.outbound else "<-",
            "address": c.address,
            "state": c.state,
            "name": format_name(c.name) if c.name is not None else None,
            "nickname": c.nickname,
            "info": c.info,
        }
        for c in connections_list
    ]
    # A target whose peer we are connected to by another connection (it dialled us, and the duplicate was resolved
    # in favour of that one) is connected, whatever its own last attempt said; the connector skips it meanwhile.
    connected = {c.name for c in connections_list if c.state == "established" and c.name is not None}
    target_list: list[dict[str, Any]] = []
    for t in sorted(targets, key=lambda t: str(t.address)):
        state = "connected" if t.peer in connected and t.state in ("idle", "retrying") else t.state
        target_list.append(
            {
                "address": str(t.address),
                "origin": t.origin,
                "state": state,
                "peer": format_name(t.peer) if t.peer is not None else None,
                "attempts": t.attempts,
                "retry_in": round(max(0.0, t.next_try - now), 1) if state == "retrying" else None,
                "last_error": t.last_error if state != "connected" else "",
            }
        )
    by_state: dict[str, int] = {}
    for view in connections_list:
        by_state[view.state] = by_state.get(view.state, 0) + 1
    for doc in target_list:
        if doc["state"] in ("retrying", "connecting"):
            by_state[doc["state"]] = by_state.get(doc["state"], 0) + 1
    return {
        "version": __version__,
        "router": {
            "name": format_name(name),
            "nickname": nickname,
            "uid": uid,
            "version": local.version,
            "encryption": encrypted,
            "port": port,
            "conn_limit": conn_limit,
            "uptime_seconds": round(now - started_at, 1),
            "peers": len(records),
            "reachable": len(routes) + 1,
            "connections_by_state": by_state,
            "terminations": terminations,
            "refused": dict(sorted((refused or {}).items())),  # inbound connections refused or evicted, by reason
            "message_errors": dict(sorted((message_errors or {}).items())),  # received messages that failed
        },
        "peers": peers,
        "connections": conns,
        "targets": target_list,
    }
