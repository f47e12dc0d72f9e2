"""What makes the lab's hosts a Kubernetes 1.20 cluster (pure: files per host, no I/O).

node1 runs the control plane (etcd with TLS on loopback, kube-apiserver, controller-manager, scheduler) as
systemd units; every host runs containerd (Debian's, with its CRI plugin), kubelet and kube-proxy (iptables
mode). Binaries come from the machine's build cache, bind-mounted read-only at BIN. Every component
authenticates with a certificate from the lab's CA (pki.py). The files are written into each host's layer before
it boots, so the hosts come up as a cluster; nodes stay NotReady until a CNI configuration appears (the
rollout's conflist, or the DaemonSet's init container), which is exactly what the tests then prove.

What a host in an nspawn container needs beyond a real node (measured, ../shared/LAB-CONTAINERD.md and
KUBERNETES-NOTES.md): containerd's runc options NoNewKeyring and restrict_oom_score_adj, the native snapshotter,
the v1 cgroup controllers remounted read-write, three sysctl files kubelet insists on bind-mounted over /proc/sys,
and the host in a cgroup of its own in every v1 controller (so the pods' cgroups land under it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from weave_node.lab.kubernetes.pki import Authority, KeyPair, service_account_keys
from weave_node.lab.spec import HostSpec, LabSpec

BIN = "/opt/kubernetes/bin"
PKI = "/etc/kubernetes/pki"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service
CLUSTER_CIDR = "10.32.0.0/12"  # weave-node's default range: kube-proxy's idea of what is inside the cluster
API_PORT = 6443
PAUSE_IMAGE = "localhost/pause:lab"
SYSCTLS = {"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}
WANTS = "etc/systemd/system/multi-user.target.wants"
CNI_PLUGINS = ("loopback", "portmap", "bandwidth", "host-local", "bridge")  # as kubeadm's kubernetes-cni gives


@dataclass(frozen=True)
class File:
    path: str  # relative to the host's root, no leading slash
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Link:
    path: str
    target: str


def control_plane(spec: LabSpec) -> HostSpec:
    return spec.hosts[0]


def api_url(spec: LabSpec) -> str:
    return f"https://{control_plane(spec).address}:{API_PORT}"


@dataclass(frozen=True)
class Credentials:
    ca: KeyPair
    sa_key: bytes
    sa_pub: bytes
    pairs: dict[str, KeyPair]  # name -> pair, e.g. "apiserver", "admin", "kubelet-node2"


def credentials(spec: LabSpec) -> Credentials:
    ca = Authority.create()
    cp = control_plane(spec)
    pairs = {
        "apiserver": ca.issue(
            "kube-apiserver",
            server=True,
            dns=(
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                cp.name,
                "localhost",
            ),
            ips=(str(cp.address), SERVICE_IP, "127.0.0.1"),
        ),
        "apiserver-kubelet-client": ca.issue("kube-apiserver-kubelet-client", "system:masters", client=True),
        "apiserver-etcd-client": ca.issue("kube-apiserver-etcd-client", client=True),
        "etcd": ca.issue(cp.name, server=True, client=True, dns=("localhost", cp.name), ips=("127.0.0.1",)),
        "admin": ca.issue("kubernetes-admin", "system:masters", client=True),
        "controller-manager": ca.issue("system:kube-controller-manager", client=True),
        "scheduler": ca.issue("system:kube-scheduler", client=True),
        "kube-proxy": ca.issue("system:kube-proxy", client=True),
    }
    for host in spec.hosts:
        pairs[f"kubelet-{host.name}"] = ca.issue(f"system:node:{host.name}", "system:nodes", client=True)
        pairs[f"kubelet-serving-{host.name}"] = ca.issue(
            host.name, server=True, dns=(host.name,), ips=(str(host.address),)
        )
    sa_key, sa_pub = service_account_keys()
    return Credentials(ca.pem, sa_key, sa_pub, pairs)


def kubeconfig(server: str, ca: bytes, pair: KeyPair, user: str) -> bytes:
    """A kubeconfig with the CA and the client pair inline (JSON is valid YAML)."""
    import base64

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [
            {"name": user, "user": {"client-certificate-data": b64(pair.cert), "client-key-data": b64(pair.key)}}
        ],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": "lab",
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def _unit(description: str, exec_start: list[str], after: str = "", requires: str = "") -> bytes:
    lines = ["[Unit]", f"Description={description} (weave-node lab)"]
    if after:
        lines.append(f"After={after}")
    if requires:
        lines.append(f"Requires={requires}")
    lines += [
        "",
        "[Service]",
        "ExecStart=" + " \\\n    ".join(exec_start),
        "Restart=always",
        "RestartSec=2",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines).encode()


def _enable(unit: str) -> Link:
    return Link(f"{WANTS}/{unit}", f"/etc/systemd/system/{unit}")


def _pair_files(name: str, pair: KeyPair) -> list[File]:
    return [File(f"{PKI[1:]}/{name}.crt", pair.cert), File(f"{PKI[1:]}/{name}.key", pair.key, 0o600)]


def control_plane_files(spec: LabSpec, creds: Credentials) -> tuple[list[File], list[Link]]:
    cp = control_plane(spec)
    local = f"https://127.0.0.1:{API_PORT}"
    files = [File(f"{PKI[1:]}/ca.key", creds.ca.key, 0o600)]
    for name in ("apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "etcd"):
        files += _pair_files(name, creds.pairs[name])
    files += [File(f"{PKI[1:]}/sa.key", creds.sa_key, 0o600), File(f"{PKI[1:]}/sa.pub", creds.sa_pub)]
    for name, user in (
        ("controller-manager", "system:kube-controller-manager"),
        ("scheduler", "system:kube-scheduler"),
    ):
        files.append(
            File(f"etc/kubernetes/{name}.conf", kubeconfig(local, creds.ca.cert, creds.pairs[name], user), 0o600)
        )
    admin = kubeconfig(local, creds.ca.cert, creds.pairs["admin"], "kubernetes-admin")
    files += [File("etc/kubernetes/admin.conf", admin, 0o600), File("root/.kube/config", admin, 0o600)]
    etcd = [
        f"{BIN}/etcd",
        f"--name={cp.name}",
        "--data-dir=/var/lib/etcd",
        "--listen-client-urls=https://127.0.0.1:2379",
        "--advertise-client-urls=https://127.0.0.1:2379",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        f"--initial-cluster={cp.name}=http://127.0.0.1:2380",
        f"--cert-file={PKI}/etcd.crt",
        f"--key-file={PKI}/etcd.key",
        "--client-cert-auth=true",
        f"--trusted-ca-file={PKI}/ca.crt",
        "--listen-metrics-urls=http://127.0.0.1:2381",
    ]
    apiserver = [
        f"{BIN}/kube-apiserver",
        f"--advertise-address={cp.address}",
        f"--secure-port={API_PORT}",
        "--insecure-port=0",
        "--etcd-servers=https://127.0.0.1:2379",
        f"--etcd-cafile={PKI}/ca.crt",
        f"--etcd-certfile={PKI}/apiserver-etcd-client.crt",
        f"--etcd-keyfile={PKI}/apiserver-etcd-client.key",
        f"--client-ca-file={PKI}/ca.crt",
        f"--tls-cert-file={PKI}/apiserver.crt",
        f"--tls-private-key-file={PKI}/apiserver.key",
        f"--kubelet-client-certificate={PKI}/apiserver-kubelet-client.crt",
        f"--kubelet-client-key={PKI}/apiserver-kubelet-client.key",
        f"--kubelet-certificate-authority={PKI}/ca.crt",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={PKI}/sa.pub",
        f"--service-account-signing-key-file={PKI}/sa.key",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        "--profiling=false",
    ]
    common = [
        "--bind-address=127.0.0.1",
        "--port=0",
        "--leader-elect=false",
        "--profiling=false",
    ]
    controller_manager = [
        f"{BIN}/kube-controller-manager",
        "--kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
        f"--cluster-signing-cert-file={PKI}/ca.crt",
        f"--cluster-signing-key-file={PKI}/ca.key",
        f"--root-ca-file={PKI}/ca.crt",
        f"--service-account-private-key-file={PKI}/sa.key",
        "--use-service-account-credentials=true",
        "--allocate-node-cidrs=false",  # weave-node's IPAM gives pods their addresses
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        *common,
    ]
    scheduler = [
        f"{BIN}/kube-scheduler",
        "--kubeconfig=/etc/kubernetes/scheduler.conf",
        "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
        "--authorization-kubeconfig=/etc/kubernetes/scheduler.conf",
        *common,
    ]
    units = {
        "etcd.service": _unit("etcd", etcd),
        "kube-apiserver.service": _unit("Kubernetes API server", apiserver, "etcd.service"),
        "kube-controller-manager.service": _unit(
            "Kubernetes controller manager", controller_manager, "kube-apiserver.service"
        ),
        "kube-scheduler.service": _unit("Kubernetes scheduler", scheduler, "kube-apiserver.service"),
    }
    files += [File(f"etc/systemd/system/{name}", text) for name, text in units.items()]
    return files, [_enable(name) for name in units]


CONTAINERD_CONFIG = f"""\
# Written by weave-node's lab: containerd's CRI for kubelet inside an nspawn host.
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # runc would set oom_score_adj -998 on the sandbox, which needs CAP_SYS_RESOURCE nothing has here
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"  # overlayfs cannot stack on the host's overlay root
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        NoNewKeyring = true
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
"""

CONTAINERD_DROPIN = (
    "# Written by weave-node's lab: nspawn mounts the v1 cgroup controllers read-only on a hybrid machine.\n"
    "[Service]\n"
    "ExecStartPre=/bin/sh -c 'for c in /sys/fs/cgroup/*/; do case $c in */systemd/|*/unified/) ;; "
    "*) mount -o remount,bind,rw $c;; esac; done'\n"
)


def node_files(spec: LabSpec, host: HostSpec, creds: Credentials) -> tuple[list[File], list[Link]]:
    server = api_url(spec)
    files = [File(f"{PKI[1:]}/ca.crt", creds.ca.cert)]
    files += _pair_files("kubelet-serving", creds.pairs[f"kubelet-serving-{host.name}"])
    kubelet_conf = kubeconfig(server, creds.ca.cert, creds.pairs[f"kubelet-{host.name}"], f"system:node:{host.name}")
    proxy_conf = kubeconfig(server, creds.ca.cert, creds.pairs["kube-proxy"], "system:kube-proxy")
    files += [
        File("etc/kubernetes/kubelet.conf", kubelet_conf, 0o600),
        File("etc/kubernetes/kube-proxy.conf", proxy_conf, 0o600),
        File("etc/containerd/config.toml", CONTAINERD_CONFIG.encode()),
        File("etc/systemd/system/containerd.service.d/weave-lab.conf", CONTAINERD_DROPIN.encode()),
    ]
    kubelet_config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": f"{PKI}/ca.crt"},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": f"{PKI}/kubelet-serving.crt",
        "tlsPrivateKeyFile": f"{PKI}/kubelet-serving.key",
        "cgroupDriver": "cgroupfs",
        # The host runs in a cgroup of its own in every hierarchy (the lab puts it there) and nspawn gives it a
        # cgroup namespace: "/" inside is weave-node-lab/<lab>/<host> on the machine, where the pods land.
        "cgroupRoot": "/",
        "failSwapOn": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "healthzBindAddress": "127.0.0.1",
        "maxPods": 110,
    }
    proxy_config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": "/etc/kubernetes/kube-proxy.conf"},
        "mode": "iptables",
        "clusterCIDR": CLUSTER_CIDR,
        "hostnameOverride": host.name,
        # a non-initial network namespace cannot set the conntrack sysctls (kind does the same)
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    }
    files += [
        File("var/lib/kubelet/config.yaml", (json.dumps(kubelet_config, indent=2) + "\n").encode()),
        File("var/lib/kube-proxy/config.yaml", (json.dumps(proxy_config, indent=2) + "\n").encode()),
    ]
    for path, value in SYSCTLS.items():
        files.append(File(f"etc/kubernetes/sysctl/{path.replace('/', '.')}", f"{value}\n".encode()))
    mounts = "; ".join(f"mount --bind /etc/kubernetes/sysctl/{p.replace('/', '.')} /proc/sys/{p}" for p in SYSCTLS)
    sysctl_unit = (
        "[Unit]\nDescription=sysctl values kubelet insists on, as files over /proc/sys (weave-node lab)\n"
        "Before=kubelet.service\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f"ExecStart=/bin/sh -c '{mounts}'\n\n[Install]\nWantedBy=multi-user.target\n"
    ).encode()
    kubelet = [
        f"{BIN}/kubelet",
        "--config=/var/lib/kubelet/config.yaml",
        "--kubeconfig=/etc/kubernetes/kubelet.conf",
        "--container-runtime=remote",
        "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
        f"--node-ip={host.address}",
        f"--hostname-override={host.name}",
        "--register-node=true",
    ]
    proxy = [f"{BIN}/kube-proxy", "--config=/var/lib/kube-proxy/config.yaml"]
    units = {
        "lab-kubelet-sysctls.service": sysctl_unit,
        "kubelet.service": _unit(
            "Kubernetes node agent", kubelet, "containerd.service lab-kubelet-sysctls.service", "containerd.service"
        ),
        "kube-proxy.service": _unit("Kubernetes network proxy", proxy),
    }
    files += [File(f"etc/systemd/system/{name}", text) for name, text in units.items()]
    links = [_enable(name) for name in units]
    links.append(Link(f"{WANTS}/containerd.service", "/lib/systemd/system/containerd.service"))
    links += [Link(f"opt/cni/bin/{p}", f"/usr/lib/cni/{p}") for p in CNI_PLUGINS]
    links += [Link(f"usr/local/bin/{b}", f"{BIN}/{b}") for b in ("kubectl",)]
    return files, links


def host_files(spec: LabSpec, creds: Credentials) -> dict[str, tuple[list[File], list[Link]]]:
    out = {}
    for host in spec.hosts:
        files, links = node_files(spec, host, creds)
        if host == control_plane(spec):
            cp_files, cp_links = control_plane_files(spec, creds)
            files, links = files + cp_files, links + cp_links
        out[host.name] = (files, links)
    return out


def admin_kubeconfig(spec: LabSpec, creds: Credentials) -> bytes:
    """For the control machine (reaching node1 through the lab's underlay namespace)."""
    return kubeconfig(api_url(spec), creds.ca.cert, creds.pairs["admin"], "kubernetes-admin")
