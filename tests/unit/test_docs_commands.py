"""The commands the README and docs/ show run as shown from a fresh shell: every `.venv/bin/...` and `./scripts/...`
they name exists, and every `weave-node COMMAND [SUBCOMMAND]` they show is one the CLI knows (its parser accepts
`--help` after it). The lab tests run the README's demo, test and Molecule lines themselves."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import REPO
from weave_node.cli import build_parser

DOCS = [REPO / "README.md", REPO / "molecule" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
UNIT_WORDS = {"-u", "--unit", "start", "stop", "restart", "reload", "status", "enable", "disable", "is-active", "cat"}
BLOCK = re.compile(r"^```(?:sh|bash|console)\n(.*?)^```", re.M | re.S)


def commands() -> list[tuple[str, str]]:
    """(document, command line) for every line of every sh block (comments, prompts and continuations joined)."""
    out = []
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text()):
            text = re.sub(r"\\\n\s*", " ", block)
            for raw in text.splitlines():
                line = raw.split(" #", 1)[0].strip().removeprefix("$ ").removeprefix("# ")
                if line and not line.startswith("#"):
                    out.append((str(doc.relative_to(REPO)), line))
    return out


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line.replace("(", " ").replace(")", " "))
    except ValueError:
        return line.split()


def test_every_venv_tool_and_script_the_docs_name_exists() -> None:
    missing = []
    for doc, line in commands():
        for word in _words(line):
            if word.startswith((".venv/bin/", "./scripts/")) and not (REPO / word).exists():
                missing.append(f"{doc}: {word} ({line})")
    assert not missing, "\n".join(missing)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_weave_node_command_the_docs_show_is_one_the_cli_knows() -> None:
    unknown = []
    top = _subcommands(build_parser())
    for doc, line in commands():
        words = _words(line)
        for i, word in enumerate(words):
            if Path(word).name != "weave-node" or i + 1 >= len(words) or words[i + 1].startswith(("-", "<", "[")):
                continue
            if i and words[i - 1] in UNIT_WORDS:  # the unit's name (journalctl -u weave-node, systemctl ...)
                continue
            name = words[i + 1]
            if name not in top:
                unknown.append(f"{doc}: weave-node {name} ({line})")
                continue
            nested = _subcommands(top[name])
            sub = words[i + 2] if i + 2 < len(words) else "-"
            if nested and not sub.startswith(("-", "<", "[")) and sub not in nested:
                unknown.append(f"{doc}: weave-node {name} {words[i + 2]} ({line})")
    assert not unknown, "\n".join(unknown)


@pytest.mark.parametrize("doc", ["README.md"])
def test_the_readme_shows_no_venv_tool_that_needs_an_activated_venv_bare(doc: str) -> None:
    """molecule finds Ansible's tools on PATH: `.venv/bin/molecule` alone fails from a fresh shell."""
    for _, line in [c for c in commands() if c[0] == doc]:
        assert not re.search(r"(^|\s)\.venv/bin/molecule\b", line), line
