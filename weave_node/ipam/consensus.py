"""Bootstrap by consensus: which peers split the empty range among themselves (pure).

Single-decree Paxos whose messages are gossiped state, as in Weave's `ipalloc-init:consensus=N`. Every peer keeps
the latest claim it has seen from each participant: the highest ballot it promised, and the ballot and value it
accepted. Only a peer changes its own claim and only upwards, so claims merge as a CRDT (the greatest wins) and
gossip can carry them in any order. With quorum N//2+1 of the N initial peers, two partitions cannot both decide,
and once a quorum has accepted a ballot its value is the only one any later ballot can carry.

- A peer that needs the ring (an allocation waits) proposes: a ballot above every ballot it has seen.
- Every peer promises the highest ballot it has seen.
- A proposer whose ballot a quorum promised accepts, with the value accepted under the highest ballot among
  those promises, or else its own: the participants it knows.
- A peer accepts the ballot it promised once that ballot's proposer has accepted it.
- Decided: a quorum accepted the same ballot. Every peer then builds the same ring from the value.
Observers take no part; they wait for the ring.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple


class Ballot(NamedTuple):
    round: int
    proposer: int


NO_BALLOT = Ballot(0, 0)


@dataclass(frozen=True)
class Claim:
    promise: Ballot = NO_BALLOT
    accepted: Ballot = NO_BALLOT
    value: tuple[int, ...] = ()  # the peers that split the range, sorted

    def rank(self) -> tuple[Ballot, Ballot, tuple[int, ...]]:
        return (self.promise, self.accepted, self.value)


@dataclass(frozen=True)
class Decision:
    ballot: Ballot
    value: tuple[int, ...]


class Consensus:
    def __init__(self, me: int, quorum: int, claims: dict[int, Claim] | None = None) -> None:
        if quorum < 1:
            raise ValueError("quorum must be >= 1")
        self.me = me
        self.quorum = quorum
        self.claims: dict[int, Claim] = dict(claims or {})
        self.claims.setdefault(me, Claim())
        self.proposal: tuple[int, ...] | None = None  # our value; default: every participant we know
        self.last_progress = 0.0

    @property
    def mine(self) -> Claim:
        return self.claims[self.me]

    def merge(self, claims: dict[int, Claim]) -> bool:
        changed = False
        for node, claim in claims.items():
            ours = self.claims.get(node)
            if ours is None or claim.rank() > ours.rank():
                self.claims[node] = claim
                changed = True
        return changed

    def highest_ballot(self) -> Ballot:
        return max(c.promise for c in self.claims.values())

    def propose(self, value: tuple[int, ...] | None = None) -> None:
        """Start a new ballot above every ballot seen (at start, and again whenever nothing moves for a while)."""
        if value is not None:
            self.proposal = tuple(sorted(set(value)))
        ballot = Ballot(self.highest_ballot().round + 1, self.me)
        self.claims[self.me] = replace(self.mine, promise=ballot)

    def think(self) -> bool:
        """Take every step our claims allow; True when our own claim changed (gossip it)."""
        before = self.mine
        highest = self.highest_ballot()
        if highest > self.mine.promise:
            self.claims[self.me] = replace(self.mine, promise=highest)
        mine = self.mine
        ballot = mine.promise
        if ballot.proposer == self.me and mine.accepted != ballot:
            promisers = [c for c in self.claims.values() if c.promise == ballot]
            if len(promisers) >= self.quorum:
                prior = max(promisers, key=lambda c: c.accepted)
                value = prior.value if prior.accepted != NO_BALLOT else self.proposal or tuple(sorted(self.claims))
                self.claims[self.me] = replace(mine, accepted=ballot, value=value)
        elif ballot not in (NO_BALLOT, mine.accepted):
            proposer = self.claims.get(ballot.proposer)
            if proposer is not None and proposer.accepted == ballot:
                self.claims[self.me] = replace(mine, accepted=ballot, value=proposer.value)
        return self.mine != before

    def decision(self) -> Decision | None:
        counts: dict[Ballot, int] = {}
        for c in self.claims.values():
            if c.accepted != NO_BALLOT:
                counts[c.accepted] = counts.get(c.accepted, 0) + 1
        for ballot, n in counts.items():
            if n >= self.quorum:
                value = next(c.value for c in self.claims.values() if c.accepted == ballot)
                return Decision(ballot, value)
        return None
