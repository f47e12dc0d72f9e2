"""Kubernetes path (b) on the lab: nodes without the router service; the rollout's Kubernetes step applies the
DaemonSet (image built here, imported into each node's containerd) once the API answers, and gates on a Ready
weave-node pod on every node. Then workloads are networked as in path (a), a deleted weave-node pod is recreated
without any workload pod losing its address or its connectivity, a node deleted from the cluster has its range
reclaimed, and bad input fails clearly and changes nothing else."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import poll, run_cli
from tests.lab.kube import Cluster, deployment, http_get, kubernetes_lab, web_pod
from tests.lab.test_lab import grand_total
from weave_node.cni import gobuild

HOSTS = 3
POD_RANGE = ipaddress.ip_network("10.32.0.0/12")
DAEMONSET = ("--data", "weave_kubernetes=true", "--data", "weave_ipam_reclaim_after=20")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from kubernetes_lab(f"kb{os.getpid() % 100000}", HOSTS)


def _weave_pods(cluster: Cluster) -> dict[str, dict[str, object]]:
    return {p["spec"]["nodeName"]: p for p in cluster.pods("app.kubernetes.io/name=weave-node", "kube-system")}


def _selector(cluster: Cluster) -> object:
    return cluster.json("-n", "kube-system", "get", "daemonset", "weave-node")["spec"]["selector"]


def test_the_rollout_applies_the_daemonset_once_the_api_answers_and_a_third_run_changes_nothing(
    cluster: Cluster,
) -> None:
    cluster.ssh("node1", "systemctl stop kube-apiserver")
    try:
        early = cluster.deploy(*DAEMONSET)
        assert "does not answer /readyz: skipping the DaemonSet" in early.stdout + early.stderr
    finally:
        cluster.ssh("node1", "systemctl start kube-apiserver")
    poll(lambda: cluster.kubectl("get", "--raw=/readyz", check=False).stdout == "ok", timeout=60, interval=1.0,
         what="the API server back")  # fmt: skip
    assert cluster.kubectl("-n", "kube-system", "get", "daemonset", "weave-node", check=False).returncode != 0
    applied = cluster.deploy(*DAEMONSET)
    assert grand_total(applied.stdout + applied.stderr)[1] == 0
    assert "Health gate: a weave-node pod Ready on every node" in applied.stdout + applied.stderr
    third = cluster.deploy(*DAEMONSET)
    assert grand_total(third.stdout + third.stderr)[:2] == (0, 0), third.stdout
    # No router service on the nodes: the routers are the DaemonSet's pods, one Ready per node.
    pods = cluster.running("app.kubernetes.io/name=weave-node", HOSTS, namespace="kube-system")
    assert sorted(p["spec"]["nodeName"] for p in pods) == cluster.nodes
    for node in cluster.nodes:
        assert cluster.ssh(node, "systemctl cat weave-node.service", check=False).returncode != 0
        # the init container installed the plugin and the configuration
        conflist = json.loads(cluster.ssh(node, "cat /etc/cni/net.d/10-weave.conflist").stdout)
        assert conflist["plugins"][0]["type"] == "weave-net"
        plugin = cluster.ssh(node, "sha256sum < /opt/cni/bin/weave-net").stdout.split()[0]
        assert plugin == hashlib.sha256(gobuild.plugin().read_bytes()).hexdigest()  # the wheel's static build
    cluster.wait_nodes_ready()
    logs = cluster.kubectl("-n", "kube-system", "logs", pods[0]["metadata"]["name"]).stdout
    assert "router" in logs and "is up" in logs and "IPAM" in logs


def test_the_ansible_role_renders_the_same_daemonset_and_applies_it_when_it_is_gone(cluster: Cluster) -> None:
    """The same rollout through Ansible (`weave-node rollout --engine ansible`): it finds the DaemonSet pyinfra
    applied identical (no apply), and when it is gone applies the same manifest and passes the same gate."""

    def ansible() -> subprocess.CompletedProcess[str]:
        args = ["weave-node", "rollout", "--engine", "ansible", "--inventory", "inventory/lab.py"]
        for item in DAEMONSET[1::2]:
            args += ["--data", item]
        return run_cli(*args, env=cluster.env, timeout=900)

    def live() -> dict[str, Any]:
        doc: dict[str, Any] = cluster.json("-n", "kube-system", "get", "daemonset", "weave-node")
        return doc

    def manifest_file() -> str:
        return cluster.ssh("node1", "sha256sum /etc/weave-node/weave-node.yaml").stdout.split()[0]

    before, written = live(), manifest_file()
    same = ansible()
    assert same.returncode == 0, same.stdout + same.stderr
    assert manifest_file() == written  # the role rendered the same bytes as pyinfra
    after = live()
    assert after["metadata"]["generation"] == before["metadata"]["generation"]  # and did not apply again
    cluster.kubectl("-n", "kube-system", "delete", "daemonset", "weave-node", "--wait=true")
    cluster.gone("app.kubernetes.io/name=weave-node", "kube-system")
    applied = ansible()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    fresh = live()
    assert fresh["metadata"]["uid"] != before["metadata"]["uid"]
    assert fresh["spec"]["template"] == before["spec"]["template"]
    cluster.running("app.kubernetes.io/name=weave-node", HOSTS, namespace="kube-system")
    cluster.wait_nodes_ready()


def test_workloads_are_networked_by_the_daemonset(cluster: Cluster) -> None:
    cluster.apply(deployment("pinger", HOSTS, ["sleep", "3600"]))
    pods = cluster.running("app=pinger", HOSTS)
    assert sorted(p["spec"]["nodeName"] for p in pods) == cluster.nodes
    for pod in pods:
        assert ipaddress.ip_address(pod["status"]["podIP"]) in POD_RANGE
        assert "default via 10." in cluster.exec(pod["metadata"]["name"], "ip", "route").stdout
    for src in pods:
        for dst in pods:
            if src is not dst:
                ping = cluster.exec(src["metadata"]["name"], "ping", "-c", "2", "-W", "5", dst["status"]["podIP"],
                                    check=False)  # fmt: skip
                if ping.returncode != 0:
                    report = f"{src['spec']['nodeName']} -> {dst['spec']['nodeName']}: {ping.stdout}"
                    raise AssertionError(report + cluster.network_report())
    cluster.apply(web_pod("node2"))
    cluster.running("app=web", 1)
    ip = cluster.json("get", "service", "web")["spec"]["clusterIP"]
    client = next(p for p in pods if p["spec"]["nodeName"] == "node3")["metadata"]["name"]
    assert poll(lambda: http_get(cluster, client, ip, 80), timeout=60, interval=1.0, what="the Service") == "web"


def test_a_deleted_weave_node_pod_is_recreated_and_workloads_keep_their_addresses_and_connectivity(
    cluster: Cluster,
) -> None:
    pods = {p["spec"]["nodeName"]: p for p in cluster.pods("app=pinger")}
    before = {n: p["status"]["podIP"] for n, p in pods.items()}
    src = pods["node1"]["metadata"]["name"]
    # 0.1 s pings from node1's pod to node2's while node2's router pod is deleted and recreated
    ping = subprocess.Popen(
        cluster_kubectl_argv(cluster, "exec", src, "--", "ping", "-i", "0.1", "-w", "30", "-q", before["node2"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    old = _weave_pods(cluster)["node2"]["metadata"]["name"]  # type: ignore[index]
    cluster.kubectl("-n", "kube-system", "delete", "pod", str(old), "--wait=true")
    new = cluster.running("app.kubernetes.io/name=weave-node", HOSTS, namespace="kube-system")
    assert old not in {p["metadata"]["name"] for p in new}
    summary = ping.communicate(timeout=60)[0]
    stats = next(line for line in summary.splitlines() if "packets transmitted" in line)
    sent, received = int(stats.split()[0]), int(stats.split()[3])
    assert sent >= 100 and sent - received <= 2, summary  # the kernel datapath stays while the router is away
    after = {p["spec"]["nodeName"]: p["status"]["podIP"] for p in cluster.pods("app=pinger")}
    assert after == before
    for node, ip in before.items():
        if node != "node1":
            assert cluster.exec(src, "ping", "-c", "1", "-W", "5", ip, check=False).returncode == 0


def cluster_kubectl_argv(cluster: Cluster, *args: str) -> list[str]:
    from weave_node.lab import lab as lab_api

    return lab_api.kubectl_argv(cluster.name, list(args))


def test_an_image_missing_from_the_nodes_fails_the_gate_clearly_and_only_one_node_waits(cluster: Cluster) -> None:
    bad = cluster.deploy(*DAEMONSET, "--data", "weave_image=localhost/weave-node:0.0.0-missing",
                         "--data", "weave_health_timeout=30", check=False)  # fmt: skip
    text = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "weave-node pods not Ready" in text and "ErrImageNeverPull" in text, text
    # The rolling update stops at the first node: the others keep their Ready router on the good image.
    ready = [p for p in _weave_pods(cluster).values() if p["status"].get("containerStatuses", [{}])[0].get("ready")]  # type: ignore[attr-defined]
    assert len(ready) >= HOSTS - 1
    events = cluster.kubectl("-n", "kube-system", "get", "events", "--field-selector", "reason=ErrImageNeverPull")
    assert "localhost/weave-node:0.0.0-missing" in events.stdout
    good = cluster.deploy(*DAEMONSET)  # the next run with the right image heals it
    assert grand_total(good.stdout + good.stderr)[1] == 0
    cluster.running("app.kubernetes.io/name=weave-node", HOSTS, namespace="kube-system")


def test_an_api_that_refuses_the_manifest_fails_naming_the_object_and_the_next_run_applies(cluster: Cluster) -> None:
    # A DaemonSet's selector is immutable: one of the same name with another selector makes the API refuse ours.
    live = cluster.json("-n", "kube-system", "get", "daemonset", "weave-node")
    cluster.kubectl("-n", "kube-system", "delete", "daemonset", "weave-node", "--cascade=orphan")
    conflicting = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "weave-node", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "not-weave"}},
            "template": {
                "metadata": {"labels": {"app": "not-weave"}},
                "spec": {"nodeSelector": {"no-such-node": "x"}, "containers": [{"name": "c", "image": "none"}]},
            },
        },
    }
    cluster.apply(conflicting)
    refused = cluster.deploy(*DAEMONSET, check=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and 'The DaemonSet "weave-node" is invalid' in text and "immutable" in text, text
    assert (
        cluster.json("-n", "kube-system", "get", "daemonset", "weave-node")["spec"]["selector"]
        == conflicting["spec"]["selector"]
    )  # type: ignore[index]
    cluster.kubectl("-n", "kube-system", "delete", "daemonset", "weave-node", "--cascade=orphan")
    healed = cluster.deploy(*DAEMONSET)  # applied again: the live DaemonSet is not ours
    assert grand_total(healed.stdout + healed.stderr)[1] == 0
    assert (
        cluster.json("-n", "kube-system", "get", "daemonset", "weave-node")["spec"]["selector"]
        == live["spec"]["selector"]
    )
    cluster.running("app.kubernetes.io/name=weave-node", HOSTS, namespace="kube-system")


def test_a_node_drained_and_deleted_has_its_range_reclaimed_by_the_others(cluster: Cluster) -> None:
    def owners(node: str) -> dict[str, int]:
        pod = _weave_pods(cluster)[node]["metadata"]["name"]  # type: ignore[index]
        out = cluster.kubectl("-n", "kube-system", "exec", str(pod), "--", "weave-node", "status", "--json")
        return {str(o["nickname"]): int(o["size"]) for o in json.loads(out.stdout)["ipam"]["owners"]}

    assert owners("node1").get("node3", 0) > 0
    cluster.kubectl("drain", "node3", "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=120s")
    cluster.kubectl("delete", "node", "node3")
    # The machine is retired: its kubelet stops and its router with it (a deleted node's kubelet is not there to
    # stop the DaemonSet's pod).
    cluster.ssh("node3", "systemctl stop kubelet && pkill -KILL -f '[w]eave-node router'")
    poll(lambda: "node3" not in owners("node1") and "node3" not in owners("node2"), timeout=120, interval=2.0,
         what="node3's range reclaimed by node1 and node2")  # fmt: skip
    pods = cluster.pods("app=pinger")
    assert all(p["spec"].get("nodeName") != "node3" for p in pods)
