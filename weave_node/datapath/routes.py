"""Our routes and policy rules, planned like every other datapath object (pure): what is wanted and missing or
different is replaced, what is ours and no longer wanted is deleted. Ours = protocol RT_PROTO (routes) and
priority RULE_PRIORITY (rules), so nothing of anyone else's is ever in a plan."""

from __future__ import annotations

from collections.abc import Iterable

from weave_node.datapath.model import Route, Rule
from weave_node.datapath.ops import AddRule, DelRoute, DelRule, Op, ReplaceRoute


def route_ops(want: Iterable[Route], have: Iterable[Route], *, devices: set[str]) -> tuple[list[Op], list[str]]:
    """(operations, problems). A route through a device that does not exist is a problem, not an operation; a
    stale route for the same destination and table is replaced in place (no moment without one)."""
    wanted = {r.key: r for r in want}
    current = {r.key: r for r in have}
    ops: list[Op] = [DelRoute(r) for key, r in sorted(current.items()) if key not in wanted]
    problems: list[str] = []
    for key, route in sorted(wanted.items()):
        if route.dev and route.dev not in devices:
            problems.append(f"route {route.dst} via {route.via or '-'} dev {route.dev}: no such device")
            if key in current:
                ops.append(DelRoute(current[key]))
        elif current.get(key) != route:
            ops.append(ReplaceRoute(route))
    return ops, problems


def rule_ops(want: Iterable[Rule], have: Iterable[Rule]) -> list[Op]:
    wanted, current = set(want), set(have)
    ops: list[Op] = [DelRule(r) for r in sorted(current - wanted)]
    return ops + [AddRule(r) for r in sorted(wanted - current)]


def apply_routes(routes: set[Route], rules: set[Rule], ops: Iterable[Op]) -> None:
    """The model of these operations (for plan's tests)."""
    for op in ops:
        if isinstance(op, ReplaceRoute):
            routes -= {r for r in routes if r.key == op.route.key}
            routes.add(op.route)
        elif isinstance(op, DelRoute):
            routes.discard(op.route)
        elif isinstance(op, AddRule):
            rules.add(op.rule)
        elif isinstance(op, DelRule):
            rules.discard(op.rule)
