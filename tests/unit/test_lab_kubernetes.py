"""The lab cluster's files (pure): certificates that chain to the lab CA with the names each component is
authorised by, and units whose every file argument is a file written on that host."""

from __future__ import annotations

import base64
import ipaddress
import json
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from weave_node.lab.kubernetes import cluster
from weave_node.lab.spec import make_spec

pytestmark = pytest.mark.unit
SPEC = make_spec("k8s", 3)
CREDS = cluster.credentials(SPEC)
CA = x509.load_pem_x509_certificate(CREDS.ca.cert)


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(CREDS.pairs[name].cert)


def _subject(cert: x509.Certificate) -> tuple[str, str | None]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(cn), str(orgs[0].value) if orgs else None


@pytest.mark.parametrize("name", sorted(CREDS.pairs))
def test_every_certificate_is_signed_by_the_lab_ca(name: str) -> None:
    cert = _cert(name)
    cert.verify_directly_issued_by(CA)
    key = CA.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)


def test_identities_are_the_ones_kubernetes_authorises() -> None:
    assert _subject(_cert("admin")) == ("kubernetes-admin", "system:masters")
    assert _subject(_cert("kubelet-node2")) == ("system:node:node2", "system:nodes")  # the Node authorizer
    assert _subject(_cert("kube-proxy"))[0] == "system:kube-proxy"  # bound to system:node-proxier by default
    assert _subject(_cert("controller-manager"))[0] == "system:kube-controller-manager"
    assert _subject(_cert("scheduler"))[0] == "system:kube-scheduler"
    usage = _cert("admin").extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_the_api_server_certificate_names_every_way_it_is_reached() -> None:
    san = _cert("apiserver").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert {"198.18.0.1", cluster.SERVICE_IP, "127.0.0.1"} <= ips
    assert ipaddress.ip_address(cluster.SERVICE_IP) in ipaddress.ip_network(cluster.SERVICE_CIDR)
    assert "kubernetes.default.svc" in san.get_values_for_type(x509.DNSName)


def test_the_service_range_and_the_pod_range_do_not_overlap() -> None:
    assert not ipaddress.ip_network(cluster.SERVICE_CIDR).overlaps(ipaddress.ip_network(cluster.CLUSTER_CIDR))


def test_every_file_a_unit_names_is_written_on_that_host() -> None:
    for host, (files, links) in cluster.host_files(SPEC, CREDS).items():
        written = {"/" + f.path for f in files}
        for f in files:
            if not f.path.endswith(".service"):
                continue
            text = f.content.decode()
            for path in re.findall(r"=(/etc/[^\s\\]+|/var/lib/kube[^\s\\]+)", text):
                assert path in written, f"{host}: {f.path} names {path}, which is not written"
            for binary in re.findall(r"ExecStart=(\S+)", text):
                assert binary.startswith(cluster.BIN + "/") or binary == "/bin/sh", binary
        enabled = {link.path.rsplit("/", 1)[1] for link in links if link.path.startswith(cluster.WANTS)}
        assert {"kubelet.service", "kube-proxy.service", "containerd.service"} <= enabled
        assert ("kube-apiserver.service" in enabled) == (host == "node1")


def test_kubeconfigs_carry_the_ca_and_the_hosts_own_identity() -> None:
    files, _ = cluster.host_files(SPEC, CREDS)["node3"]
    conf = json.loads(next(f for f in files if f.path == "etc/kubernetes/kubelet.conf").content)
    assert conf["clusters"][0]["cluster"]["server"] == "https://198.18.0.1:6443"
    assert base64.b64decode(conf["clusters"][0]["cluster"]["certificate-authority-data"]) == CREDS.ca.cert
    cert = x509.load_pem_x509_certificate(base64.b64decode(conf["users"][0]["user"]["client-certificate-data"]))
    assert _subject(cert) == ("system:node:node3", "system:nodes")
    secrets = [f for f in files if f.path.endswith((".key", ".conf")) and "kubernetes" in f.path]
    assert secrets and all(f.mode == 0o600 for f in secrets)
    assert not any(f.path.endswith("ca.key") for f in files)  # the CA's key stays on the control plane


def test_kubelet_and_kube_proxy_are_configured_for_a_node_in_a_container() -> None:
    files, _ = cluster.host_files(SPEC, CREDS)["node2"]
    kubelet = json.loads(next(f for f in files if f.path == "var/lib/kubelet/config.yaml").content)
    assert kubelet["cgroupRoot"] == "/" and kubelet["cgroupDriver"] == "cgroupfs"  # the host's own cgroup namespace
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    proxy = json.loads(next(f for f in files if f.path == "var/lib/kube-proxy/config.yaml").content)
    assert proxy["mode"] == "iptables" and proxy["conntrack"]["maxPerCore"] == 0
    containerd = next(f for f in files if f.path == "etc/containerd/config.toml").content.decode()
    assert "restrict_oom_score_adj = true" in containerd and "NoNewKeyring = true" in containerd
    assert f'sandbox_image = "{cluster.PAUSE_IMAGE}"' in containerd


def test_a_streamed_command_passes_each_line_on_and_keeps_its_tail() -> None:
    """The builds' runner (mmdebstrap, apt, make): every non-empty line as it comes, the exit code, the tail."""
    from weave_node.lab.system import stream

    seen: list[str] = []
    code, tail = stream(["sh", "-c", "echo one; echo; echo E: two >&2; echo three; exit 3"], seen.append, keep=2)
    assert code == 3 and seen == ["one", "E: two", "three"] and tail == ["E: two", "three"]
    code, every = stream(["sh", "-c", "echo a; echo b"], seen.append)
    assert code == 0 and every == ["a", "b"]
