"""Entry deploy: remove weave-node from every host of the inventory (state kept unless asked).

pyinfra -y inventory/lab.py deploys/remove.py [--data weave_remove_state=true]
"""

from pyinfra import host

from deploys.tasks.weave_node import remove

remove(remove_state=str(host.data.get("weave_remove_state", "")).lower() in ("1", "true", "yes"))
