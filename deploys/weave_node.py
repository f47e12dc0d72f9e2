"""Entry deploy: roll weave-node out onto every host of the inventory. Your own deploy file can be this one:

    pyinfra -y inventory/lab.py deploys/weave_node.py     (or: pyinfra -y inventory/lab.py weave_node_deploy.rollout)

Settings are host/group data named weave_* (docs/configuration.md); they are validated for every host before any
host is touched.
"""

from weave_node_deploy import rollout

rollout()
