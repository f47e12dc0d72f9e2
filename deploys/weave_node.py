"""Entry deploy: roll weave-node out onto every host of the inventory.

pyinfra -y inventory/lab.py deploys/weave_node.py

Settings are host/group data named weave_* (deploys/tasks/weave_node.py: DEFAULTS); they are validated for
every host before any host is touched.
"""

from deploys.tasks.weave_node import rollout

rollout()
