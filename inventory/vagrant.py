"""The Vagrantfile's 3 VMs (`vagrant up` first). Not used by the tests: the lab is the tested path."""

nodes = (
    [(f"192.168.56.{10 + i}", {"weave_address": f"192.168.56.{10 + i}"}) for i in range(1, 4)],
    {
        "ssh_user": "root",
        "ssh_key": ".vagrant/machines/node1/virtualbox/private_key",
        "ssh_known_hosts_file": "/dev/null",
    },
)
