"""The tool versions the deploys support, checked where they are first needed with a message that says what to do
(pip enforces the same ranges when it installs `weave-node[rollout]`, but a tool installed another way, or a
`--no-deps` install, can still bring one outside them)."""

from __future__ import annotations

import re
from importlib import metadata

from weave_node_deploy.facts import VERSION

PYINFRA = ((3, 2), (4,))
"""pyinfra >= 3.2, < 4 (as in pyproject.toml's rollout extra): the @deploy API and facts the deploys use."""
ANSIBLE = (2, 19)
"""ansible-core >= 2.19: its templating keeps a single expression's type, which the role relies on to render the
bytes pyinfra renders (as in the rollout extra, the role's meta/main.yml and the collection's meta/runtime.yml)."""


class UnsupportedTool(ImportError):
    """A tool the deploys need is missing or of a version outside the supported range."""


def numbers(version: str) -> tuple[int, ...]:
    """'3.10.0' -> (3, 10, 0); '2.19.0rc1' -> (2, 19, 0); leading numbers only."""
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+", maxsplit=1)[0])[:3])


def pyinfra_problem(version: str | None) -> str | None:
    """Why this pyinfra cannot run the deploys (None: it can)."""
    low, high = PYINFRA
    want = f"pyinfra >= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))}"
    if version is None:
        return f"weave_node_deploy needs {want}, and pyinfra is not installed: pip install 'weave-node[rollout]'"
    if not low <= numbers(version)[:2] < high:
        return (
            f"weave_node_deploy needs {want}, not pyinfra {version}: pip install 'weave-node[rollout]' in this "
            "environment brings a supported one"
        )
    return None


def ansible_problem(version: str) -> str | None:
    """Why this ansible-core cannot run the role (None: it can)."""
    if numbers(version)[:2] < ANSIBLE:
        want = ".".join(map(str, ANSIBLE))
        return (
            f"the weave_node role needs ansible-core >= {want} (this is {version}): pip install "
            f"'ansible-core>={want}' (or 'weave-node[rollout]', which brings it)"
        )
    return None


def check_pyinfra() -> None:
    """Raise UnsupportedTool when the installed pyinfra is missing or outside the supported range."""
    try:
        version: str | None = metadata.version("pyinfra")
    except metadata.PackageNotFoundError:
        version = None
    problem = pyinfra_problem(version)
    if problem:
        raise UnsupportedTool(problem)


def collection_problem(collection: str | None) -> str | None:
    """Why the installed collection (its version; None: the role of a checkout or of the package) cannot use this
    package: one version for both, as they are built from one tree."""
    if collection is None or collection == VERSION:
        return None
    return (
        f"the weave_node.rollout collection {collection} needs the weave-node Python package of the same version on "
        f"the control machine, and this Python has {VERSION}: pip install 'weave-node[rollout]=={collection}' "
        f"(or install the collection of version {VERSION})"
    )
