"""The status -> metrics function (pure): Weave's names, the states Weave's alert rules expect."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from weave_node.api.metrics import RouterMetrics, families

DOC = {
    "version": "0.1.0",
    "router": {
        "name": "aa:bb:cc:dd:ee:01",
        "nickname": "n1",
        "encryption": True,
        "connections_by_state": {"established": 2, "handshaking": 1, "retrying": 1},
        "terminations": 4,
        "peers": 4,
        "reachable": 3,
        "refused": {"handshakes_per_source": 12, "conn_limit": 1},
        "message_errors": {"bad_message": 2},
    },
    "ipam": {
        "range": "10.32.0.0/12",
        "ready": True,
        "used": 7,
        "free": 100,
        "pending_allocates": 2,
        "owners": [
            {"size": 2**18, "reachable": True},
            {"size": 2**19, "reachable": False},
        ],
        "orphans": [{"state": "asking"}, {"state": "conflict"}, {"state": "conflict"}],
    },
    "datapath": {
        "mtu": 1450,
        "problems": ["x"],
        "peers": [
            {"name": "aa:bb:cc:dd:ee:02", "nickname": "n2", "mode": "fastdp"},
            {"name": "aa:bb:cc:dd:ee:03", "nickname": "n3", "mode": "down"},
        ],
        "sleeve": {
            "counters": {"frames_out": 5, "frames_in": 3, "bytes_out": 500, "bytes_in": 300, "relayed": 2},
            "drops": {"replay": 4, "forged": 1},
        },
    },
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_families_use_weave_names_and_values() -> None:
    reg = CollectorRegistry()

    class FromStatus(Collector):
        def collect(self) -> list[Metric]:  # type: ignore[override]
            return families(DOC)

    reg.register(FromStatus())
    s = _samples(generate_latest(reg).decode())

    def conns(state: str) -> float:
        return s[("weave_connections", (("encryption", "yes"), ("state", state), ("type", "tcp")))]

    assert (conns("established"), conns("pending"), conns("retrying"), conns("connecting")) == (2, 1, 1, 0)
    assert s[("weave_connection_terminations_total", ())] == 4
    assert s[("weave_node_connections_refused_total", (("reason", "handshakes_per_source"),))] == 12
    assert s[("weave_node_messages_failed_total", (("outcome", "bad_message"),))] == 2
    assert s[("weave_ips", (("state", "local-used"),))] == 7
    assert s[("weave_max_ips", ())] == 2**20
    assert s[("weave_ipam_unreachable_count", ())] == 1
    assert s[("weave_ipam_unreachable_percentage", ())] == 50.0
    assert s[("weave_ipam_pending_allocates", ())] == 2
    assert s[("weave_node_ipam_orphaned_addresses", (("state", "conflict"),))] == 2
    assert s[("weave_node_ipam_orphaned_addresses", (("state", "asking"),))] == 1
    assert s[("weave_node_datapath_peers", (("mode", "down"),))] == 1
    assert s[("weave_node_datapath_problems", ())] == 1
    assert s[("weave_node_sleeve_frames_total", (("direction", "out"),))] == 5
    assert s[("weave_node_sleeve_bytes_total", (("direction", "in"),))] == 300
    assert s[("weave_node_sleeve_drops_total", (("reason", "replay"),))] == 4
    assert s[("weave_node_sleeve_relayed_total", ())] == 2


def test_router_metrics_count_cni_operations() -> None:
    m = RouterMetrics(lambda: DOC)
    m.observe_cni("add", 0.004, True)
    m.observe_cni("add", 0.3, False)
    s = _samples(m.render().decode())
    assert s[("weave_node_cni_operations_total", (("op", "add"), ("result", "ok")))] == 1
    assert s[("weave_node_cni_operations_total", (("op", "add"), ("result", "error")))] == 1
    assert s[("weave_node_cni_operation_seconds_count", (("op", "add"),))] == 2
    assert s[("weave_node_cni_operation_seconds_bucket", (("le", "0.005"), ("op", "add")))] == 1
