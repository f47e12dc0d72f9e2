#!/usr/bin/env python3
"""An Ansible dynamic inventory from a pyinfra inventory file (WEAVE_INVENTORY; in a checkout the default is its
inventory/lab.py): the same hosts and settings for both engines. `ansible-playbook -i inventory.py site.yml` (here).
Molecule's scenario links it. A lab that is not up gives an empty inventory and a message on stderr."""

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKOUT = (REPO / "pyproject.toml").is_file()  # else the installed package's copy: site-packages is on the path
if CHECKOUT and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from weave_node_deploy import inventory  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
        sys.exit(0)
    if not os.environ.get("WEAVE_INVENTORY") and not CHECKOUT:
        print("inventory.py: set WEAVE_INVENTORY to your pyinfra inventory file", file=sys.stderr)
        sys.exit(2)
    source = Path(os.environ.get("WEAVE_INVENTORY") or REPO / "inventory" / "lab.py")
    try:
        doc = inventory.to_script(inventory.load(source))
    except inventory.InventoryError as exc:
        print(f"weave_node_deploy/ansible/inventory.py: {exc}", file=sys.stderr)
        doc = {"_meta": {"hostvars": {}}}
    print(json.dumps(doc, indent=1))
