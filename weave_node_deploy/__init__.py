"""weave-node's packaged deploys for pyinfra (and the Ansible role's shared code). Never imports weave_node: hosts
are reached only through pyinfra or Ansible.

In your own deploy file (``pip install 'weave-node[rollout]'``, settings as ``weave_*`` host/group data)::

    from weave_node_deploy import rollout

    rollout()

or without one: ``pyinfra inventory.py weave_node_deploy.rollout`` (``weave_node_deploy.removal`` takes it away).
The smaller deploys (``prerequisites``, ``router``, ``config``, ``service``, ``cni``, ``kubernetes``,
``remove``) are here too; docs/rollout.md. Importing this package needs no pyinfra; the deploys do, of a supported
version (compat.py says which, clearly, when it is not).
"""

from __future__ import annotations

from typing import Any

from weave_node_deploy.facts import VERSION

__version__ = VERSION
DEPLOYS = ("rollout", "removal", "remove", "prerequisites", "router", "config", "service", "cni", "kubernetes")
__all__ = [
    "DEPLOYS",
    "VERSION",
    "__version__",
    "cni",
    "config",
    "kubernetes",
    "prerequisites",
    "removal",
    "remove",
    "rollout",
    "router",
    "service",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    # Lazy: the Ansible role's action plugins and `weave-node rollout` import this package without pyinfra's deploy
    # machinery (and pyinfra's CLI finds `weave_node_deploy.rollout` through this too).
    if name in DEPLOYS:
        from weave_node_deploy.tasks import weave_node

        return getattr(weave_node, name)
    raise AttributeError(f"module 'weave_node_deploy' has no attribute {name!r}")
