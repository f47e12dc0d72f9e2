"""Kubernetes on the lab: how long the DaemonSet takes to be Ready, and how fast 30 pods start with weave-net
against Debian's bridge + host-local (the reference plugins) on the same cluster, in the same run.

    .venv/bin/python bench/kubernetes_bench.py [--hosts 3] [--rounds 3] [--pods 30]

1. `weave-node lab up --kubernetes`, then the rollout with weave_kubernetes=true (the DaemonSet path).
2. Apply -> every weave-node pod Ready: the DaemonSet deleted (pods with it), then `kubectl apply` and
   `kubectl rollout status` timed on node1, `--rounds` times.
3. 30 pods: a Deployment of `--pods` busybox pods, from `kubectl apply` to all Running and Ready, then deleted;
   rounds interleave weave-net and a bridge + host-local configuration list (written as 05-bench-bridge.conflist,
   which containerd prefers while it exists). Printed as the ratio weave-net / bridge.
Also prints the binaries' build record and the images' sizes from the cache. Results go into
docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import run_cli
from tests.lab.kube import Cluster, deployment
from weave_node.lab.kubernetes import binaries
from weave_node.lab.paths import home

NAME = "kbench"
BRIDGE = "/etc/cni/net.d/05-bench-bridge.conflist"


def bridge_conflist(index: int) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "bench-bridge",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": f"10.200.{index}.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
    )


def daemonset_ready(cluster: Cluster) -> float:
    cluster.kubectl("-n", "kube-system", "delete", "daemonset", "weave-node", "--wait=true")
    cluster.gone("app.kubernetes.io/name=weave-node", "kube-system")
    t0 = time.monotonic()
    cluster.ssh("node1", "kubectl apply -f /etc/weave-node/weave-node.yaml >/dev/null && "
                "kubectl -n kube-system rollout status daemonset/weave-node --timeout=300s >/dev/null")  # fmt: skip
    return time.monotonic() - t0


def pods_running(cluster: Cluster, pods: int) -> float:
    t0 = time.monotonic()
    cluster.apply(deployment("bench", pods, ["sleep", "3600"], spread=False))
    cluster.running("app=bench", pods, timeout=600)
    seconds = time.monotonic() - t0
    cluster.kubectl("delete", "deployment", "bench", "--wait=false")
    cluster.gone("app=bench", timeout=600)
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pods", type=int, default=30)
    args = ap.parse_args()
    try:
        t0 = time.monotonic()
        run_cli("weave-node", "lab", "up", "--name", NAME, "--hosts", str(args.hosts), "--kubernetes", "-q",
                env={"WEAVE_LAB": NAME}, check=True, timeout=3600)  # fmt: skip
        print(f"lab up --kubernetes ({args.hosts} hosts, binaries and images cached): {time.monotonic() - t0:.1f} s")
        cluster = Cluster(NAME, args.hosts)
        t0 = time.monotonic()
        cluster.deploy("--data", "weave_kubernetes=true")
        print(f"first rollout (DaemonSet applied, health gate passed): {time.monotonic() - t0:.1f} s")
        cluster.wait_nodes_ready()
        ds = [daemonset_ready(cluster) for _ in range(args.rounds)]
        print(f"kubectl apply -> every weave-node pod Ready: median {statistics.median(ds):.1f} s "
              f"({', '.join(f'{s:.1f}' for s in ds)})")  # fmt: skip
        weave, bridge = [], []
        for _ in range(args.rounds):
            weave.append(pods_running(cluster, args.pods))
            for i, node in enumerate(cluster.nodes, 1):
                cluster.ssh(node, f"cat > {BRIDGE} <<'EOF'\n{bridge_conflist(i)}\nEOF")
            bridge.append(pods_running(cluster, args.pods))
            for node in cluster.nodes:
                cluster.ssh(node, f"rm -f {BRIDGE}")
        w, b = statistics.median(weave), statistics.median(bridge)
        print(f"{args.pods} pods created -> all Running and Ready: weave-net median {w:.1f} s "
              f"({', '.join(f'{s:.1f}' for s in weave)}), bridge + host-local median {b:.1f} s "
              f"({', '.join(f'{s:.1f}' for s in bridge)}): ratio {w / b:.2f}x")  # fmt: skip
    finally:
        run_cli("weave-node", "lab", "down", "--name", NAME, "-q")
    print("binaries:", json.dumps(binaries.build_info(home() / "cache")))
    for meta in sorted((home() / "cache" / "images").glob("*.tar.json")):
        doc = json.loads(meta.read_text())
        print(f"image {doc['reference']}: {doc['size'] / 2**20:.1f} MiB archive, built in {doc['seconds']} s")
    subprocess.run(["ip", "netns", "list"], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
