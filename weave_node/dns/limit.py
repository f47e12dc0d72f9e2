"""How many queries the DNS server takes (pure, `now`-driven): a token bucket per client address and one for
everyone, so that a pod flooding the server can neither take the router's event loop (which the mesh and the
datapath share) nor the answers other pods need. Queries over either budget are dropped (the client retries).

The table of clients is bounded: when it is full, buckets that have been full for a while (idle clients) go; a
flood from many addresses is then held by the shared bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CLIENTS = 4096


@dataclass
class Bucket:
    tokens: float
    at: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class QueryLimit:
    def __init__(self, rate: float, max_clients: int = MAX_CLIENTS) -> None:
        """`rate` queries/s per client (WEAVE_DNS_CLIENT_RATE, 1000 by default: a resolver does not ask this
        much), bursts of twice that; 20 times that for all clients together (with 1000: about 40 % of what the
        server answers from its cache on 2 cores). 0: no limit."""
        self.off = rate <= 0
        self.rate, self.burst = rate, 2 * rate
        self.total_rate, self.total_burst = 20 * rate, 40 * rate
        self.max_clients = max_clients
        self.clients: dict[str, Bucket] = {}
        self.total = Bucket(self.total_burst, 0.0)
        self._swept = float("-inf")

    def admit(self, client: str, now: float) -> bool:
        if self.off:
            return True
        bucket = self.clients.get(client)
        if bucket is None:
            if len(self.clients) >= self.max_clients and now - self._swept >= 1.0:  # (a sweep a second at most)
                self._swept = now
                self._forget_idle(now)
            bucket = Bucket(self.burst, now)
            if len(self.clients) < self.max_clients:
                self.clients[client] = bucket
        if not bucket.take(now, self.rate, self.burst):
            return False
        return self.total.take(now, self.total_rate, self.total_burst)

    def _forget_idle(self, now: float) -> None:
        """Drop the clients whose bucket has refilled by now (they asked nothing for burst/rate seconds)."""
        full = self.burst / self.rate
        for client in [c for c, b in self.clients.items() if now - b.at >= full]:
            del self.clients[client]
