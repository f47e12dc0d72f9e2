"""Which datagram sizes the sleeve probes on a link at one tick (pure).

Until a link's size is verified, and again whenever the verified size goes unanswered for `stale` seconds (a
probe lost, the path's MTU fell, or the peer is gone), every size the link may use is probed, as before. Once
verified, one probe of the verified size a tick is enough: its ack keeps the link up and the size confirmed. The
larger sizes are probed every `grow_every` ticks, so a path whose MTU grew is found within that many seconds.
Probing every size every second cost each router 7 probes and 7 acks a second per peer on a 1500-byte underlay
(266 sends a second on a 20-host mesh) and a quarter of an idle router's CPU."""

from __future__ import annotations

from collections.abc import Mapping

GROW_EVERY = 10  # ticks (seconds, at the default interval) between probes of the sizes above the verified one


def sizes_to_probe(
    sizes: tuple[int, ...],
    verified: int | None,
    acked: Mapping[int, float],
    now: float,
    tick: int,
    *,
    stale: float,
    grow_every: int = GROW_EVERY,
) -> tuple[int, ...]:
    """`sizes`: the link's, largest first; `acked`: size -> when last acked; `tick`: counts the forwarder's ticks."""
    if verified is None or verified not in sizes or now - acked.get(verified, float("-inf")) >= stale:
        return sizes  # (not among the sizes: a handover to keys of a link with a smaller maximum)
    if tick % grow_every == 0:
        return tuple(s for s in sizes if s >= verified)
    return (verified,)
