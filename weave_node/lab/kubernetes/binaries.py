"""Kubernetes 1.20.2 binaries for the lab, built here once per machine and cached (never committed).

No registry we reach ships Kubernetes server binaries, but Debian bookworm's `kubernetes` source package is the
complete upstream 1.20.2 tree with every dependency vendored. We build the five server binaries from it with the
machine's golang-go, offline (`unshare --net` where available), the way upstream's Makefile does; etcd and kubectl
come from Debian's own .debs, unpacked into the cache (installing them would replace the machine's kubectl and may
start an etcd service). containerd and runc .debs are fetched for the lab hosts' root filesystem.

Cache layout, under `<lab home>/cache/kubernetes-<version>-<key>/`:
    bin/        kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd kubectl
    build.json  versions, build seconds, peak memory (KiB)
A lock makes parallel callers wait for one build; a failed build leaves no cache entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from weave_node.core.errors import WeaveError
from weave_node.lab.system import stream

VERSION = "1.20.2"
SOURCE_PACKAGE = "kubernetes"
SERVER = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
DEBS = {"etcd-server": ("usr/bin/etcd",), "kubernetes-client": ("usr/bin/kubectl",)}
# What the build needs on the control machine (checked before anything is downloaded).
BUILD_TOOLS = {"go": "golang-go", "rsync": "rsync", "jq": "jq", "dpkg-source": "dpkg-dev", "make": "make"}
BUILD_VERSION = 1  # bump when the recipe changes: part of the cache key


class BuildError(WeaveError):
    pass


def cache_dir(cache: Path) -> Path:
    key = hashlib.sha256(f"{VERSION}/{BUILD_VERSION}/{'/'.join(SERVER)}".encode()).hexdigest()[:8]
    return cache / f"kubernetes-{VERSION}-{key}"


def binaries(cache: Path) -> Path | None:
    """The bin/ directory when the cache is complete, else None."""
    bin_dir = cache_dir(cache) / "bin"
    if (cache_dir(cache) / "build.json").is_file():
        return bin_dir
    return None


def ensure(cache: Path, on_line: Callable[[str], None]) -> tuple[Path, bool]:
    """(bin directory, built now). Builds under a lock into a temporary directory, then renames."""
    cache.mkdir(parents=True, exist_ok=True)
    done = binaries(cache)
    if done is not None:
        return done, False
    missing = sorted({pkg for tool, pkg in BUILD_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise BuildError(f"building Kubernetes needs: apt-get install {' '.join(missing)}")
    final = cache_dir(cache)
    with open(cache / ".kubernetes.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = binaries(cache)
        if done is not None:  # built by someone else while we waited
            return done, False
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for stale in cache.glob("weave-k8s-build-*"):  # a build killed midway (only ever used under this lock)
            shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        try:
            (partial / "bin").mkdir(parents=True)
            info = _build(partial, on_line)
            (partial / "build.json").write_text(json.dumps(info, indent=2) + "\n")
            partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return final / "bin", True


def build_info(cache: Path) -> dict[str, object]:
    path = cache_dir(cache) / "build.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _build(target: Path, on_line: Callable[[str], None]) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="weave-k8s-build-", dir=target.parent) as tmp:
        work = Path(tmp)
        apt = _private_apt(work)
        on_line("apt: reading the source and binary package lists (private lists; /etc untouched)")
        _run([*apt, "update"], work, on_line)
        src = work / "src"
        src.mkdir()
        on_line(f"apt: downloading the {SOURCE_PACKAGE} source package")
        _run([*apt, "source", "--download-only", SOURCE_PACKAGE], src, on_line)
        debs = work / "debs"
        debs.mkdir()
        _run([*apt, "download", *DEBS], debs, on_line)
        dsc = next(src.glob("*.dsc"))
        _run(["dpkg-source", "--no-check", "-x", dsc.name, "tree"], src, on_line)
        tree = src / "tree"
        # Go's build cache outlives a failed attempt (a retry takes a minute, not twelve); gone after success.
        gocache = target.parent / ".kubernetes-gocache"
        started = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        env = dict(
            os.environ,
            CGO_ENABLED="0",
            GOPROXY="off",
            GOFLAGS="-mod=vendor",
            GOCACHE=str(gocache),
            GOPATH=str(work / "gopath"),
            HOME=str(work),
        )
        make = ["make", f"WHAT={' '.join('cmd/' + s for s in SERVER)}"]
        if shutil.which("unshare") and _can_unshare_net():
            make = ["unshare", "--net", *make]  # offline: the vendored tree must be enough
        on_line(f"building {', '.join(SERVER)} {VERSION} (about 7 min on 2 cores)")
        _run(make, tree, on_line, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = round(time.monotonic() - started, 1)
        out = tree / "_output/local/bin/linux/amd64"
        if not out.is_dir():
            out = next((tree / "_output").rglob("kubelet")).parent
        for name in SERVER:
            shutil.copy2(out / name, target / "bin" / name)
        for deb, paths in DEBS.items():
            pkg = next(debs.glob(f"{deb}_*.deb"))
            unpacked = work / f"x-{deb}"
            _run(["dpkg-deb", "-x", str(pkg), str(unpacked)], work, on_line)
            for rel in paths:
                shutil.copy2(unpacked / rel, target / "bin" / Path(rel).name)
        versions = {
            name: subprocess.run(
                [str(target / "bin" / name), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip()
            for name in ("kubelet", "etcd")
        }
        shutil.rmtree(gocache, ignore_errors=True)
        return {
            "version": VERSION,
            "build_seconds": seconds,
            "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "peak_rss_kib": after.ru_maxrss,  # of the largest single process of the build (the Go linker)
            "versions": versions,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def _can_unshare_net() -> bool:
    return subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode == 0


def _private_apt(work: Path) -> list[str]:
    """apt-get with a private sources list (deb and deb-src lines from the machine's own sources, one line per
    suite) and private lists, so /etc and /var/lib/apt stay untouched."""
    lines = []
    for uri, suite, components in _machine_sources():
        for kind in ("deb", "deb-src"):
            keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
            lines.append(f"{kind} [signed-by={keyring}] {uri} {suite} {components}")
    sources = work / "sources.list"
    sources.write_text("\n".join(lines) + "\n")
    lists = work / "lists"
    (lists / "partial").mkdir(parents=True)
    archives = work / "archives"
    (archives / "partial").mkdir(parents=True)
    return [
        "apt-get",
        "-q",
        "-o",
        f"Dir::Etc::SourceList={sources}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={lists}",
        "-o",
        f"Dir::Cache::Archives={archives}",
        "-o",
        "APT::Sandbox::User=root",
    ]


def _machine_sources() -> list[tuple[str, str, str]]:
    """(uri, suite, components) for every suite in the machine's deb822 or one-line sources."""
    found: list[tuple[str, str, str]] = []
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.is_file():
        for stanza in deb822.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    found.append((uri, suite, fields.get("components", "main")))
    classic = Path("/etc/apt/sources.list")
    if not found and classic.is_file():
        for line in classic.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "deb" and not parts[1].startswith("["):
                found.append((parts[1], parts[2], " ".join(parts[3:])))
    if not found:
        raise BuildError("no Debian apt sources found in /etc/apt (debian.sources or sources.list)")
    return found


def _run(cmd: list[str], cwd: Path, on_line: Callable[[str], None], env: dict[str, str] | None = None) -> None:
    code, tail = stream(cmd, on_line, cwd=cwd, env=env, keep=30)
    if code != 0:
        shown = "\n".join(tail[-10:])
        raise BuildError(f"{' '.join(cmd[:3])}... failed (exit {code}):\n{shown}")


def main() -> int:
    """`python -m weave_node.lab.kubernetes.binaries`: build (or find) the cache and print where it is."""
    from weave_node.lab.paths import home

    with contextlib.suppress(BrokenPipeError):
        bin_dir, built = ensure(home() / "cache", lambda line: print(line[:200], flush=True))  # noqa: T201
        print(json.dumps({"bin": str(bin_dir), "built_now": built, **build_info(home() / "cache")}, indent=2))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
