"""Entry deploy: remove weave-node from every host of the inventory (state kept unless asked).

pyinfra -y inventory/lab.py deploys/remove.py [--data weave_remove_state=true]
"""

from weave_node_deploy import removal

removal()
