"""Which kernel encryption carries VXLAN between hosts with a password: IPsec ESP (overlay/esp), WireGuard
(overlay/wireguard), or none (the sealed sleeve carries all pod traffic). Both runtimes offer the service the same
calls: update, sync_input, sync_first, sync_last, synced, tick, prepare, and status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from weave_node.overlay.esp.runtime import EspRuntime, esp_runtime
from weave_node.overlay.esp.runtime import remove_leftovers as remove_esp
from weave_node.overlay.wireguard.runtime import WgRuntime, wg_runtime
from weave_node.overlay.wireguard.runtime import remove_leftovers as remove_wireguard

Runtime = EspRuntime | WgRuntime


def runtime(  # noqa: PLR0917 - what both runtimes take
    me: int, config: Any, fastdp: bool, kernel: Any, clock: Callable[[], float], wake: Callable[[], None]
) -> Runtime | None:
    return esp_runtime(config, fastdp, kernel, clock, wake) or wg_runtime(me, config, fastdp, kernel, clock, wake)


def prepare(rt: Runtime | None, kernel: Any) -> None:
    """At start (in the worker thread): what the other kind left of an earlier run goes; ours gets ready."""
    if not isinstance(rt, EspRuntime):
        remove_esp(kernel)
    if not isinstance(rt, WgRuntime):
        remove_wireguard(kernel)
    if rt is not None:
        rt.prepare()
