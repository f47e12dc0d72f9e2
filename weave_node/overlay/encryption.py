"""Which kernel encryption carries VXLAN between hosts with a password: IPsec ESP (overlay/esp), WireGuard
(overlay/wireguard), or none (the sealed sleeve carries all pod traffic). Both runtimes offer the service the same
calls: update, sync_input, sync_first, sync_last, synced, tick, prepare, and status."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from weave_node.datapath import wireguard_shell, xfrm_shell
from weave_node.overlay.esp.runtime import EspRuntime, esp_runtime
from weave_node.overlay.esp.runtime import remove_leftovers as remove_esp
from weave_node.overlay.wireguard.runtime import WgRuntime, wg_runtime
from weave_node.overlay.wireguard.runtime import remove_leftovers as remove_wireguard

Runtime = EspRuntime | WgRuntime
log = logging.getLogger("weave_node.overlay")


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


def choose(mode: str, *, password: bool, fastdp: bool) -> tuple[str, str | None]:
    """("esp" | "wireguard" | "", None) when pod traffic between hosts may take that kernel encryption here
    (WEAVE_ENCRYPTION, the datapath and the kernel allow it), else ("", why not); logged once. `auto` takes ESP
    where the kernel has it, else WireGuard where it has that; `wireguard` takes it where the kernel has it."""
    if not password:
        return "", "no password"
    kind, note = "", None
    if mode == "sleeve":
        note = "WEAVE_ENCRYPTION=sleeve"
    elif not fastdp:
        note = "the fast datapath is off"
    elif mode == "esp":
        kind = "esp"  # (no probe: its failures show in the log and status)
    elif mode == "wireguard":  # (a device made and removed: the probe is cheap and certain)
        wireguard = wireguard_shell.probe()
        kind, note = ("wireguard", None) if wireguard is None else ("", f"this kernel has no WireGuard ({wireguard})")
    else:
        esp, wireguard = xfrm_shell.probe(), None
        if esp is not None:
            wireguard = wireguard_shell.probe()
        kind = "esp" if esp is None else "wireguard" if wireguard is None else ""
        note = (
            f"this kernel can carry neither ESP as we use it ({esp}) nor WireGuard ({wireguard})" if not kind else None
        )
    if kind:
        what = "IPsec ESP" if kind == "esp" else "WireGuard"
        log.info("encryption: %s for the fast datapath to peers whose kernels can too, the sealed sleeve to the "
                 "others (WEAVE_ENCRYPTION=%s)", what, mode)  # fmt: skip
    else:
        log.info("encryption: all pod traffic between hosts sealed in the sleeve: %s", note)
    return kind, note
