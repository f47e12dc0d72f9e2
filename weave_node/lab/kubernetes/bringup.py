"""The lab's Kubernetes shell: what `weave-node lab up --kubernetes` adds to a plain lab — binaries and images from
the machine's cache, the cluster's files in every host's layer before it boots, the nspawn flags a kubelet needs,
and after boot: images imported into each node's containerd, the API server answering, every node registered."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weave_node.lab import system
from weave_node.lab.kubernetes import binaries, cluster
from weave_node.lab.spec import LabSpec
from weave_node.lab.system import LabError

IMAGES_IN_HOST = "/var/lib/weave-lab-images"
READY_TIMEOUT = float(os.environ.get("WEAVE_LAB_KUBE_TIMEOUT", "180"))


@dataclass(frozen=True)
class Prepared:
    bin_dir: Path
    images: dict[str, Path]  # short name -> OCI archive on this machine
    nspawn_args: tuple[str, ...]


def prepare(cache: Path, on_line: Callable[[str], None]) -> Prepared:
    """Build (once per machine) or find the binaries and images."""
    bin_dir, _built = binaries.ensure(cache, on_line)
    from weave_node.lab.kubernetes.images import ensure_images

    images = ensure_images(cache, on_line)
    args = [
        f"--bind-ro={bin_dir}:{cluster.BIN}",
        "--system-call-filter=@keyring",  # runc gives each container a session keyring
        "--capability=CAP_SYSLOG",  # kubelet 1.20 will not start without a readable /dev/kmsg
        "--bind=/dev/kmsg",
    ]
    args += [f"--bind-ro={path}:{IMAGES_IN_HOST}/{name}.tar" for name, path in sorted(images.items())]
    return Prepared(bin_dir, images, tuple(args))


def write_host_files(spec: LabSpec, upper: Callable[[str], Path]) -> bytes:
    """The cluster's files into every host's layer; returns the control machine's admin kubeconfig."""
    creds = cluster.credentials(spec)
    for name, (files, links) in cluster.host_files(spec, creds).items():
        root = upper(name)
        for f in files:
            path = root / f.path
            path.parent.mkdir(parents=True, exist_ok=True)
            system.write_atomic(path, f.content.decode(), mode=f.mode)
        for link in links:
            path = root / link.path
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(link.target)
    return cluster.admin_kubeconfig(spec, creds)


def kubectl_argv(spec: LabSpec, bin_dir: Path, kubeconfig: Path, args: list[str]) -> list[str]:
    """kubectl on the control machine, run inside the lab's underlay namespace (where node1's API is)."""
    return ["ip", "netns", "exec", spec.underlay_netns, str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args]


def _ssh(ssh_config: Path, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(ssh_config), host, command], capture_output=True, text=True, timeout=timeout, check=False
    )


def import_images(spec: LabSpec, ssh_config: Path, images: dict[str, Path]) -> None:
    """Every image into every node's containerd (namespace k8s.io, the CRI's), once containerd answers."""
    names = " ".join(f"{IMAGES_IN_HOST}/{n}.tar" for n in sorted(images))
    script = (
        "for i in $(seq 200); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done; "
        f'for f in {names}; do ctr -n k8s.io images import --snapshotter native "$f" >/dev/null || exit 1; done'
    )

    def one(host: str) -> None:
        out = _ssh(ssh_config, host, script, timeout=300)
        if out.returncode != 0:
            raise LabError(f"{host}: importing images into containerd failed: {(out.stderr or out.stdout).strip()}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, [h.name for h in spec.hosts]))


def wait_cluster(spec: LabSpec, bin_dir: Path, kubeconfig: Path, report: Callable[[str], None]) -> None:
    """Until the API server answers /readyz and every host is a registered node (NotReady until a CNI
    configuration exists: that is the network's job, not the lab's)."""
    deadline = time.monotonic() + READY_TIMEOUT
    want = {h.name for h in spec.hosts}
    last = "API server not answering yet"
    while time.monotonic() < deadline:
        ready = subprocess.run(
            kubectl_argv(spec, bin_dir, kubeconfig, ["get", "--raw=/readyz", "--request-timeout=5s"]),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if ready.returncode == 0:
            nodes = subprocess.run(
                kubectl_argv(spec, bin_dir, kubeconfig, ["get", "nodes", "-o", "json", "--request-timeout=5s"]),
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if nodes.returncode == 0:
                have = {n["metadata"]["name"] for n in json.loads(nodes.stdout)["items"]}
                if have >= want:
                    report(f"API ready, {len(have)} nodes registered")
                    return
                last = f"nodes registered: {', '.join(sorted(have)) or 'none'}"
        report(last)
        time.sleep(1.0)
    raise LabError(f"the Kubernetes control plane did not come up within {READY_TIMEOUT:g} s ({last})")
