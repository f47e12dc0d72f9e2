"""The Vagrantfile's 3 VMs (`vagrant up` first). Not used by the tests: the lab is the tested path."""

nodes = (
    [
        (
            f"192.168.56.{10 + i}",
            {
                "weave_address": f"192.168.56.{10 + i}",
                "ssh_key": f".vagrant/machines/node{i}/virtualbox/private_key",
            },
        )
        for i in range(1, 4)
    ],
    # Fresh local VMs: their host keys are new at every `vagrant up` (do not do this for real hosts).
    {"ssh_user": "root", "ssh_strict_host_key_checking": "accept-new"},
)
