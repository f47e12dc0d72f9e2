"""The wheelhouse: our wheel and every dependency's, built once per run on the control machine, so hosts install
offline (air-gapped hosts work; lab hosts have no route to a package index).

Cached by the hash of the project's sources: a second run reuses the same wheels (and the hosts see the same
checksums: nothing changes). No weave_node import (deploys talk to hosts only through pyinfra).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("WEAVE_NODE_WHEELHOUSE_CACHE", "/var/cache/weave-node-deploy"))
_in_process = threading.Lock()


def source_hash() -> str:
    h = hashlib.sha256()
    files = sorted(
        [REPO / "pyproject.toml", *(REPO / "weave_node").rglob("*.py"), *(REPO / "weave_node").rglob("py.typed")]
    )
    for path in files:
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build() -> Path:
    """The directory of wheels for this source tree (built if missing); atomic, safe to call concurrently."""
    target = CACHE / f"wheelhouse-{source_hash()}"
    if (target / "SHA256SUMS").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    # Hosts of one run ask at once: Ansible's forks (processes: the file lock) and pyinfra's greenlets (one
    # process: the in-process lock first, which gevent makes cooperative; a blocking flock would stall them all).
    with _in_process, (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "SHA256SUMS").exists():
            return target
        return _build(target)


def _build(target: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".wheelhouse-"))
    try:
        # From a copy of the sources: pip builds in-tree, and two builds of one checkout would share build/.
        src = tmp / "src"
        # Caches and tools' state stay out: a cache written while we copy (mypy's sqlite WAL) would fail the copy.
        ignore = shutil.ignore_patterns(
            ".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", ".molecule"
        )
        shutil.copytree(REPO, src, ignore=ignore)
        wheels = tmp / "wheels"
        out = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-qq", "--wheel-dir", str(wheels), f"{src}[router]"],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        if out.returncode != 0:
            raise RuntimeError(f"building the wheelhouse failed: {out.stderr.strip()[-2000:]}")
        sums = "".join(
            f"{hashlib.sha256(w.read_bytes()).hexdigest()}  {w.name}\n" for w in sorted(wheels.glob("*.whl"))
        )
        (wheels / "SHA256SUMS").write_text(sums)
        with contextlib.suppress(OSError):  # another run finished first: use its wheels
            os.replace(wheels, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def our_wheel(wheelhouse: Path) -> Path:
    found = sorted(wheelhouse.glob("weave_node-*.whl"))
    if len(found) != 1:
        raise RuntimeError(f"expected one weave_node wheel in {wheelhouse}, found {len(found)}")
    return found[0]


if __name__ == "__main__":
    print(build())  # noqa: T201 - the wheelhouse's path, for scripts
