"""The router's DNS as one part: the records, the server, and the server following the bridge's address (shell).

The daemon builds it (`Dns`), the CNI side names pods through it (`name_pod`, `forget_pod`), the API and status
read it. With WEAVE_NO_DNS there is no `Dns` at all: no server, no records, no `dns` in CNI results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from weave_node.datapath.model import BRIDGE
from weave_node.dns import answer
from weave_node.dns.server import DnsServer
from weave_node.dns.service import DnsRecords
from weave_node.dns.settings import DnsSettings

log = logging.getLogger("weave_node.dns")
FOLLOW_EVERY = 0.25  # seconds between looks at the bridge's address and device (set once, rarely changed)


def pod_names(args: Mapping[str, str]) -> list[str]:
    """The names a pod gets from its CNI args: <pod>.<namespace> (K8S_POD_NAME, K8S_POD_NAMESPACE), and the
    short <pod> too in the default namespace (or none given) when the pod's name has no dot. A namespace is one
    label, so <pod>.<namespace> names one pod, and a short name (no dot) can be no namespaced one: pod "web.shop"
    in default and pod "web" in "shop" do not share a name."""
    name = args.get("K8S_POD_NAME", "").strip()
    if not name:
        return []
    namespace = args.get("K8S_POD_NAMESPACE", "").strip() or "default"
    names = [f"{name}.{namespace}"]
    if namespace == "default" and "." not in name:
        names.insert(0, name)
    return names


class Dns:
    def __init__(
        self,
        settings: DnsSettings,
        records: DnsRecords,
        bridge_address: Callable[[], str | None],
        ours: Callable[[int], bool],
    ) -> None:
        self.settings = settings
        self.records = records
        self.bridge_address = bridge_address
        below = records.records.below
        zone = answer.Zone.of(settings.domain, settings.ttl, records.lookup, records.reverse, ours, below=below)
        self.server = DnsServer(settings, zone, lambda: records.generation, (BRIDGE, "lo"))
        self._task: asyncio.Task[None] | None = None

    async def start(self, held: Iterable[str]) -> None:
        self.records.start(held)
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.server.stop()

    async def _follow(self) -> None:
        while True:
            address = self.bridge_address()
            try:
                if address and (address != self.server.address or self.server.problem):
                    await self.server.bind(address)
            except Exception:  # (bind reports what it expects in `problem`; anything else: logged, tried again)
                log.exception("DNS: serving on %s failed", address)
            await asyncio.sleep(FOLLOW_EVERY if self.server.problem is None else 10.0)

    def name_pod(self, container: str, args: Mapping[str, str], ips: Iterable[int]) -> list[str]:
        names = pod_names(args)
        return self.records.set_container(container, names, ips) if names else []

    def forget_pod(self, container: str) -> None:
        self.records.drop_container(container)

    def cni_dns(self) -> dict[str, Any] | None:
        """The CNI result's `dns`: our server, for runtimes that write it into the pod's resolv.conf."""
        address = self.server.address
        if not address or self.server.problem is not None or address != self.bridge_address():
            return None  # a nameserver that does not answer would take the pod's every lookup down with it
        return {"nameservers": [address], "search": [self.settings.domain]}

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "ttl": self.settings.ttl, **self.server.status(), **self.records.status()}
