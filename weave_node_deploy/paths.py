"""Where the deploys' own files are: in the package, whether it runs from a checkout or from an installed wheel."""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
"""The shared Jinja2 templates (one set, used by pyinfra and Ansible alike)."""
ANSIBLE = PACKAGE / "ansible"
"""The Ansible playbooks and the weave_node role (also built into the collection: weave_node_deploy.collection)."""
