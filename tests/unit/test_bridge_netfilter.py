"""Whether bridged pod traffic goes through iptables (overlay.netfilter), decided from what the host shows."""

from __future__ import annotations

import pytest

from weave_node.config import from_env_and_flags
from weave_node.core.errors import ConfigError
from weave_node.datapath.model import BRIDGE, Bridge, Desired, Link, Observed
from weave_node.overlay.desired import SYSCTL_BRIDGE_NF, SYSCTL_FORWARD, with_bridge_nf
from weave_node.overlay.netfilter import decide

KEY = SYSCTL_BRIDGE_NF


def host(*bridges: str, chains: tuple[str, ...] = (), loaded: bool = True) -> Observed:
    links = {name: Link(name, "bridge") for name in (BRIDGE, *bridges)}
    links["eth0"] = Link("eth0", "veth")
    return Observed(
        links=links,
        sysctls={KEY: "1"} if loaded else {},
        iptables={"filter": {"FORWARD": ()}, "nat": {c: () for c in chains}},
    )


@pytest.mark.parametrize(
    ("observed", "kubelet", "value", "why"),
    [
        (host(), False, "0", "nothing but weave-node"),
        (host(), True, "1", "kubelet"),
        (host(chains=("KUBE-SERVICES",)), False, "1", "kube-proxy"),
        (host("docker0"), False, "1", "docker0"),  # (also a 0 we set before docker0 came: back to the default)
        (host("virbr0", chains=("KUBE-SERVICES",)), False, "1", "kube-proxy"),
        (host(chains=("DOCKER",)), False, "1", "Docker"),
        (host(loaded=False), True, None, "not loaded"),
    ],
)
def test_auto_turns_it_off_only_where_nothing_else_can_need_it(
    observed: Observed, kubelet: bool, value: str | None, why: str
) -> None:
    decision = decide("auto", observed, KEY, kubelet=kubelet)
    assert decision.value == value and why in decision.reason


def test_on_and_off_are_the_operators_call_but_cannot_load_the_module() -> None:
    assert decide("on", host("docker0"), KEY, kubelet=False).value == "1"
    assert decide("off", host(chains=("KUBE-SERVICES",)), KEY, kubelet=True).value == "0"
    assert decide("off", host(loaded=False), KEY, kubelet=False).value is None
    with pytest.raises(ValueError, match="auto, on, off"):
        decide("maybe", host(), KEY, kubelet=False)


def test_the_decision_lands_in_the_desired_sysctls_and_none_leaves_them_alone() -> None:
    desired = Desired(bridge=Bridge(), vxlan=None, sysctls=((SYSCTL_FORWARD, "1"), (KEY, "1")))
    assert with_bridge_nf(desired, "0").sysctls == ((SYSCTL_FORWARD, "1"), (KEY, "0"))
    assert with_bridge_nf(desired, None).sysctls == ((SYSCTL_FORWARD, "1"),)


def test_the_router_setting_is_checked_at_the_edge() -> None:
    assert from_env_and_flags({}, {}).bridge_netfilter == "auto"
    assert from_env_and_flags({"WEAVE_BRIDGE_NETFILTER": "ON"}, {}).bridge_netfilter == "on"
    assert from_env_and_flags({"WEAVE_BRIDGE_NETFILTER": "on"}, {"bridge_netfilter": "off"}).bridge_netfilter == "off"
    with pytest.raises(ConfigError, match="WEAVE_BRIDGE_NETFILTER must be one of auto, on, off"):
        from_env_and_flags({"WEAVE_BRIDGE_NETFILTER": "yes"}, {})
