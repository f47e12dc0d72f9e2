"""The wheelhouse: our wheel and every dependency's, built once on the control machine, so hosts install offline
(air-gapped hosts work; lab hosts have no route to a package index).

Our wheel comes from where this package runs: from a checkout (an editable install, or the source tree on the
path) it is built from the sources; from an installed wheel (`pip install 'weave-node[rollout]'` in your own
project) it is packed again from the installed distribution's files. Either way hosts get the router's part of it
(`for_hosts`: weave_node and its metadata, without the rollout package and the readme, so editing those restarts
no router) as a *canonical* wheel (`canonical_wheel`: entries sorted, stored uncompressed, fixed timestamps and
modes, RECORD rewritten): the same router files and metadata give the same bytes whichever way they came, so a
rollout from the package after one from the checkout it was built from changes nothing. The dependencies are
`pip wheel`'s (from pip's cache or index, resolved when the wheelhouse is built; `weave_wheelhouse` names a
wheelhouse of your own for hosts with no index at all, or pinned versions).

Cached by what goes into our wheel; a second run reuses the same wheels. No weave_node import (deploys talk to
hosts only through pyinfra or Ansible).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
import zipfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path

DIST = "weave-node"
CHECKOUT = Path(__file__).resolve().parent.parent
_in_process = threading.Lock()
# The .dist-info entries hosts get (an allowlist: installers add files of their own, some with timestamps).
_METADATA_KEPT = ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt")
_METADATA_DIRS = ("licenses/", "sboms/")
ROLLOUT_PACKAGE = "weave_node_deploy"


def cache_dir() -> Path:
    """WEAVE_NODE_WHEELHOUSE_CACHE, or /var/cache/weave-node-deploy for root, ~/.cache/weave-node-deploy else."""
    if os.environ.get("WEAVE_NODE_WHEELHOUSE_CACHE"):
        return Path(os.environ["WEAVE_NODE_WHEELHOUSE_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/weave-node-deploy")
    return Path.home() / ".cache" / "weave-node-deploy"


def source_tree() -> Path | None:
    """The checkout this package runs from, or None when it runs from an installed wheel."""
    try:
        project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return CHECKOUT if project == DIST and (CHECKOUT / "weave_node" / "__init__.py").is_file() else None


def source_files(tree: Path) -> list[Path]:
    """What the hosts' wheel is made of: the router's package, the project's metadata and its build (setup.py
    compiles the CNI plugin into the wheel)."""
    files = [tree / "pyproject.toml", tree / "setup.py"]
    files += [p for p in (tree / "weave_node").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted(p for p in files if p.is_file())


def copy_sources(tree: Path, dest: Path) -> Path:
    """A copy of the tree to build from (pip builds in-tree: two builds of one checkout would share build/, and a
    stale build/ brings deleted files back). Caches and tools' state stay out (a cache written while we copy,
    mypy's sqlite WAL, would fail it)."""
    ignore = shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", ".molecule"
    )
    shutil.copytree(tree, dest, ignore=ignore)
    return dest


def source_hash(tree: Path) -> str:
    h = hashlib.sha256()
    for path in source_files(tree):
        h.update(str(path.relative_to(tree)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build() -> Path:
    """The directory of wheels (built if missing); atomic, safe to call concurrently."""
    tree = source_tree()
    if tree is not None:
        key, ours = f"src-{source_hash(tree)}", None
    else:
        name, data = installed_wheel()
        key, ours = f"dist-{hashlib.sha256(data).hexdigest()[:16]}", (name, data)
    cache = cache_dir()
    target = cache / f"wheelhouse-{key}"
    if (target / "SHA256SUMS").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache):
        if (target / "SHA256SUMS").exists():
            return target
        return _build(target, tree, ours)


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Hosts of one run ask at once: Ansible's forks (processes: the file lock) and pyinfra's greenlets (one
    process: the in-process lock first, which gevent makes cooperative; a blocking flock would stall them all)."""
    with _in_process, (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(target: Path, tree: Path | None, ours: tuple[str, bytes] | None) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".wheelhouse-"))
    try:
        wheels = tmp / "wheels"
        if tree is not None:
            src = copy_sources(tree, tmp / "src")
            _pip_wheel(wheels, f"{src}[router]")
            built = our_wheel(wheels)
            name, data = built.name, canonical_wheel(for_hosts(wheel_files(built.read_bytes())))
            built.unlink()
            (wheels / name).write_bytes(data)
        else:
            assert ours is not None  # noqa: S101 - build() passes one or the other
            name, data = ours
            (tmp / name).write_bytes(data)
            _pip_wheel(wheels, f"{tmp / name}[router]")  # pip copies ours as it is, and fetches what it needs
        sums = "".join(
            f"{hashlib.sha256(w.read_bytes()).hexdigest()}  {w.name}\n" for w in sorted(wheels.glob("*.whl"))
        )
        (wheels / "SHA256SUMS").write_text(sums)
        with contextlib.suppress(OSError):  # another run finished first: use its wheels
            os.replace(wheels, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _pip_wheel(wheels: Path, requirement: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-qq", "--wheel-dir", str(wheels), requirement],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    if out.returncode != 0:
        raise RuntimeError(f"building the wheelhouse failed: {out.stderr.strip()[-2000:]}")


def our_wheel(wheelhouse: Path) -> Path:
    found = sorted(wheelhouse.glob("weave_node-*.whl"))
    if len(found) != 1:
        raise RuntimeError(f"expected one weave_node wheel in {wheelhouse}, found {len(found)}")
    return found[0]


# -- canonical wheels ------------------------------------------------------------------------------------------


def wheel_files(data: bytes) -> dict[str, bytes]:
    """A wheel's entries (its RECORD and signatures left out: canonical_wheel writes RECORD again)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {
            i.filename: zf.read(i)
            for i in zf.infolist()
            if not i.is_dir() and not i.filename.endswith((".dist-info/RECORD", ".dist-info/RECORD.jws"))
        }


