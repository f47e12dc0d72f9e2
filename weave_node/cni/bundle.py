"""The plugin as the runtime execs it: one standard-library file (`#!python -SI`, no site packages, no venv).

`cni/plugin.py` imports the facts it shares with the router from `weave_node.core` (one home each); lines marked
`# inlined` are replaced here by those modules' code, so the installed file needs nothing but the interpreter.
Every installer (the CLI, hence the rollout's pyinfra and Ansible paths and the DaemonSet's init container) writes
what `script()` returns.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

DEFAULT_PYTHON = "/usr/bin/python3"
_INLINE = re.compile(r"^from (weave_node\.core\.\w+) import [\w, ]+  # inlined$")


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{module} is not installed")
    return Path(spec.origin).read_text()


def _body(source: str) -> str:
    """A module's code without its docstring and its `from __future__` line (the plugin has its own)."""
    first = ast.parse(source).body[:1]
    docstring = bool(first) and isinstance(first[0], ast.Expr) and isinstance(first[0].value, ast.Constant)
    end = (first[0].end_lineno or 0) if docstring else 0
    lines = source.splitlines(keepends=True)[end:]
    return "".join(line for line in lines if line.strip() != "from __future__ import annotations").strip()


def _refuse_imports(code: str, where: str) -> None:
    """Any import of weave_node left in the file (at any indentation) would fail under `-SI`."""
    for line in code.splitlines():
        if line.strip().startswith(("from weave_node", "import weave_node")) and not _INLINE.match(line):
            raise RuntimeError(f"{where} imports weave_node without `# inlined`: {line.strip()}")


def script(python: str = DEFAULT_PYTHON) -> str:
    out = []
    for line in _source("weave_node.cni.plugin").splitlines(keepends=True):
        match = _INLINE.match(line.rstrip("\n"))
        if match:
            body = _body(_source(match.group(1)))
            _refuse_imports(body, match.group(1))  # an inlined module must stand alone too
            out.append(f"# --- {match.group(1)} (inlined) ---\n{body}\n# ---\n")
        else:
            _refuse_imports(line, "the plugin")
            out.append(line)
    return f"#!{python} -SI\n" + "".join(out)  # one argument on a #! line: -SI, not "-S -I"
