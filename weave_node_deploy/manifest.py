"""The Kubernetes manifest: rendered from templates/weave-node/daemonset.yaml.j2 and validated against the
Kubernetes schemas (kubernetes-validate, offline) before anything is applied. No weave_node import."""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from typing import Any

import kubernetes_validate
import yaml

from weave_node_deploy import host_files
from weave_node_deploy.facts import STATUS_SOCKET
from weave_node_deploy.host_files import conflist  # the DaemonSet's init container installs the same file

KUBERNETES_VERSION = "1.30"


class InvalidManifest(ValueError):
    pass


def nodes(data: Mapping[str, Any]) -> list[str]:
    """Every node's address, once each, in one order whichever host asks."""
    return sorted({str(data["weave_address"]), *(str(p) for p in data["weave_peers"])})


def gate_timeout(data: Mapping[str, Any]) -> int:
    """`rollout status` waits for the whole roll, one node at a time: the per-node timeout times the nodes."""
    return int(data["weave_health_timeout"]) * max(1, len(nodes(data)))


def pull_policy(image: str, policy: str | None) -> str:
    """An image under `localhost/` was imported into each node's runtime (it exists in no registry): never pulled."""
    return policy or ("Never" if image.startswith("localhost/") else "IfNotPresent")


def from_settings(data: Mapping[str, Any]) -> str:
    """The manifest from one host's effective settings (every node's address: its own and its peers', sorted, so
    any host renders the same manifest)."""
    peers = nodes(data)
    return render(
        image=data["weave_image"],
        image_pull_policy=pull_policy(data["weave_image"], data.get("weave_image_pull_policy")),
        peers=peers,
        ipalloc_range=data["weave_ipalloc_range"],
        ipalloc_init=data["weave_ipalloc_init"] or f"consensus={len(peers)}",
        reclaim_after=data["weave_ipam_reclaim_after"],
        reclaim_replaced=data["weave_ipam_reclaim_replaced"],
        conn_limit=data["weave_conn_limit"],
        metrics_addr=data["weave_metrics_addr"],
        mtu=data["weave_mtu"],
        direct=data["weave_direct"] and data["weave_daemonset_direct"],
        encryption=data.get("weave_encryption") or "auto",
        conflist=conflist(data),
    )


def render(**values: Any) -> str:
    values.setdefault("mtu", None)
    values.setdefault("direct", False)  # weave_daemonset_direct: opt-in under the DaemonSet for now
    values.setdefault("password_secret", "")
    values.setdefault("encryption", "auto")
    values.setdefault("image_pull_policy", pull_policy(values["image"], None))
    values.setdefault("ipalloc_init", f"consensus={len(values['peers'])}")
    values.setdefault("reclaim_after", 600)
    values.setdefault("reclaim_replaced", True)
    values.setdefault("conflist", conflist(_CONFLIST_DEFAULTS))
    values.setdefault("status_socket", STATUS_SOCKET)
    values.setdefault("run_dir", posixpath.dirname(values["status_socket"]))
    template = host_files.env().get_template("weave-node/daemonset.yaml.j2")
    # The pods' template carries a hash of everything else: a changed setting rolls them, an unchanged one does not.
    values["config_hash"] = ""
    values["config_hash"] = hashlib.sha256(template.render(**values).encode()).hexdigest()[:16]
    text = template.render(**values)
    validate(text)
    return text


SELECTOR = "app.kubernetes.io/name=weave-node"
# Each pod that is not Ready, with the reason its containers wait (ErrImageNeverPull, CrashLoopBackOff...).
_NOT_READY = (
    '{range .items[*]}{.spec.nodeName}{": "}{.metadata.name}'
    '{range .status.initContainerStatuses[*]}{" "}{.name}{"="}{.state.waiting.reason}{" "}{.state.waiting.message}{end}'
    '{range .status.containerStatuses[*]}{" "}{.name}{"="}{.state.waiting.reason}{" "}{.state.waiting.message}{end}'
    '{"\\n"}{end}'
)


ANNOTATION = "weave-node/config"
# What the cluster runs now: the hash in the live DaemonSet's pod template, then its desired, updated and Ready
# pod counts (nothing when there is no DaemonSet).
LIVE_STATE = (
    "kubectl -n kube-system get daemonset weave-node -o jsonpath='"
    f"{{.spec.template.metadata.annotations.{ANNOTATION}}} {{.status.desiredNumberScheduled}} "
    "{.status.updatedNumberScheduled} {.status.numberReady}' 2>/dev/null || true"
)


def rolled_out(counts: list[str]) -> bool:
    """From LIVE_STATE's counts: every scheduled pod runs the current template and is Ready."""
    if len(counts) != 3 or not all(c.isdigit() for c in counts):
        return False
    desired, updated, ready = (int(c) for c in counts)
    return desired > 0 and desired == updated == ready


def config_hash(text: str) -> str:
    """The hash the rendered manifest carries in its pod template: applied when the live one differs, so a
    failed apply (or a DaemonSet deleted by hand) is applied again by the next run, and an unchanged one is not."""
    for doc in yaml.safe_load_all(text):
        if doc and doc.get("kind") == "DaemonSet":
            return str(doc["spec"]["template"]["metadata"]["annotations"][ANNOTATION])
    raise InvalidManifest("the manifest has no DaemonSet")


def health_gate(timeout: int) -> str:
    """The shell command of the DaemonSet's health gate (both engines): wait for every pod to be Ready; on
    timeout name each pod with its containers' waiting reasons, and fail."""
    return (
        f"kubectl -n kube-system rollout status daemonset/weave-node --timeout={int(timeout)}s "
        f"|| {{ echo 'weave-node pods not Ready:' >&2; "
        f"kubectl -n kube-system get pods -l {SELECTOR} -o jsonpath='{_NOT_READY}' >&2; exit 1; }}"
    )


_CONFLIST_DEFAULTS = {
    "weave_cni_version": "1.0.0",
    "weave_hairpin": True,
    "weave_bandwidth": False,
    "weave_state_dir": "/var/lib/weave-node",
}


def validate(text: str, version: str = KUBERNETES_VERSION) -> None:
    """Every document against the schemas of that Kubernetes version (strict: unknown fields are errors)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise InvalidManifest(f"the manifest is not valid YAML: {exc}") from None
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            raise InvalidManifest(f"{doc.get('kind')} {where}: {exc.message}") from None