def for_hosts(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The entries of our wheel that hosts get: the router's package and the metadata pip needs, without the
    rollout package (control-machine code), METADATA's description (the readme) and WHEEL's Generator line (the
    build tool's version), and without any file an installer added to an installed .dist-info."""
    out = {}
    for name, content in files.items():
        top, _, rest = name.partition("/")
        if top == ROLLOUT_PACKAGE:
            continue
        if top.endswith(".dist-info"):
            if rest not in _METADATA_KEPT and not rest.startswith(_METADATA_DIRS):
                continue
            out[name] = _host_metadata(rest, content)
        else:
            out[name] = content
    return out


def _host_metadata(name: str, content: bytes) -> bytes:
    lines = content.splitlines(keepends=True)
    if name == "METADATA":
        return content.split(b"\n\n", 1)[0] + b"\n"  # the headers; the body is the readme
    if name == "WHEEL":
        return b"".join(x for x in lines if not x.startswith(b"Generator:"))
    if name == "top_level.txt":
        return b"".join(x for x in lines if x.strip() != ROLLOUT_PACKAGE.encode())
    return content


def canonical_wheel(files: Mapping[str, bytes]) -> bytes:
    """The wheel of these entries, byte for byte the same for the same entries: sorted (the .dist-info last, its
    RECORD at the very end), stored (no compressor's version in the bytes), 1980-01-01 timestamps, mode 0644."""
    dist_info = {name.split("/", 1)[0] for name in files if name.split("/", 1)[0].endswith(".dist-info")}
    if len(dist_info) != 1:
        raise ValueError(f"a wheel has one .dist-info directory, not {sorted(dist_info) or 'none'}")
    (info,) = dist_info
    order = sorted(files, key=lambda n: (n.startswith(f"{info}/"), n))
    record = "".join(f"{n},sha256={_digest(files[n])},{len(files[n])}\n" for n in order) + f"{info}/RECORD,,\n"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, content in [*((n, files[n]) for n in order), (f"{info}/RECORD", record.encode())]:
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o100644 << 16
            entry.compress_type = zipfile.ZIP_STORED
            zf.writestr(entry, content)
    return out.getvalue()


def _digest(content: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()


def installed_wheel(dist: str = DIST) -> tuple[str, bytes]:
    """(file name, bytes) of the hosts' canonical wheel, packed again from the installed distribution's files."""
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"{dist} is neither installed nor run from a checkout: no wheel for the hosts") from None
    direct = d.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        raise RuntimeError(f"{dist} is an editable install outside its checkout: run from the checkout")
    files = {}
    for f in d.files or []:
        parts = f.parts
        if parts[0] == ".." or "__pycache__" in parts or f.suffix == ".pyc":
            continue  # scripts pip wrote into bin/, and byte code: not the wheel's
        files[f.as_posix()] = Path(str(f.locate())).read_bytes()
    tag = next(
        (
            line.split(":", 1)[1].strip()
            for line in (d.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")
        ),
        "py3-none-any",
    )
    name = f"{d.metadata['Name'].replace('-', '_').lower()}-{d.version}-{tag}.whl"
    return name, canonical_wheel(for_hosts(files))


if __name__ == "__main__":
    print(build())  # noqa: T201 - the wheelhouse's path, for scripts
