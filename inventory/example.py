"""An inventory for your own hosts: copy it, put in your hosts and addresses, then

    pyinfra -y inventory/mine.py deploys/weave_node.py

Each host needs `weave_address`: the IP address the other hosts reach it at (the router's peers and VXLAN
endpoint). Every other `weave_*` setting is optional (weave_node_deploy/tasks/weave_node.py: DEFAULTS; docs/rollout.md).
"""

# A group is (hosts, data for every host of the group).
nodes = (
    [
        ("node-a.example.internal", {"weave_address": "10.0.0.11"}),
        ("node-b.example.internal", {"weave_address": "10.0.0.12"}),
        ("node-c.example.internal", {"weave_address": "10.0.0.13", "weave_kube_control_plane": True}),
    ],
    {
        "ssh_user": "root",
        "weave_ipalloc_range": "10.32.0.0/12",
        # "weave_password_file": "secrets/weave-password",  # a 0600 file here, on the control machine
        # "weave_mtu": 1376,                    # when the path between hosts is smaller than eth0's
        # "weave_kubernetes": True,             # apply the DaemonSet once the API server is up
    },
)
