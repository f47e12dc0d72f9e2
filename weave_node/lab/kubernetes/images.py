"""OCI image archives for the lab's cluster, built without Docker or a registry; containerd imports them with
`ctr -n k8s.io images import --snapshotter native <archive>`.

    weave-node  Debian bookworm (mmdebstrap, essential set + python3, iproute2, iptables, ebtables, ipset,
                conntrack, kmod)
                with our wheel and its `router` extra in /opt/weave-node/venv (from weave_node_deploy/wheelhouse.py);
                /usr/local/bin/weave-node links into it
    busybox     Debian's busybox-static: /bin/busybox and a link per applet, minimal /etc/passwd and /etc/group
    pause       the busybox layer, whose entrypoint sleeps until SIGTERM/SIGINT (containerd's sandbox_image)

Each archive is one gzip layer, written by oci.py (entries sorted, mtimes clamped to SOURCE_DATE_EPOCH, no user or
group names, gzip mtime 0, a fixed `created`); mmdebstrap gets the same SOURCE_DATE_EPOCH (Python writes
hash-checked .pyc files under it). The same inputs give the same manifest digest.

Cache, under `<lab home>/cache/images/`: `<name>-<key>.tar` and `<name>-<key>.tar.json` (reference, digest, size,
build seconds), keyed by a hash of the inputs (packages, the wheelhouse's SHA256SUMS, the busybox .deb's SHA256,
BUILDER_VERSION). A lock makes parallel callers build once; a failed build leaves no archive.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import weave_node
from weave_node.core.errors import WeaveError
from weave_node.lab.kubernetes.oci import BUILDER_VERSION, SOURCE_DATE_EPOCH, ImageSpec, write_archive
from weave_node.lab.rootfs import SUITE, apt_sources
from weave_node.lab.system import stream

VERSION = weave_node.__version__
WEAVE_NODE_IMAGE = f"localhost/weave-node:{VERSION}"
BUSYBOX_IMAGE = "localhost/busybox:lab"
PAUSE_IMAGE = "localhost/pause:lab"
IMAGE_NAMES = {"weave-node": WEAVE_NODE_IMAGE, "busybox": BUSYBOX_IMAGE, "pause": PAUSE_IMAGE}
PACKAGES = ("python3", "python3-pip-whl", "iproute2", "iptables", "ebtables", "ipset", "conntrack", "kmod")
VENV = "/opt/weave-node/venv"
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
# dpkg leaves these out of the weave-node image (copyright files stay).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
)


class ImageError(WeaveError):
    pass


# --- building (mmdebstrap, apt, the wheelhouse) and the cache -----------------------------------------------------


def busybox_tree(root: Path, busybox: Path, applets: Iterable[str], copyright_file: Path | None = None) -> None:
    """A busybox root: /bin/busybox, a link per applet, root and nobody, and the usual empty directories."""
    for name, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777), ("var", 0o755)):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name).chmod(mode)
    for name in ("dev", "proc", "sys", "run", "var/run", "var/log", "usr/share/doc/busybox-static"):
        (root / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    for applet in sorted(set(applets) - {"busybox", ""}):
        if "/" not in applet:
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    if copyright_file is not None:
        shutil.copyfile(copyright_file, root / "usr/share/doc/busybox-static/copyright")


@dataclass(frozen=True)
class Built:
    name: str
    reference: str
    path: Path
    digest: str
    size: int
    seconds: float
    cached: bool


def _run(cmd: list[str], on_line: Callable[[str], None], cwd: Path | None = None) -> None:
    # The machine's pip and Python settings (PIP_FIND_LINKS, PYTHONPATH, ...) stay out of the image's build.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(DEBIAN_FRONTEND="noninteractive", SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH))
    code, lines = stream(cmd, on_line, cwd=cwd, env=env)
    if code != 0:
        last = next((x for x in reversed(lines) if x.startswith("E:")), lines[-1] if lines else "")
        raise ImageError(f"{cmd[0]} failed (exit {code}): {last}")


def _wheelhouse() -> Path:
    """weave_node_deploy.wheelhouse's wheels (our wheel and its router dependencies), built once per version."""
    built: Path = importlib.import_module("weave_node_deploy.wheelhouse").build()
    return built


