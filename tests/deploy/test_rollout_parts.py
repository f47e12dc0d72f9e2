"""The rollout's pure parts: settings validation, the rendered files, the Kubernetes manifest's schema check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest

from weave_node_deploy import host_files, manifest, settings
from weave_node_deploy.facts import STATUS_SOCKET
from weave_node_deploy.paths import TEMPLATES
from weave_node_deploy.validate import InvalidData, validate

GOOD: dict[str, Any] = {
    "weave_address": "198.18.0.1",
    "weave_ipalloc_range": "10.32.0.0/12",
    "weave_conn_limit": 100,
    "weave_mtu": None,
    "weave_cni_version": "1.0.0",
}
HOSTS = [("node1", {"weave_address": "198.18.0.1"}), ("node2", {"weave_address": "198.18.0.2"})]


def test_good_settings_pass() -> None:
    validate("node1", GOOD, HOSTS)
    for ranges in ("10.32.0.0/12,fd32:57::/64", "fd32:57::/64"):  # dual-stack, IPv6 alone: on every host
        everyone = [(h, {**d, "weave_ipalloc_range": ranges}) for h, d in HOSTS]
        validate("node1", {**GOOD, "weave_ipalloc_range": ranges}, everyone)
    with pytest.raises(InvalidData, match=r"differs from node2's 10\.32\.0\.0/12: every host of a cluster needs"):
        validate("node1", {**GOOD, "weave_ipalloc_range": "fd32:57::/64"}, HOSTS)  # one host changed alone


@pytest.mark.parametrize(
    ("change", "hosts", "message"),
    [
        ({"weave_ipalloc_range": "10.32.0.1/12"}, HOSTS, "is not a CIDR with its host bits zero"),
        ({"weave_ipalloc_range": "198.18.0.0/16"}, HOSTS, "contains node2's address 198.18.0.2"),
        (
            {"weave_ipalloc_range": "198.18.0.0/16", "weave_address": "198.18.0.1"},
            [HOSTS[0]],
            "contains this host's address 198.18.0.1",
        ),
        ({"weave_ipalloc_range": "fd00::/63"}, HOSTS, "an IPv6 range must be a /64 to a /120"),
        ({"weave_ipalloc_range": "10.32.0.0/12,fd00::/48"}, HOSTS, "an IPv6 range must be a /64 to a /120"),
        ({"weave_ipalloc_range": "10.32.0.0/12,10.48.0.0/12"}, HOSTS, "or one of each separated by a comma"),
        ({"weave_ipalloc_range": "10.32.0.0/12,fe80::/64"}, HOSTS, "of unique local or global space"),
        (
            {"weave_ipalloc_range": "10.32.0.0/12,2001:db8::/64", "weave_address": "2001:db8::1"},
            [("node1", {"weave_address": "2001:db8::1"})],
            "2001:db8::/64 contains this host's address 2001:db8::1",
        ),
        ({"weave_address": "node1.example"}, HOSTS, "weave_address must be this host's IP address"),
        ({}, [*HOSTS, ("node3", {"weave_address": "198.18.0.2"})], "198.18.0.2 is used by both node2 and node3"),
        ({"weave_colour": "blue"}, HOSTS, "unknown setting(s) weave_colour"),
        ({"weave_mtu": 100}, HOSTS, "weave_mtu must be a number between 576 and 65485"),
        ({"weave_conn_limit": "many"}, HOSTS, "weave_conn_limit must be a number"),
        ({"weave_cni_version": "2.0.0"}, HOSTS, "weave_cni_version must be one of"),
        ({"weave_password_file": "/nonexistent"}, HOSTS, "No such file or directory"),
        ({"weave_ipam_reclaim_after": -1}, HOSTS, "weave_ipam_reclaim_after must be seconds, a number >= 0"),
        ({"weave_ipam_reclaim_after": "10m"}, HOSTS, "weave_ipam_reclaim_after must be seconds"),
        ({"weave_ipam_reclaim_after": True}, HOSTS, "weave_ipam_reclaim_after must be seconds"),
        ({"weave_ipam_reclaim_after": float("nan")}, HOSTS, "weave_ipam_reclaim_after must be seconds"),
        ({"weave_ipam_reclaim_replaced": "maybe"}, HOSTS, "weave_ipam_reclaim_replaced must be true or false"),
        ({"weave_hairpin": None}, HOSTS, "weave_hairpin must be true or false"),
        ({"weave_health_timeout": 0}, HOSTS, "weave_health_timeout must be seconds, a whole number > 0"),
        ({"weave_dns": "perhaps"}, HOSTS, "weave_dns must be true or false"),
        ({"weave_dns_domain": "-weave.local"}, HOSTS, "weave_dns_domain must be a DNS name"),
        ({"weave_dns_domain": "32.10.in-addr.arpa"}, HOSTS, "is a reverse-lookup domain"),
        ({"weave_dns_upstreams": ["dns.example"]}, HOSTS, "'dns.example' is not an IP address"),
        ({"weave_dns_upstreams": ["10.0.0.2:99999"]}, HOSTS, "'10.0.0.2:99999' is not an IP address with"),
        ({"weave_dns_upstreams": ["10.0.0.2"] * 4}, HOSTS, "at most 3 resolvers"),
    ],
)
def test_bad_settings_are_named_precisely(change: dict[str, Any], hosts: list[Any], message: str) -> None:
    with pytest.raises(InvalidData, match=r"^node1: ") as err:
        validate("node1", {**GOOD, **change}, hosts)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("given", "after", "replaced"),
    [
        ({}, 600, True),
        ({"weave_ipam_reclaim_after": "300", "weave_ipam_reclaim_replaced": "false"}, 300, False),
        ({"weave_ipam_reclaim_after": "0", "weave_ipam_reclaim_replaced": "no"}, 0, False),
        ({"weave_ipam_reclaim_after": "90.5", "weave_ipam_reclaim_replaced": "YES"}, 90.5, True),
        ({"weave_ipam_reclaim_after": 120, "weave_ipam_reclaim_replaced": False}, 120, False),
    ],
)
def test_reclaim_settings_are_typed_as_given_on_the_command_line(
    given: dict[str, Any], after: float, replaced: bool
) -> None:
    """`--data` / `-e` give strings: seconds stay whole when they are (rendered "300", not "300.0")."""
    data = settings.effective("node1", {"weave_address": "198.18.0.1", **given}, HOSTS)
    assert (data["weave_ipam_reclaim_after"], data["weave_ipam_reclaim_replaced"]) == (after, replaced)
    assert type(data["weave_ipam_reclaim_after"]) is type(after)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"weave_ipam_reclaim_after": "-1"}, "node1: weave_ipam_reclaim_after must be seconds, a number >= 0"),
        ({"weave_ipam_reclaim_after": "soon"}, "node1: weave_ipam_reclaim_after must be seconds"),
        ({"weave_ipam_reclaim_after": "inf"}, "node1: weave_ipam_reclaim_after must be seconds"),
        ({"weave_ipam_reclaim_replaced": "ture"}, "node1: weave_ipam_reclaim_replaced must be true or false"),
    ],
)
def test_bad_reclaim_settings_stop_the_run(given: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidData, match=f"^{message}"):
        settings.effective("node1", {"weave_address": "198.18.0.1", **given}, HOSTS)


def _router_config(env_text: str) -> Any:
    """The env file as the router reads it (systemd's EnvironmentFile: KEY=VALUE lines, # comments)."""
    from weave_node.config import from_env_and_flags

    env = dict(line.split("=", 1) for line in env_text.splitlines() if line and not line.startswith("#"))
    return from_env_and_flags(env, {})


@pytest.mark.parametrize(
    ("given", "after", "replaced"),
    [
        ({}, 600.0, True),
        ({"weave_ipam_reclaim_after": "0", "weave_ipam_reclaim_replaced": "false"}, 0.0, False),
        ({"weave_ipam_reclaim_after": "90.5", "weave_bridge_netfilter": "off", "weave_direct": "no"}, 90.5, True),
    ],
)
def test_the_router_reads_the_reclaim_settings_the_deploy_rendered(
    given: dict[str, Any], after: float, replaced: bool
) -> None:
    """Setting -> env file (the template, as pyinfra renders it) -> the router's configuration."""
    data = settings.effective("node1", {"weave_address": "198.18.0.1", **given}, HOSTS)
    text = host_files.router_env(data)  # what both engines write
    assert ("WEAVE_NO_IPAM_RECLAIM_REPLACED=1" in text.splitlines()) is not replaced, text
    config = _router_config(text)
    assert (config.ipam_reclaim_after, config.ipam_reclaim_replaced) == (after, replaced)
    assert config.bridge_netfilter == given.get("weave_bridge_netfilter", "auto")
    assert config.direct is (given.get("weave_direct") != "no")  # on unless turned off


def test_the_router_reads_the_dns_settings_the_deploy_rendered() -> None:
    import yaml

    plain = host_files.router_env(settings.effective("node1", {"weave_address": "198.18.0.1"}, HOSTS))
    assert "DNS" not in plain  # the defaults render nothing: hosts rolled out before DNS see no change
    config = _router_config(plain)
    assert (config.dns.enabled, config.dns.domain, config.dns.upstreams) == (True, "weave.local", ())
    given = {"weave_dns_domain": "Lab.Internal", "weave_dns_upstreams": "10.0.0.2, [2001:db8::53]:5353"}
    config = _router_config(host_files.router_env(settings.effective("node1", {**GOOD, **given}, HOSTS)))
    assert config.dns.domain == "lab.internal" and config.dns.upstreams == (("10.0.0.2", 53), ("2001:db8::53", 5353))
    off = host_files.router_env(settings.effective("node1", {**GOOD, "weave_dns": "false"}, HOSTS))
    assert _router_config(off).dns.enabled is False
    ds = next(d for d in yaml.safe_load_all(manifest.from_settings(_settings())) if d and d["kind"] == "DaemonSet")
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WEAVE_NO_DNS"] == "1"  # under Kubernetes, names are the cluster DNS's


def test_a_password_file_must_be_private_and_not_empty(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o640)
    with pytest.raises(InvalidData, match="readable by others"):
        validate("node1", {**GOOD, "weave_password_file": str(pw)}, HOSTS)
    pw.chmod(0o600)
    validate("node1", {**GOOD, "weave_password_file": str(pw)}, HOSTS)
    pw.write_text("")
    with pytest.raises(InvalidData, match="is empty"):
        validate("node1", {**GOOD, "weave_password_file": str(pw)}, HOSTS)


def _render(name: str, **values: Any) -> str:
    env = jinja2.Environment(  # noqa: S701 - config files, not HTML
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined
    )
    return env.get_template(name).render(**values)


def test_env_file_names_the_password_file_never_the_password() -> None:
    text = _render(
        "weave-node/weave-node.env.j2",
        ipalloc_range="10.32.0.0/12",
        ipalloc_init="",
        ipam_reclaim_after=600,
        ipam_reclaim_replaced=True,
        conn_limit=100,
        mtu=1376,
        bridge_netfilter="auto",
        password_file="/etc/weave-node/password",  # noqa: S106 - a path
        state_dir="/var/lib/weave-node",
        metrics_addr="127.0.0.1:6782",
        status_socket=STATUS_SOCKET,
    )
    settings = dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert settings["WEAVE_MTU"] == "1376" and "WEAVE_PEERS" not in settings  # the peers: mesh.env
    assert settings["WEAVE_PASSWORD_FILE"] == "/etc/weave-node/password"  # noqa: S105 - a path
    assert "WEAVE_PASSWORD" not in settings
    assert "IPALLOC_INIT" not in settings


@pytest.mark.parametrize("previous", ["", "/etc/weave-node/password.previous"])
@pytest.mark.parametrize("accept", [False, True])
def test_mesh_env_holds_what_a_reload_applies(previous: str, accept: bool) -> None:
    from weave_node.core.envfile import parse_env

    text = _render("weave-node/mesh.env.j2", peers=["198.18.0.2", "198.18.0.3"], previous_password_file=previous,
                   accept_unencrypted=accept)  # fmt: skip
    env = parse_env(text)
    assert env["WEAVE_PEERS"] == "198.18.0.2 198.18.0.3"
    assert env.get("WEAVE_PREVIOUS_PASSWORD_FILE", "") == previous
    assert env.get("WEAVE_ACCEPT_UNENCRYPTED") == ("1" if accept else None)
    assert set(env) <= {"WEAVE_PEERS", "WEAVE_PREVIOUS_PASSWORD_FILE", "WEAVE_ACCEPT_UNENCRYPTED"}


def test_unit_is_hardened() -> None:
    unit = _render("weave-node/weave-node.service.j2", prefix="/opt/weave-node", state_dir="/var/lib/weave-node")
    for line in (
        "ExecStart=/opt/weave-node/venv/bin/weave-node router",
        "EnvironmentFile=-/etc/weave-node/mesh.env",
        "ExecReload=/opt/weave-node/venv/bin/weave-node reload --env-file /etc/weave-node/weave-node.env "
        "--env-file /etc/weave-node/mesh.env",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/weave-node",
        "NoNewPrivileges=yes",
        # DNS on port 53 of the bridge address; the host's gratuitous ARP after a flush (AF_PACKET)
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "RuntimeDirectoryMode=0700",
    ):
        assert line in unit.splitlines(), line


@pytest.mark.parametrize("bandwidth", [False, True])
def test_conflist_is_json_with_weave_net_first(bandwidth: bool) -> None:
    doc = json.loads(_render("10-weave.conflist.j2", bandwidth=bandwidth, status_socket=STATUS_SOCKET))
    assert doc["cniVersion"] == "1.0.0"
    assert [p["type"] for p in doc["plugins"]] == ["weave-net", "portmap", *(["bandwidth"] if bandwidth else [])]


VALUES: dict[str, Any] = {
    "image": "weave-node:0.1.0",
    "peers": ["198.18.0.1", "198.18.0.2"],
    "ipalloc_range": "10.32.0.0/12",
    "conn_limit": 100,
    "metrics_addr": "0.0.0.0:6782",
}


def test_the_manifest_validates_against_the_kubernetes_schemas() -> None:
    text = manifest.render(**VALUES, mtu=1376, password_secret="weave-node-password")  # noqa: S106 - a name
    assert "kind: DaemonSet" in text and "hostNetwork: true" in text
    assert "automountServiceAccountToken: false" in text


def test_an_invalid_manifest_is_refused() -> None:
    text = manifest.render(**VALUES).replace("hostNetwork: true", "hostNetwork: sometimes")
    with pytest.raises(manifest.InvalidManifest, match="hostNetwork"):
        manifest.validate(text)
    with pytest.raises(manifest.InvalidManifest, match="not valid YAML"):
        manifest.validate("a: [")


def _settings(**changes: Any) -> dict[str, Any]:
    from weave_node_deploy.settings import DEFAULTS

    return {**DEFAULTS, "weave_address": "198.18.0.1", "weave_peers": ["198.18.0.2", "198.18.0.3"], **changes}


def test_the_daemonset_carries_the_same_conflist_as_the_systemd_path_and_every_node() -> None:
    import yaml

    data = _settings()
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest.from_settings(data)) if d}
    assert docs["ConfigMap"]["data"]["10-weave.conflist"] == host_files.conflist(data)
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["WEAVE_PEERS"] == "198.18.0.1 198.18.0.2 198.18.0.3" and env["IPALLOC_INIT"] == "consensus=3"
    assert {c["imagePullPolicy"] for c in pod["containers"] + pod["initContainers"]} == {"Never"}  # localhost/
    assert "--conflist" in pod["initContainers"][0]["command"]
    assert env["WEAVE_NO_DIRECT"] == "1"  # opt-in under the DaemonSet for now (weave_daemonset_direct)
    on = next(d for d in yaml.safe_load_all(manifest.from_settings(_settings(weave_daemonset_direct=True))) if d and
              d["kind"] == "DaemonSet")  # fmt: skip
    assert "WEAVE_NO_DIRECT" not in {e["name"] for e in on["spec"]["template"]["spec"]["containers"][0]["env"]}
    other = yaml.safe_load_all(manifest.from_settings(_settings(weave_image="registry.example/weave-node:1")))
    ds = next(d for d in other if d and d["kind"] == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert "WEAVE_ENCRYPTION" not in env  # auto: the router's default
    wg = next(d for d in yaml.safe_load_all(manifest.from_settings(_settings(weave_encryption="wireguard"))) if d and
              d["kind"] == "DaemonSet")  # fmt: skip
    wg_env = {e["name"]: e.get("value") for e in wg["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert wg_env["WEAVE_ENCRYPTION"] == "wireguard"


def test_the_config_hash_follows_the_settings_and_nothing_else() -> None:
    base = manifest.config_hash(manifest.from_settings(_settings()))
    assert manifest.config_hash(manifest.from_settings(_settings())) == base  # rendering is deterministic
    for change in ({"weave_conn_limit": 50}, {"weave_hairpin": False}, {"weave_image": "localhost/weave-node:9"}):
        assert manifest.config_hash(manifest.from_settings(_settings(**change))) != base, change


def test_what_the_daemonset_cannot_honour_is_refused_before_any_host_is_touched(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    pw.chmod(0o600)
    hosts = [("node1", {"weave_address": "198.18.0.1"}), ("node2", {"weave_address": "198.18.0.2"})]
    cases = [
        ({"weave_password_file": str(pw)}, "does not carry the password"),
        ({"weave_state_dir": "/srv/weave"}, "weave_state_dir must be /var/lib/weave-node"),
        ({"weave_cni_bin_dir": "/usr/libexec/cni"}, "weave_cni_bin_dir must be /opt/cni/bin"),
    ]
    for change, message in cases:
        data = settings.typed({**settings.DEFAULTS, **_settings(weave_kubernetes=True), **change})
        with pytest.raises(InvalidData, match=message):
            validate("node1", data, hosts)
        validate("node1", {**data, "weave_kubernetes": False}, hosts)  # the systemd path takes it
    planes = [(h, {**d, "weave_kube_control_plane": True}) for h, d in hosts]
    with pytest.raises(InvalidData, match="set it on one host"):
        validate("node1", settings.typed({**settings.DEFAULTS, **_settings(weave_kubernetes=True)}), planes)


def _hosts(**node2: Any) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("node1", {"weave_address": "198.18.0.1"}),
        ("node2", {"weave_address": "198.18.0.2", **node2}),
        ("node3", {"weave_address": "198.18.0.3"}),
    ]


def test_retired_hosts_are_no_ones_peer() -> None:
    hosts = _hosts(weave_retired="node3")
    data = settings.effective("node2", hosts[1][1], hosts)
    assert data["weave_peers"] == ["198.18.0.1"] and data["weave_retired"] == ["node3"]
    explicit = {**hosts[1][1], "weave_peers": "198.18.0.1 198.18.0.3:6783"}
    assert settings.effective("node2", explicit, hosts)["weave_peers"] == ["198.18.0.1"]
    six = [(h, {"weave_address": f"2001:db8:18::{i}"}) for i, (h, _d) in enumerate(hosts, 1)]
    six[1][1]["weave_retired"] = "node3"  # an IPv6 inventory: the retired host goes whatever form its peer takes
    for peers in ("2001:db8:18::1 2001:db8:18::3", "[2001:db8:18::1]:6783 [2001:db8:18::3]:6783"):
        got = settings.effective("node2", {**six[1][1], "weave_peers": peers}, six)["weave_peers"]
        assert got == [peers.split()[0]], got
    with pytest.raises(InvalidData, match="node2: weave_retired names node9, not in the inventory"):
        settings.effective("node2", {**hosts[1][1], "weave_retired": ["node9"]}, hosts)
    with pytest.raises(InvalidData, match="node2: this host is in weave_retired"):
        settings.effective("node2", {**hosts[1][1], "weave_retired": "node2,node3"}, hosts)


def test_a_previous_password_needs_a_password_and_a_readable_private_file(tmp_path: Path) -> None:
    def secret(name: str, text: str, mode: int = 0o600) -> str:
        path = tmp_path / name
        path.write_text(text)
        path.chmod(mode)
        return str(path)

    new, old = secret("new", "n3w\n"), secret("old", "0ld\n")
    hosts = _hosts(weave_password_file=new, weave_previous_password_file=old)
    assert settings.effective("node2", hosts[1][1], hosts)["weave_previous_password_file"] == old
    for bad, message in [
        ({"weave_previous_password_file": old}, "weave_previous_password_file without weave_password_file"),
        ({"weave_password_file": new, "weave_previous_password_file": str(tmp_path / "no")}, "No such file"),
        ({"weave_password_file": new, "weave_previous_password_file": secret("blank", "\n \n")}, "is empty"),
        ({"weave_password_file": secret("open", "x", 0o644)}, "weave_password_file .* is readable by others"),
    ]:
        hosts = _hosts(**bad)
        with pytest.raises(InvalidData, match=message):
            settings.effective("node2", hosts[1][1], hosts)


def test_retire_removes_the_host_with_its_state_then_updates_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from weave_node_deploy import cli as rollout

    inv = tmp_path / "inv.py"
    hosts = ", ".join(f"('node{i}', {{'weave_address': '198.18.0.{i}'}})" for i in range(1, 5))
    inv.write_text(f"nodes = [{hosts}]\n")
    steps: list[tuple[str | None, bool, dict[str, str]]] = []

    def step(args: argparse.Namespace, data: dict[str, str]) -> int:
        steps.append((args.limit, args.remove, data))
        return 0

    monkeypatch.setattr(rollout, "_step", step)
    base = {"engine": "pyinfra", "inventory": str(inv), "limit": None, "remove": False, "keep_artifacts": False}
    args = argparse.Namespace(**base, retire="node3,node4", data=["weave_mtu=1400"])
    assert rollout.run(args) == 0
    assert steps == [  # one removal at a time: no hand-over to a host that is leaving too
        ("node3", True, {"weave_mtu": "1400", "weave_remove_state": "true"}),
        ("node4", True, {"weave_mtu": "1400", "weave_remove_state": "true"}),
        ("node1,node2", False, {"weave_mtu": "1400", "weave_retired": '["node3", "node4"]'}),
    ]
    assert "take node3, node4 out of" in capsys.readouterr().out
    steps.clear()
    for retire, extra, message in [
        ("node9", {}, "--retire node9: not in"),
        ("node3", {"limit": "node1"}, "neither --remove nor --limit"),
        ("node1,node2,node3,node4", {}, "would leave no host"),
    ]:
        bad = argparse.Namespace(**{**base, **extra}, retire=retire, data=[])
        assert rollout.run(bad) == 2
        assert message in capsys.readouterr().err
    assert steps == []  # nothing touched


def test_versions_are_read_from_the_router_and_the_wheel() -> None:
    from weave_node_deploy import versions

    assert versions.parse("weave-node 0.2.0\n") == (0, 2, 0) and versions.parse("") is None
    assert versions.wheel_version("weave_node-0.10.1-py3-none-any.whl") == (0, 10, 1)
    assert versions.downgrade("n", "weave-node 0.10.0", "weave_node-0.9.9-py3-none-any.whl", False)
    assert versions.downgrade("n", "weave-node 0.10.0", "weave_node-0.9.9-py3-none-any.whl", True) is None
    assert versions.downgrade("n", "weave-node 0.9.9", "weave_node-0.10.0-py3-none-any.whl", False) is None


def test_a_wheelhouse_without_our_wheel_stops_the_run_before_any_host_is_touched(tmp_path: Path) -> None:
    """Upgrading to a version whose wheel is missing: a clear error at validation."""
    hosts = _hosts()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "SHA256SUMS").write_text("")
    for where, message in [
        (tmp_path / "missing", "No such file or directory"),
        (empty, "has 0 weave_node wheels: it needs exactly one weave_node wheel and SHA256SUMS"),
    ]:
        with pytest.raises(InvalidData, match=f"node2: weave_wheelhouse {where}"):
            settings.effective("node2", {**hosts[1][1], "weave_wheelhouse": str(where)}, hosts)
        with pytest.raises(InvalidData, match=message):
            settings.effective("node2", {**hosts[1][1], "weave_wheelhouse": str(where)}, hosts)
    (empty / "weave_node-0.3.0-py3-none-any.whl").write_bytes(b"")
    settings.effective("node2", {**hosts[1][1], "weave_wheelhouse": str(empty)}, hosts)  # now it is one
