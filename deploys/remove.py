"""Entry deploy: remove weave-node from every host of the inventory (state kept unless asked).

pyinfra -y inventory/lab.py deploys/remove.py [--data weave_remove_state=true]
"""

from deploys.tasks.weave_node import removal_settings, remove

remove(remove_state=removal_settings()["weave_remove_state"])
