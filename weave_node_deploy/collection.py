"""The Ansible collection `weave_node.rollout`: the weave_node role, its action plugins and the playbooks, built with
`ansible-galaxy collection build` from this package's own files (one source for the role in a checkout, in the
installed package and in the collection)::

    python -m weave_node_deploy.collection --output-path dist/     # dist/weave_node-rollout-<version>.tar.gz
    ansible-galaxy collection install dist/weave_node-rollout-<version>.tar.gz -p ./collections

Then `roles: [weave_node.rollout.weave_node]` in your playbook (or `ansible-playbook weave_node.rollout.site`). The
role's action plugins run on the control machine and use this package (settings, validation, the wheelhouse and the
templates): the collection needs `pip install 'weave-node[rollout]'` of the same version in the Python that runs
Ansible, and says so when it is missing (compat.collection_problem). Same version for the wheel, the collection,
the image and `weave-node --version` (facts.VERSION).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from weave_node_deploy import compat, paths
from weave_node_deploy.facts import VERSION

NAMESPACE, NAME, ROLE = "weave_node", "rollout", "weave_node"
FQCN = f"{NAMESPACE}.{NAME}"


def galaxy() -> dict[str, Any]:
    """galaxy.yml."""
    return {
        "namespace": NAMESPACE,
        "name": NAME,
        "version": VERSION,
        "readme": "README.md",
        "authors": ["weave-node"],
        "description": "Roll weave-node (mesh, CRDT IPAM, VXLAN datapath, CNI plugin) out onto bare Debian hosts.",
        "license": ["Apache-2.0"],
        "tags": ["networking", "cni", "kubernetes", "weave"],
        "dependencies": {},
        "build_ignore": ["**/__pycache__", "*.pyc"],
    }


def runtime() -> dict[str, Any]:
    """meta/runtime.yml: the ansible-core the role needs (compat.ANSIBLE; its first task checks it too)."""
    return {"requires_ansible": f">={'.'.join(map(str, compat.ANSIBLE))}"}


README = f"""# {FQCN}

The weave-node rollout as an Ansible collection: the `{FQCN}.{ROLE}` role (the same tasks, variables and
templates as the role in weave-node's repository) and the playbooks `{FQCN}.site` and `{FQCN}.remove`.

Requirements on the control machine, in the Python that runs Ansible: `pip install 'weave-node[rollout]=={VERSION}'`
(the role's settings, validation and wheelhouse are that package's code) and ansible-core
{runtime()["requires_ansible"]}.

```yaml
- hosts: all
  gather_facts: false
  any_errors_fatal: true
  roles:
    - {FQCN}.{ROLE}
```

Settings are `weave_*` inventory variables: weave-node's docs/configuration.md.
"""


def assemble(dest: Path) -> Path:
    """The collection's tree under dest (new), ready for `ansible-galaxy collection build`."""
    source = paths.ANSIBLE
    role = source / "roles" / ROLE
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "action_plugins", "library")
    shutil.copytree(role, dest / "roles" / ROLE, ignore=ignore)
    # Roles in a collection carry no plugins of their own: the action plugins go to the collection's plugins/action,
    # the modules to plugins/modules (the role's tasks find them there by their short names: a collection's own
    # plugins come first).
    for where, kind in (("action_plugins", "action"), ("library", "modules")):
        (dest / "plugins" / kind).mkdir(parents=True)
        for plugin in sorted((role / where).glob("*.py")):
            shutil.copy2(plugin, dest / "plugins" / kind / plugin.name)
    (dest / "playbooks").mkdir()
    for playbook in ("site.yml", "remove.yml"):
        text = (source / playbook).read_text()
        (dest / "playbooks" / playbook).write_text(text.replace(f"    - {ROLE}\n", f"    - {FQCN}.{ROLE}\n"))
    (dest / "meta").mkdir()
    (dest / "meta" / "runtime.yml").write_text(yaml.safe_dump(runtime(), sort_keys=False))
    (dest / "galaxy.yml").write_text(yaml.safe_dump(galaxy(), sort_keys=False))
    (dest / "README.md").write_text(README)
    return dest


def build(output_path: Path, ansible_galaxy: str | None = None) -> Path:
    """Build the collection tarball into output_path; its path."""
    tool = ansible_galaxy or str(Path(sys.executable).parent / "ansible-galaxy")
    if not Path(tool).exists():
        tool = shutil.which("ansible-galaxy") or tool
    output_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="weave-node-collection-") as tmp:
        tree = assemble(Path(tmp) / FQCN)
        out = subprocess.run(
            [tool, "collection", "build", "--force", "--output-path", str(output_path), str(tree)],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        raise RuntimeError(f"ansible-galaxy collection build failed: {(out.stderr or out.stdout).strip()[-2000:]}")
    return output_path / f"{NAMESPACE}-{NAME}-{VERSION}.tar.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weave_node_deploy.collection", description=__doc__.split("::")[0])
    parser.add_argument("--output-path", default="dist", type=Path, help="where the tarball goes (default: dist)")
    args = parser.parse_args(argv)
    try:
        print(build(args.output_path))  # noqa: T201 - the tarball's path, for scripts
    except (OSError, RuntimeError) as exc:
        print(f"weave_node_deploy.collection: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
