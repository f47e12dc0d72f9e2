"""The runtime archive: what a host installs, as one file. The router's installed tree (our wheel and its `router`
dependencies from the wheelhouse, installed on the control machine with `pip install --target` and byte-compiled
with hash-checked .pyc files), the `weave-node` command and the installed marker, in one tar.gz per wheelhouse and
Python version, cached beside the wheelhouse.

A host unpacks it into a virtualenv made without ensurepip (`install_script`): no pip run, no resolver and no
compiling on the host, one upload instead of one per wheel (the venv still has a pip, copied from the control
machine's, for an older rollout that rolls a host back, or an operator). This is what makes a 20-host rollout on
2 cores scale (docs/benchmarks.md "A rollout that scales"). The archive holds compiled dependencies for the
control machine's Python (as the wheelhouse always did): a host whose python3 is another X.Y is refused with both
versions named, before its installation is touched.

The same script is run by both engines (pyinfra: tasks/weave_node.py; Ansible: the `weave_node_runtime` action and
roles/weave_node/tasks/router.yml). No weave_node import.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

from weave_node_deploy import wheelhouse

ARCHIVE = "weave-node-runtime.tar.gz"  # its name on the host, in <prefix>, until it is installed
MARKER = ".weave-node-wheels"  # <prefix>/venv/<MARKER>: the wheelhouse's SHA256SUMS it was installed from
FORMAT = "2"  # of the archive's layout: part of its cache key
# The console script, relocatable (the venv is built as venv.new, then renamed): sh runs the line that execs the
# venv's python on this file; Python reads that line as a string literal (pip uses the same trick).
COMMAND = (
    "#!/bin/sh\n"
    '\'\'\'exec\' "$(dirname -- "$(readlink -f -- "$0")")/python" "$0" "$@"\n'
    "' '''\n"
    "import sys\n\n"
    "from weave_node.cli import main\n\n"
    "sys.exit(main())\n"
)
PIP = COMMAND.replace("from weave_node.cli import main", "from pip._internal.cli.main import main")


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def build(wheels: Path) -> Path:
    """The archive for this wheelhouse (built if missing; atomic, safe to call concurrently)."""
    sums = (wheels / "SHA256SUMS").read_bytes()
    key = hashlib.sha256(sums + f"\0{python_version()}\0{FORMAT}".encode()).hexdigest()[:16]
    cache = wheelhouse.cache_dir()
    target = cache / f"runtime-{key}.tar.gz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with wheelhouse.cache_lock(cache):
        if not target.exists():
            _build(wheels, sums, target)
    return target


def _build(wheels: Path, sums: bytes, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".runtime-"))
    try:
        root = tmp / "root"
        site = root / "lib" / f"python{python_version()}" / "site-packages"
        ours = wheelhouse.our_wheel(wheels)
        _run(
            [sys.executable, "-m", "pip", "install", "-qq", "--disable-pip-version-check", "--no-index",
             "--find-links", str(wheels), "--target", str(site), "--no-compile", f"{ours}[router]"],
            "installing the wheelhouse",
        )  # fmt: skip
        shutil.rmtree(site / "bin", ignore_errors=True)  # pip's scripts for the target: ours is COMMAND
        _copy_pip(site)
        # Hash-checked byte code: valid whatever the files' times on the host; the router's unit makes /opt
        # read-only, so nothing could write it there.
        _run(
            [sys.executable, "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash", str(site)],
            "byte-compiling the runtime",
        )
        (root / "bin").mkdir()
        for name, text in (("weave-node", COMMAND), ("pip", PIP)):
            (root / "bin" / name).write_text(text)
            (root / "bin" / name).chmod(0o755)
        (root / MARKER).write_bytes(sums)
        staged = tmp / "runtime.tar.gz"
        with tarfile.open(staged, "w:gz", compresslevel=6) as tar:
            for path in sorted(root.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=_owned_by_root)
        (tmp / "runtime.tar.gz.sha256").write_text(sha256(staged))
        os.replace(tmp / "runtime.tar.gz.sha256", f"{target}.sha256")
        os.replace(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _copy_pip(site: Path) -> None:
    """This Python's pip, as installed (a venv made by `python3 -m venv` has one: an older rollout, or an operator,
    runs <prefix>/venv/bin/pip; copying it costs hosts nothing, where ensurepip would cost seconds each)."""
    dist = metadata.distribution("pip")
    for entry in dist.files or []:
        if entry.parts[0] == ".." or "__pycache__" in entry.parts:
            continue  # its console scripts (ours is PIP) and byte code (compiled below)
        dest = site / entry
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(str(entry.locate())), dest)


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def _run(argv: list[str], what: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed: {(out.stderr or out.stdout).strip()[-2000:]}")


def sha256(archive: Path) -> str:
    """The archive's SHA-256 (from the file written beside it when it was built)."""
    known = Path(f"{archive}.sha256")
    if known.exists():
        return known.read_text().strip()
    return hashlib.sha256(archive.read_bytes()).hexdigest()


# What the new venv must import before it replaces the old one: the compiled dependencies (built for the control
# machine's CPU and C library) and the plugin binary for this host's architecture.
_SMOKE = (
    "import aiohttp, nacl.bindings, pyroute2, weave_node.cli; from weave_node.cni import gobuild; "
    "assert gobuild.packaged().is_file(), 'no weave-net plugin for ' + gobuild.goarch()"
)


def install_script(prefix: str, digest: str, python: str | None = None, machine: str | None = None) -> str:
    """What a host runs once the archive is in <prefix>: check, unpack into a new venv, prove it imports, swap it
    in (a failure at any step leaves the installed venv as it was; a run cut off between the two renames is
    repaired by the next), remove the archive and an older install's wheels."""
    want, arch = python or python_version(), machine or platform.machine()
    return "\n".join(
        [
            "set -eu",
            f"cd {shlex.quote(prefix)}",
            "if [ ! -e venv ] && [ -d venv.old ]; then mv venv.old venv; fi",  # an earlier run cut off mid-swap
            "have=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' 2>/dev/null || echo none)",
            f'if [ "$have" != {want} ] || [ "$(uname -m)" != {arch} ]; then',
            f"  echo \"weave-node: the runtime archive is built for Python {want} on {arch} (the control machine's),"
            ' and this host has python3 $have on $(uname -m): roll out from a control machine like it" >&2',
            "  exit 1",
            "fi",
            f"echo '{digest}  {ARCHIVE}' | sha256sum --quiet -c",
            "rm -rf venv.new",
            "python3 -m venv --without-pip venv.new",
            f"tar -xzf {ARCHIVE} -C venv.new --no-same-owner",
            f'venv.new/bin/python -c "{_SMOKE}"',  # it imports, before it replaces anything
            "venv.new/bin/weave-node --version >/dev/null",
            "rm -rf venv.old",
            "if [ -e venv ]; then mv venv venv.old; fi",
            "mv venv.new venv",
            f"rm -rf venv.old wheels {ARCHIVE}",
        ]
    )


if __name__ == "__main__":
    built = build(Path(sys.argv[1]) if len(sys.argv) > 1 else wheelhouse.build())
    print(built, sha256(built))  # noqa: T201 - for scripts
