"""OCI image archives (a tar of an OCI image layout), written with tarfile and no subprocess: one gzip layer of a
directory tree, its config, manifest and index. Entries are sorted, mtimes clamped to SOURCE_DATE_EPOCH, no user or
group names, gzip mtime 0, a fixed `created`: the same tree and spec give the same manifest digest. What goes in
the trees, and the cache: images.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

BUILDER_VERSION = 1  # bump when a recipe here or in images.py changes: part of every cache key
SOURCE_DATE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: every mtime in a layer is clamped to it
CREATED = "2024-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class ImageSpec:
    reference: str  # "localhost/name:tag"
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = (PATH_ENV,)
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.reference.rpartition(":")[2]


class _Hashing:
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out: io.BufferedIOBase | _Hashing | gzip.GzipFile) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _add_tree(tar: tarfile.TarFile, root: Path, rel: str = "") -> None:
    """Depth-first in name order. Device nodes and sockets are left out (the runtime mounts /dev)."""
    path = root / rel if rel else root
    for name in sorted(os.listdir(path)):
        arc = f"{rel}/{name}" if rel else name
        ti = tar.gettarinfo(str(root / arc), arcname=arc)
        if ti is None or ti.ischr() or ti.isblk():
            continue
        ti.mtime = min(int(ti.mtime), SOURCE_DATE_EPOCH)
        ti.uname = ti.gname = ""
        if ti.isreg():
            with open(root / arc, "rb") as fh:
                tar.addfile(ti, fh)
        else:
            tar.addfile(ti)
        if ti.isdir():
            _add_tree(tar, root, arc)


def write_layer(root: Path, out: Path) -> tuple[str, str, int]:
    """Write root's tree as a gzip layer to `out`: (digest, diff_id, compressed size)."""
    with open(out, "wb") as fh:
        compressed = _Hashing(fh)
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6) as gz:
            raw = _Hashing(gz)  # a stream (mode "w|") writes only
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                _add_tree(tar, root)
    return f"sha256:{compressed.sha.hexdigest()}", f"sha256:{raw.sha.hexdigest()}", compressed.size


def image_documents(spec: ImageSpec, layer: tuple[str, str, int]) -> tuple[bytes, bytes, bytes]:
    """(config, manifest, index.json) for one amd64 image of one layer."""
    digest, diff_id, size = layer
    run: dict[str, object] = {"Env": list(spec.env), "WorkingDir": "/", "Cmd": list(spec.cmd)}
    run = {k: v for k, v in (run | {"Entrypoint": list(spec.entrypoint), "Labels": dict(spec.labels)}).items() if v}
    platform = {"architecture": "amd64", "os": "linux"}
    history = [{"created": CREATED, "created_by": f"weave_node.lab.kubernetes.images v{BUILDER_VERSION}"}]
    rootfs = {"type": "layers", "diff_ids": [diff_id]}
    config = _canonical({**platform, "created": CREATED, "config": run, "rootfs": rootfs, "history": history})
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": _sha(config), "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": digest, "size": size}],
        }
    )
    names = {"io.containerd.image.name": spec.reference, "org.opencontainers.image.ref.name": spec.tag}
    entry = {"mediaType": MEDIA_MANIFEST, "digest": _sha(manifest), "size": len(manifest), "platform": platform}
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [{**entry, "annotations": names}]}
    return config, manifest, _canonical(index)


def _sha(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def write_archive(root: Path, spec: ImageSpec, out: Path) -> str:
    """Write the OCI archive (a tar of an OCI image layout) of root's tree to `out`; return the manifest digest."""
    layer_file = out.with_name(out.name + ".layer")
    try:
        layer = write_layer(root, layer_file)
        config, manifest, index = image_documents(spec, layer)
        blobs: dict[str, bytes | Path] = {_sha(config): config, _sha(manifest): manifest, layer[0]: layer_file}
        files: dict[str, bytes | Path] = {f"blobs/sha256/{d.removeprefix('sha256:')}": b for d, b in blobs.items()}
        files["index.json"] = index
        files["oci-layout"] = _canonical({"imageLayoutVersion": "1.0.0"})
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("blobs", "blobs/sha256"):
                tar.addfile(_entry(name, tarfile.DIRTYPE, 0))
            for name, body in sorted(files.items()):
                if isinstance(body, Path):
                    with open(body, "rb") as fh:
                        tar.addfile(_entry(name, tarfile.REGTYPE, body.stat().st_size), fh)
                else:
                    tar.addfile(_entry(name, tarfile.REGTYPE, len(body)), io.BytesIO(body))
    finally:
        layer_file.unlink(missing_ok=True)
    return _sha(manifest)


def _entry(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mtime = kind, size, SOURCE_DATE_EPOCH
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return ti