def _busybox_deb() -> dict[str, str]:
    """The candidate busybox-static package from the machine's apt lists: Version, SHA256, ..."""
    out = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", "busybox-static"], capture_output=True, text=True, check=False
    )
    fields = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line and line[0] != " ")
    if out.returncode != 0 or "SHA256" not in fields:
        raise ImageError("busybox-static is unknown to apt here (apt-get update)")
    return fields


def _customize_hook(wheelhouse: Path) -> str:
    quiet = "--no-index --no-cache-dir --disable-pip-version-check --no-warn-script-location -q"
    return "; ".join(
        [
            "set -eu",
            f'mkdir "$1/tmp/wheels" && cp -a {shlex.quote(str(wheelhouse))}/. "$1/tmp/wheels/"',
            'pip=$(cd "$1" && echo usr/share/python-wheels/pip-*.whl)',
            f'chroot "$1" python3 -m venv --without-pip {VENV}',
            f'chroot "$1" {VENV}/bin/python "/$pip/pip" install {quiet} --find-links /tmp/wheels'
            f' "weave-node[router]=={VERSION}"',
            f'ln -s {VENV}/bin/weave-node "$1/usr/local/bin/weave-node"',
            # The DaemonSet's init container writes the wheel's static plugin into the node's /opt/cni/bin.
            'PYTHONDONTWRITEBYTECODE=1 chroot "$1" weave-node install-cni-plugin --dir /tmp/cni >/dev/null',
            'head -c4 "$1/tmp/cni/weave-net" | grep -q ELF',
            # python3.11 recommends ca-certificates (and openssl with it): the router makes no TLS connections.
            'chroot "$1" dpkg --purge python3-pip-whl ca-certificates openssl >/dev/null',
            'rm -rf "$1/tmp/wheels" "$1/tmp/cni" "$1/etc/resolv.conf" "$1/etc/hostname"',
            'rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/*',
        ]
    )


