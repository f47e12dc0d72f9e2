"""The sleeve as the overlay runs it (shell): the forwarder thread started once (or the reason it could not be),
handed each new `Config` (logging what changes for the operator), stopped with the router (the TAP goes with it:
the sleeve needs a router)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping

from weave_node.mesh.peer import format_name
from weave_node.overlay.desired import TAP
from weave_node.overlay.sleeve import codec
from weave_node.overlay.sleeve.config import PORT, Config, LinkSpec, LinkStatus
from weave_node.overlay.sleeve.forwarder import Forwarder, open_socket
from weave_node.overlay.sleeve.plan import new_routes, newly_sealed, with_lingering
from weave_node.overlay.sleeve.tap import open_tap

log = logging.getLogger("weave_node.overlay")


class SleeveRunner:
    def __init__(self, me: int, *, encrypt: bool, nicknames: Callable[[], Mapping[int, str]]) -> None:
        self.me = me
        self.encrypt = encrypt
        self.nicknames = nicknames
        self.forwarder: Forwarder | None = None
        self.error: str | None = None  # why it does not run
        self.pushed: Config | None = None  # what the forwarder was last told
        self._given: Config | None = None  # what the overlay last asked for (pushed, but for lingering links)
        self._lingering: dict[int, tuple[LinkSpec, float]] = {}
        self._routes_logged: dict[int, int] = {}

    @property
    def running(self) -> bool:
        return self.forwarder is not None

    def start(self) -> None:
        """Open the UDP socket and the TAP, start the thread (blocking: run it in a worker thread)."""
        try:
            sock = open_socket(PORT)
        except OSError as exc:
            self.error = f"cannot bind UDP {PORT}: {exc.strerror}"
        else:
            try:
                tap = open_tap(TAP, vnet_hdr=True)
            except OSError as exc:
                sock.close()
                self.error = f"cannot create TAP {TAP}: {exc.strerror} (is /dev/net/tun there?)"
            else:
                self.forwarder = Forwarder(self.me, tap, sock, on_verified=self._mtu_verified)
                self.forwarder.start()
                return
        log.error("sleeve: %s; no fallback datapath%s", self.error, ", no pod traffic" * self.encrypt)

    def _name(self, peer: int) -> str:
        return f"{format_name(peer)}({self.nicknames().get(peer, '?')})"

    def _mtu_verified(self, peer: int, size: int) -> None:
        fits = size - codec.overhead(self.encrypt) - 14 - codec.VNET_HDR_SIZE
        log.info(
            "sleeve: peer %s: effective MTU verified at %d (UDP payload; pod frames up to %d in one datagram)",
            self._name(peer),
            size,
            fits,
        )

    def up_links(self) -> set[int]:
        """The links whose probes are answered."""
        states = self.forwarder.snapshot()[0] if self.forwarder is not None else {}
        return {n for n, st in states.items() if st.up}

    def snapshot(self) -> tuple[dict[int, LinkStatus], dict[str, int], dict[str, int]]:
        """(links, counters, drops) of the forwarder; all empty when it does not run."""
        return self.forwarder.snapshot() if self.forwarder is not None else ({}, {}, {})

    def push(self, config: Config, peers: Collection[int]) -> None:
        """Hand the forwarder `config` (with the links that linger: plan.with_lingering; `peers`: the topology's)
        unless it has it."""
        if self.forwarder is None:
            return
        given, self._given = self._given, config
        before = self.pushed.sleeve if self.pushed is not None else frozenset()
        config, self._lingering = with_lingering(
            config, given, self._lingering, time.monotonic(), peers=peers, sleeve_before=before
        )
        if config == self.pushed:
            return
        for name, cipher in newly_sealed(self.pushed, config):
            log.info("sleeve: peer %s: datagrams sealed with %s, keys from this mesh connection", self._name(name),
                     codec.CIPHERS[cipher])  # fmt: skip
        for dst, hop in new_routes(config, self._routes_logged):
            log.info(
                "sleeve: peer %s %s", self._name(dst), "direct" if hop == dst else f"relayed via {self._name(hop)}"
            )
            self._routes_logged[dst] = hop
        self.forwarder.configure(config)
        self.pushed = config

    async def stop(self) -> None:
        if self.forwarder is not None:
            await asyncio.to_thread(self.forwarder.stop)
            os.close(self.forwarder.tap_fd)
            self.forwarder.sock.close()
