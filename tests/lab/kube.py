"""A Kubernetes lab for tests: `weave-node lab up --kubernetes`, kubectl from this machine (through the lab's
underlay namespace), ssh into nodes, the rollout, and the workload manifests the tests apply."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

from tests.helpers import poll, run_cli
from weave_node.lab import lab as lab_api

BUSYBOX = "localhost/busybox:lab"
HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"


class Cluster:
    def __init__(self, name: str, hosts: int) -> None:
        self.name, self.hosts = name, hosts
        self.env = {"WEAVE_LAB": name}
        status = json.loads(run_cli("weave-node", "lab", "status", "--json", "--name", name, check=True).stdout)
        self.ssh_config = status["ssh_config"]
        self.nodes = [f"node{i}" for i in range(1, hosts + 1)]

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = lab_api.kubectl_argv(self.name, list(args))
        out = subprocess.run(argv, capture_output=True, text=True, input=input_text, timeout=300, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, doc: dict[str, Any] | list[dict[str, Any]]) -> None:
        items = doc if isinstance(doc, list) else [doc]
        self.kubectl("apply", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def ssh(self, node: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            ["ssh", "-F", self.ssh_config, node, command], capture_output=True, text=True, timeout=120, check=False
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{node}: {command} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def deploy(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(
            "pyinfra", "-y", "inventory/lab.py", "deploys/weave_node.py", *args, env=self.env, check=check, timeout=900
        )

    def nodes_ready(self) -> dict[str, bool]:
        out = {}
        for node in self.json("get", "nodes")["items"]:
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            out[node["metadata"]["name"]] = conds.get("Ready") == "True"
        return out

    def wait_nodes_ready(self, timeout: float = 120) -> None:
        poll(lambda: all(self.nodes_ready().values()) and len(self.nodes_ready()) == self.hosts, timeout=timeout,
             interval=1.0, what="every node Ready")  # fmt: skip

    def pods(self, selector: str, namespace: str = "default") -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.json("get", "pods", "-n", namespace, "-l", selector)["items"]
        return items

    def running(self, selector: str, count: int, namespace: str = "default", timeout: float = 180) -> list[Any]:
        """Poll until exactly `count` pods match, all Ready; returns them."""

        def ready() -> list[Any] | None:
            pods = self.pods(selector, namespace)
            ok = [
                p
                for p in pods
                if p["status"].get("phase") == "Running"
                and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
                and p["metadata"].get("deletionTimestamp") is None
            ]
            return ok if len(ok) == count == len(pods) else None

        return poll(ready, timeout=timeout, interval=1.0, what=f"{count} pods {selector} Running and Ready")

    def gone(self, selector: str, namespace: str = "default", timeout: float = 180) -> None:
        poll(lambda: not self.pods(selector, namespace), timeout=timeout, interval=1.0, what=f"pods {selector} gone")

    def exec(self, pod: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("exec", pod, "--", *command, check=check)

    def allocations(self, node: str, weave_node: str = "/opt/weave-node/venv/bin/weave-node") -> list[str]:
        rows = json.loads(self.ssh(node, f"{weave_node} ipam allocations --json").stdout)
        return [str(r["container_id"]) for r in rows]

    def network_report(self) -> str:
        """What a failed connectivity assertion shows: each node's router view of its peers (the DaemonSet's pod,
        or the systemd service), the bridge's learned MACs, the neighbours and the routes."""
        out = []
        routers = {p["spec"]["nodeName"]: p["metadata"]["name"] for p in self.pods(WEAVE_SELECTOR, "kube-system")}
        for node in self.nodes:
            if node in routers:
                argv = ("-n", "kube-system", "exec", routers[node], "-c", "router", "--", "weave-node", "status")
                status = self.kubectl(*argv, "peers", check=False)
                datapath = self.kubectl(*argv, "datapath", check=False)
                text = status.stdout + status.stderr + datapath.stdout + datapath.stderr
            else:
                weave = "/opt/weave-node/venv/bin/weave-node status"
                text = self.ssh(node, f"{weave} peers; {weave} datapath", check=False).stdout
            kernel = self.ssh(
                node,
                "bridge fdb show br weave | grep -v permanent; ip neigh; ip route; "
                "sysctl net.bridge.bridge-nf-call-iptables; iptables -nvL FORWARD | head -20; "
                "iptables -nvL WEAVE-NODE-FORWARD; ebtables -L --Lc 2>&1 | grep -v '^$'; "
                "cat /proc/sys/net/ipv4/conf/weave/proxy_arp /proc/sys/net/ipv4/conf/eth0/rp_filter",
                check=False,
            ).stdout
            out.append(f"===== {node}\n{text}\n{kernel}")
        return "\n".join(out)

    def pod_veths(self, node: str) -> int:
        out = self.ssh(node, "ip -o link show master weave type veth").stdout
        return len([line for line in out.splitlines() if line.strip()])


WEAVE_SELECTOR = "app.kubernetes.io/name=weave-node"


def kubernetes_lab(name: str, hosts: int) -> Iterator[Cluster]:
    """A module fixture's body: `lab up --kubernetes` (building the binaries on a machine's first run), the
    cluster, and `lab down` whatever happens."""
    try:
        run_cli("weave-node", "lab", "up", "--name", name, "--hosts", str(hosts), "--kubernetes", "-q",
                env={"WEAVE_LAB": name}, check=True, timeout=3600)  # fmt: skip
        yield Cluster(name, hosts)
    finally:
        run_cli("weave-node", "lab", "down", "--name", name, "-q")


def deployment(name: str, replicas: int, command: list[str], spread: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never", "command": command}],
        "terminationGracePeriodSeconds": 1,
    }
    if spread:
        spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": name}},
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def web_pod(node: str) -> list[dict[str, Any]]:
    """busybox httpd on `node`, and a ClusterIP Service in front of it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "httpd",
                    "image": BUSYBOX,
                    "imagePullPolicy": "Never",
                    "command": [
                        "sh",
                        "-c",
                        "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www",
                    ],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                }
            ],
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    return [pod, service]


def http_get(cluster: Cluster, pod: str, ip: str, port: int) -> str:
    """The body of GET / from inside `pod` (busybox nc: the static busybox's wget crashes resolving), or ""."""
    request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}"
    out = cluster.exec(pod, "sh", "-c", request, check=False)
    if out.returncode != 0 or "\n\n" not in out.stdout:  # (text mode reads the CRLFs as newlines)
        return ""
    return out.stdout.split("\n\n", 1)[1].strip()