def _weave_node_rootfs(root: Path, wheelhouse: Path, on_line: Callable[[str], None]) -> None:
    if shutil.which("mmdebstrap") is None:
        raise ImageError("missing dependency: mmdebstrap (apt-get install mmdebstrap)")
    cmd = ["mmdebstrap", "--mode=unshare", "--variant=essential", "--include=" + ",".join(PACKAGES)]
    # mmdebstrap's own merged-/usr symlinks: else init-system-helpers brings usrmerge, and usrmerge all of perl.
    cmd += ["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
    cmd += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    cmd += [f"--customize-hook={_customize_hook(wheelhouse)}", SUITE, str(root), *apt_sources()]
    _run(cmd, on_line)


def _busybox_rootfs(root: Path, work: Path, on_line: Callable[[str], None]) -> None:
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", "busybox-static"], on_line, cwd=work)
    deb = next(work.glob("busybox-static_*.deb"))
    _run(["dpkg-deb", "-x", str(deb), str(work / "x")], on_line)
    busybox = work / "x/bin/busybox"
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    busybox_tree(root, busybox, applets, work / "x/usr/share/doc/busybox-static/copyright")


def _specs(busybox_version: str) -> dict[str, ImageSpec]:
    title = "org.opencontainers.image.title"
    return {
        "weave-node": ImageSpec(
            WEAVE_NODE_IMAGE,
            cmd=("weave-node", "router"),
            labels={title: "weave-node", "org.opencontainers.image.version": VERSION, "debian.suite": SUITE},
        ),
        "busybox": ImageSpec(BUSYBOX_IMAGE, cmd=("sh",), labels={title: "busybox", "debian.busybox": busybox_version}),
        "pause": ImageSpec(PAUSE_IMAGE, entrypoint=("/bin/sh", "-c", PAUSE_SCRIPT), labels={title: "pause"}),
    }


def _key(name: str, spec: ImageSpec, inputs: list[str]) -> str:
    text = "\n".join([f"builder={BUILDER_VERSION}", name, repr(spec), *inputs])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _rmtree(path: Path) -> None:
    """Remove a build directory, unless something is mounted inside it (then it is not ours to delete)."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    inside = [m for m in mounts if m == str(path) or m.startswith(f"{path}/")]
    if inside:
        raise ImageError(f"not removing {path}: {inside[0]} is still mounted")
    shutil.rmtree(path, ignore_errors=True)


def ensure_images(
    cache: Path, on_line: Callable[[str], None], only: Iterable[str] = tuple(IMAGE_NAMES)
) -> dict[str, Path]:
    """name -> archive path for "weave-node", "busybox" and "pause" (or `only` these), built if missing."""
    return {b.name: b.path for b in build_images(cache, on_line, only)}


def build_images(cache: Path, on_line: Callable[[str], None], only: Iterable[str] = tuple(IMAGE_NAMES)) -> list[Built]:
    wanted = list(dict.fromkeys(only))
    unknown = sorted(set(wanted) - set(IMAGE_NAMES))
    if unknown:
        raise ImageError(f"unknown image {unknown[0]!r} (one of: {', '.join(IMAGE_NAMES)})")
    deb = _busybox_deb() if {"busybox", "pause"} & set(wanted) else {"Version": "", "SHA256": ""}
    specs = _specs(deb["Version"])
    inputs = {"busybox": [deb["SHA256"]], "pause": [deb["SHA256"]]}
    wheelhouse: Path | None = None
    if "weave-node" in wanted:
        wheelhouse = _wheelhouse()
        inputs["weave-node"] = [SUITE, *PACKAGES, *DPKG_EXCLUDES, (wheelhouse / "SHA256SUMS").read_text()]
    images = cache / "images"
    images.mkdir(parents=True, exist_ok=True)
    built = []
    with open(images / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel callers wait here, then find the archives built
        for stale in images.glob(".build-*"):  # a killed build's; nobody else builds while we hold the lock
            _rmtree(stale)
        for name in wanted:
            archive = images / f"{name}-{_key(name, specs[name], inputs[name])}.tar"
            info = archive.with_name(archive.name + ".json")
            cached = archive.is_file() and info.is_file()
            if not cached:
                on_line(f"building {specs[name].reference}")
                _build(name, specs[name], archive, on_line, wheelhouse if name == "weave-node" else None)
                _prune(images, name)
            doc = json.loads(info.read_text())
            built.append(Built(name, doc["reference"], archive, doc["digest"], doc["size"], doc["seconds"], cached))
    return built


def _prune(images: Path, name: str, keep: int = 3, min_age: float = 86400, now: float | None = None) -> None:
    """Older inputs' archives go (47 MiB per source change), but not the `keep` newest nor any built in the last
    `min_age` seconds: a running lab bind-mounts the archives it booted with into its hosts."""
    archives = sorted(images.glob(f"{name}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        if (now or time.time()) - old.stat().st_mtime > min_age:
            old.with_name(old.name + ".json").unlink(missing_ok=True)
            old.unlink()


def _build(name: str, spec: ImageSpec, archive: Path, on_line: Callable[[str], None], wheels: Path | None) -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(dir=archive.parent, prefix=f".build-{name}-"))
    partial = work / "image.tar"
    try:
        root = work / "rootfs"
        if wheels is not None:
            _weave_node_rootfs(root, wheels, on_line)
        else:
            _busybox_rootfs(root, work, on_line)
        on_line(f"writing {archive.name}")
        digest = write_archive(root, spec, partial)
        seconds = round(time.monotonic() - started, 1)
        doc = {"reference": spec.reference, "digest": digest, "size": partial.stat().st_size, "seconds": seconds}
        info = archive.with_name(archive.name + ".json")
        info.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(partial, archive)  # last: an archive is only ever complete
    finally:
        _rmtree(work)


def main(argv: list[str] | None = None) -> int:
    from weave_node.lab.paths import home

    parser = argparse.ArgumentParser(prog="build-image", description="Build the lab's OCI image archives.")
    parser.add_argument("--only", action="append", choices=list(IMAGE_NAMES), help="this image (repeatable)")
    parser.add_argument("--output", type=Path, help="also copy the archives here, as <name>.oci.tar")
    parser.add_argument("--cache", type=Path, default=home() / "cache", help="default: <lab home>/cache")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the builders' output")
    args = parser.parse_args(argv)

    def on_line(line: str) -> None:
        if args.verbose:
            sys.stderr.write(line + "\n")

    try:
        built = build_images(args.cache, on_line, args.only or tuple(IMAGE_NAMES))
    except WeaveError as exc:
        sys.stderr.write(f"build-image: {exc}\n")
        return 1
    for b in built:
        path = b.path
        if args.output is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            path = args.output / f"{b.name}.oci.tar"
            shutil.copyfile(b.path, path)
        how = f"{'cached, ' if b.cached else ''}built in {b.seconds:.0f} s"
        sys.stdout.write(f"{b.reference}  {path}  {b.size / 2**20:.1f} MiB  {how}  {b.digest}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
