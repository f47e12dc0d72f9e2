"""The operator's surface against real routers: Prometheus metrics, the API's reach, the OpenAPI document fuzzed,
the status tables in 80 columns and `status --wait`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import BIN, poll
from tests.netns.hosts import FAST, Net, RouterProc, netns_hosts, start_mesh
from weave_node.api.client import _UnixHTTPConnection, request


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Net, list[RouterProc]]]:
    with netns_hosts(3, tmp_path_factory.mktemp("op")) as net:
        yield net, start_mesh(net, "--metrics-addr", "0.0.0.0:6782")


def scrape(
    net: Net, router: RouterProc, where: str | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics from `where` (a namespace; default the router's host) over the underlay; parsed."""
    code = f"import urllib.request; print(urllib.request.urlopen('http://{router.host.address}:6782/metrics').read().decode())"
    out = subprocess.run(
        ["ip", "netns", "exec", where or router.host.netns, "python3", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    samples = {}
    for family in text_string_to_metric_families(out.stdout):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    matches = [
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items())
    ]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_metrics_follow_the_mesh_ipam_cni_and_datapath(mesh: tuple[Net, list[RouterProc]]) -> None:
    net, routers = mesh
    h1 = routers[0]
    m = scrape(net, h1, where=routers[1].host.netns)  # from another host: 0.0.0.0:6782 was asked for
    assert value(m, "weave_connections", state="established") == 2
    assert value(m, "weave_connections", state="pending") == 0
    assert value(m, "weave_node_peers") == 3
    assert value(m, "weave_max_ips") == 2**20
    assert value(m, "weave_ips", state="local-used") == 1  # the bridge's own address
    assert value(m, "weave_ipam_pending_allocates") == 0 and value(m, "weave_ipam_unreachable_count") == 0
    assert value(m, "weave_node_datapath_peers", mode="direct") == 2  # the hosts share a subnet
    assert value(m, "weave_node_mtu") == 1450
    pods = []
    try:
        for i in range(5):
            ns = f"{h1.host.netns}-m{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            pods.append(ns)
            body = {"container_id": f"metrics-{i}", "ifname": "eth0", "netns": f"/run/netns/{ns}"}
            request("POST", "/cni/add", socket_path=str(h1.socket), body=body, timeout=30)
        m = scrape(net, h1)
        assert value(m, "weave_ips", state="local-used") == 6
        assert value(m, "weave_node_cni_operations_total", op="add", result="ok") == 5
        assert value(m, "weave_node_cni_operation_seconds_count", op="add") == 5
        assert value(m, "weave_node_cni_operation_seconds_sum", op="add") > 0
        for i in range(5):
            body = {"container_id": f"metrics-{i}", "ifname": "eth0", "netns": ""}
            request("POST", "/cni/del", socket_path=str(h1.socket), body=body, timeout=30)
        assert value(scrape(net, h1), "weave_ips", state="local-used") == 1
    finally:
        for ns in pods:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
    # A peer goes away: the connection count, the terminations and IPAM's view follow.
    routers[2].proc.terminate()
    routers[2].proc.wait()

    def after() -> bool:
        m = scrape(net, h1)
        return (
            value(m, "weave_connections", state="established") == 1
            and value(m, "weave_connection_terminations_total") >= 1
            and value(m, "weave_ipam_unreachable_count") == 1
            and value(m, "weave_ipam_unreachable_percentage") > 0
        )

    poll(after, timeout=30, what="h1's metrics to show h3 gone")


def test_the_api_is_not_reachable_from_outside_the_host(mesh: tuple[Net, list[RouterProc]]) -> None:
    _, routers = mesh
    h1 = routers[0]
    code = (
        "import socket, sys\n"
        "try:\n    socket.create_connection((sys.argv[1], 6784), timeout=5)\n"
        "except ConnectionRefusedError:\n    print('refused')\nelse:\n    print('connected')\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", routers[1].host.netns, "python3", "-c", code, h1.host.address],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "refused"
    # Its own host reaches it on loopback.
    inside = h1.host.run("python3", "-c", code.replace("sys.argv[1]", "'127.0.0.1'"), "x")
    assert inside.stdout.strip() == "connected"


def test_status_tables_fit_80_columns_and_wait_works(mesh: tuple[Net, list[RouterProc]]) -> None:
    _, routers = mesh
    r = routers[0]
    env = {"COLUMNS": "80", "PATH": os.environ["PATH"]}
    for section in ([], ["peers"], ["connections"], ["targets"], ["ipam"], ["datapath"]):
        out = subprocess.run(
            [str(BIN / "weave-node"), "status", *section, "--socket", str(r.socket)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        assert out.strip(), section
        assert max(len(line) for line in out.splitlines()) <= 80, (section, out)
    ready = subprocess.run(
        [str(BIN / "weave-node"), "status", "--wait", "20", "--json", "--socket", str(r.socket)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(ready.stdout)["ipam"]["ready"] is True
    missing = subprocess.run(
        [str(BIN / "weave-node"), "status", "--wait", "0.5", "--socket", "/nonexistent.sock", "--addr", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and "not ready after 0.5 s" in missing.stderr


# --- the OpenAPI document, fuzzed --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lone_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A router without the kernel datapath (nothing to break), on loopback only, for fuzzing its API."""
    tmp = tmp_path_factory.mktemp("fuzz")
    sock = tmp / "weave.sock"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [str(BIN / "weave-node"), "router", "--datapath", "none", "--metrics-addr", "none", "--status-addr", "none"]
    args += ["--listen-host", "127.0.0.1", "--port", str(port), "--status-socket", str(sock), *FAST]
    args += ["--state-dir", str(tmp / "state"), "--nickname", "fuzz"]
    with open(tmp / "router.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        poll(sock.exists, timeout=20, what="the router's socket")
        doc = request("GET", "/openapi.json", socket_path=str(sock))
        yield sock, doc
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        assert "Traceback" not in (tmp / "router.log").read_text()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), path, op) for path, item in sorted(doc["paths"].items()) for m, op in sorted(item.items())]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=4),
    max_leaves=12,
)
# Field values that look like what the API expects, and some that do not.
fields = st.fixed_dictionaries(
    {},
    optional={
        "container_id": st.text(max_size=300) | st.sampled_from(["pod-1", "weave:bridge", ""]),
        "ifname": st.text(max_size=20) | st.just("eth0"),
        "ip": st.text(max_size=20) | st.sampled_from(["10.32.0.9", "10.32.0.0", "1.2.3.4", "10.47.255.255"]),
        "wait": st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
        "valid": json_values,
        "netns": st.text(max_size=30),
    },
)
bodies = st.one_of(fields.map(json.dumps), json_values.map(json.dumps), st.binary(max_size=80))
path_params = st.text(max_size=40) | st.sampled_from(["127.0.0.1:1", "[::1]:99999", "fuzz", "aa:bb:cc:dd:ee:ff"])


def test_the_openapi_document_lists_every_route(lone_router: tuple[Path, dict[str, Any]]) -> None:
    _, doc = lone_router
    assert doc["openapi"].startswith("3.") and {"/status", "/ipam/allocate", "/cni/add", "/openapi.json"} <= set(
        doc["paths"]
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_generated_request_gets_a_5xx(lone_router: tuple[Path, dict[str, Any]], data: st.DataObject) -> None:
    sock, doc = lone_router
    method, path, op = data.draw(st.sampled_from(_operations(doc)))
    for param in op.get("parameters", []):
        value = data.draw(path_params)
        if path.startswith("/connect"):  # never dial anything but loopback
            value = data.draw(st.sampled_from(["127.0.0.1:1", "127.0.0.1", "[::1]:2", "", "a b"]))
        path = path.replace("{" + param["name"] + "}", urllib.parse.quote(value, safe="") or "%20")
    body = data.draw(bodies) if method == "POST" else None
    if isinstance(body, str):
        body = body.encode()
    conn = _UnixHTTPConnection(str(sock), timeout=60)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body is not None else {})
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status < 500, (method, path, body)
