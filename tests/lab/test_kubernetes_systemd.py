"""Kubernetes path (a) on the lab, with the real components: a cluster (etcd, kube-apiserver, controller-manager,
scheduler on node1; containerd's CRI, kubelet and kube-proxy on every node), then the stock rollout (the router as
a systemd service plus the CNI files), then kubelet -> containerd's CRI -> /opt/cni/bin/weave-net does the rest.

Asserts pod IPs from weave-node's range, the default route via the weave bridge, pod-to-pod pings across nodes, a
ClusterIP Service answered through kube-proxy from another node, and pod churn that leaves no address or veth.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import pytest

from tests.helpers import poll
from tests.lab.kube import Cluster, deployment, http_get, kubernetes_lab, web_pod
from tests.lab.test_lab import grand_total

HOSTS = 3
POD_RANGE = ipaddress.ip_network("10.32.0.0/12")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from kubernetes_lab(f"ka{os.getpid() % 100000}", HOSTS)


def test_nodes_wait_for_the_network_then_the_rollout_makes_them_ready(cluster: Cluster) -> None:
    # Before the rollout no CNI configuration exists: kubelet reports the network not ready.
    ready = cluster.nodes_ready()
    assert sorted(ready) == cluster.nodes and not any(ready.values()), ready
    out = cluster.deploy()
    assert grand_total(out.stdout + out.stderr)[1] == 0
    cluster.wait_nodes_ready()


def test_pods_get_weave_addresses_and_routes_and_reach_each_other_across_nodes(cluster: Cluster) -> None:
    cluster.apply(deployment("pinger", HOSTS, ["sleep", "3600"]))
    pods = cluster.running("app=pinger", HOSTS)
    assert sorted(p["spec"]["nodeName"] for p in pods) == cluster.nodes  # one per node
    bridges = {n: cluster.ssh(n, "ip -4 -o addr show dev weave").stdout.split()[3].split("/")[0] for n in cluster.nodes}
    for pod in pods:
        ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert ip in POD_RANGE, pod["status"]
        route = cluster.exec(pod["metadata"]["name"], "ip", "route").stdout
        assert f"default via {bridges[pod['spec']['nodeName']]} dev eth0" in route, route
    for src in pods:
        for dst in pods:
            if src is not dst:
                ping = cluster.exec(src["metadata"]["name"], "ping", "-c", "2", "-W", "5", dst["status"]["podIP"],
                                    check=False)  # fmt: skip
                assert ping.returncode == 0, (src["spec"]["nodeName"], dst["spec"]["nodeName"], ping.stdout)
    # The allocation is the pod's: the router's IPAM holds it under the CRI's container (sandbox) id.
    owner = pods[0]["spec"]["nodeName"]
    assert len(cluster.allocations(owner)) == 2  # the bridge and this node's pinger


def test_a_cluster_ip_service_answers_a_pod_on_another_node_through_kube_proxy(cluster: Cluster) -> None:
    cluster.apply(web_pod("node2"))
    cluster.running("app=web", 1)
    ip = cluster.json("get", "service", "web")["spec"]["clusterIP"]
    client = next(p for p in cluster.pods("app=pinger") if p["spec"]["nodeName"] == "node3")["metadata"]["name"]

    assert poll(lambda: http_get(cluster, client, ip, 80), timeout=60, interval=1.0, what="the Service") == "web"


def test_pod_churn_through_kubernetes_leaves_no_address_and_no_veth(cluster: Cluster) -> None:
    cluster.kubectl("delete", "deployment", "pinger", "--wait=false")
    cluster.kubectl("delete", "pod", "web", "--wait=false")
    cluster.gone("app=pinger")
    cluster.gone("app=web")
    cluster.apply(deployment("churn", 0, ["sleep", "3600"], spread=False))
    cluster.kubectl("scale", "deployment", "churn", "--replicas=30")
    pods = cluster.running("app=churn", 30, timeout=300)
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 30 and all(ipaddress.ip_address(i) in POD_RANGE for i in ips)
    cluster.kubectl("scale", "deployment", "churn", "--replicas=0")
    cluster.gone("app=churn", timeout=300)
    for node in cluster.nodes:
        poll(lambda n=node: cluster.allocations(n) == ["weave:bridge"], timeout=60, interval=1.0,
             what=f"{node}: only the bridge's address allocated")  # fmt: skip
        assert cluster.pod_veths(node) == 0
