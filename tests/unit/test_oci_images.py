"""The OCI archives the lab's containerd imports: layout, digests, names, and byte-for-byte reproducibility."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

import weave_node
from weave_node.lab.kubernetes import images, oci
from weave_node.lab.kubernetes.images import busybox_tree
from weave_node.lab.kubernetes.oci import SOURCE_DATE_EPOCH, ImageSpec, write_archive

pytestmark = pytest.mark.unit

SPEC = ImageSpec("localhost/demo:1.2", cmd=("demo", "run"), labels={"org.opencontainers.image.version": "1.2"})
LATER = SOURCE_DATE_EPOCH + 86400 * 400
EARLIER = SOURCE_DATE_EPOCH - 86400 * 400


def _tree(root: Path, mtime: int = LATER) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "usr/bin/tool").chmod(0o755)
    (root / "etc/config").write_text("key = value\n")
    (root / "etc/config").chmod(0o640)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-again")
    (root / "bin").symlink_to("usr/bin")
    os.mkfifo(root / "etc/fifo")
    for path in [root, *root.rglob("*")]:
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    os.utime(root / "etc/config", (EARLIER, EARLIER))  # older than the epoch: kept as it is
    return root


def _read(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    algo, _, hexdigest = digest.partition(":")
    assert algo == "sha256"
    data = files[f"blobs/sha256/{hexdigest}"]
    assert hashlib.sha256(data).hexdigest() == hexdigest, "a blob's name is the digest of its contents"
    return data


def _layer(files: dict[str, bytes]) -> tuple[bytes, dict[str, object], list[tarfile.TarInfo], bytes]:
    index = json.loads(files["index.json"])
    manifest = json.loads(_blob(files, index["manifests"][0]["digest"]))
    config_bytes = _blob(files, manifest["config"]["digest"])
    layer_gz = _blob(files, manifest["layers"][0]["digest"])
    raw = gzip.decompress(layer_gz)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    return layer_gz, json.loads(config_bytes), members, raw


def test_the_archive_is_an_oci_layout_whose_descriptors_match_their_blobs(tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    digest = write_archive(_tree(tmp_path / "root"), SPEC, out)
    files = _read(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"] == {
        "io.containerd.image.name": "localhost/demo:1.2",
        "org.opencontainers.image.ref.name": "1.2",
    }
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest_bytes = _blob(files, digest)
    assert entry["size"] == len(manifest_bytes)
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["size"] == len(_blob(files, manifest["config"]["digest"]))
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    layer_gz, config, _, raw = _layer(files)
    assert layer["size"] == len(layer_gz)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]}
    assert (config["architecture"], config["os"], config["created"]) == ("amd64", "linux", oci.CREATED)
    assert config["config"] == {
        "Cmd": ["demo", "run"],
        "Env": [oci.PATH_ENV],
        "Labels": {"org.opencontainers.image.version": "1.2"},
        "WorkingDir": "/",
    }
    # Only the layout's files: no temporary layer file left beside the archive.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tar", "root"]


def test_the_layer_holds_the_tree_sorted_normalised_and_with_links(tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    write_archive(_tree(tmp_path / "root"), SPEC, out)
    layer_gz, _, members, _ = _layer(_read(out))
    assert layer_gz[4:8] == b"\0\0\0\0", "gzip header mtime is 0"
    assert layer_gz[3] & 0x08 == 0, "no file name in the gzip header"
    names = [m.name for m in members]
    assert names == [
        "bin",
        "etc",
        "etc/config",
        "etc/fifo",
        "usr",
        "usr/bin",
        "usr/bin/tool",
        "usr/bin/tool-again",
    ]
    by_name = {m.name: m for m in members}
    assert by_name["bin"].issym() and by_name["bin"].linkname == "usr/bin"
    assert by_name["usr/bin/tool"].isfile() and by_name["usr/bin/tool"].mode == 0o755
    assert by_name["usr/bin/tool-again"].islnk() and by_name["usr/bin/tool-again"].linkname == "usr/bin/tool"
    assert by_name["etc/config"].mode == 0o640
    assert by_name["etc/fifo"].isfifo()
    assert by_name["etc/config"].mtime == EARLIER
    assert all(m.mtime == SOURCE_DATE_EPOCH for m in members if m.name != "etc/config")
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert all((m.uid, m.gid) == (os.getuid(), os.getgid()) for m in members)


def test_the_same_tree_gives_the_same_bytes_and_a_change_a_new_digest(tmp_path: Path) -> None:
    first = write_archive(_tree(tmp_path / "a"), SPEC, tmp_path / "a.tar")
    # Built later, with other (newer) mtimes: clamped to the same epoch.
    second = write_archive(_tree(tmp_path / "b", mtime=LATER + 3600), SPEC, tmp_path / "b.tar")
    assert first == second
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    (tmp_path / "b/etc/config").write_text("key = other\n")
    os.utime(tmp_path / "b/etc/config", (EARLIER, EARLIER))
    assert write_archive(tmp_path / "b", SPEC, tmp_path / "c.tar") != first
    # The name lives in index.json only: another tag is the same image (manifest digest), named otherwise.
    retagged = ImageSpec("localhost/demo:1.3", cmd=SPEC.cmd, labels=SPEC.labels)
    assert write_archive(tmp_path / "a", retagged, tmp_path / "d.tar") == first
    (entry,) = json.loads(_read(tmp_path / "d.tar")["index.json"])["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/demo:1.3"
    other_cmd = ImageSpec(SPEC.reference, cmd=("demo", "serve"), labels=SPEC.labels)
    assert write_archive(tmp_path / "a", other_cmd, tmp_path / "e.tar") != first


@pytest.mark.skipif(os.geteuid() != 0, reason="device nodes need root")
def test_device_nodes_stay_out_of_the_layer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    write_archive(root, SPEC, tmp_path / "image.tar")
    _, _, members, _ = _layer(_read(tmp_path / "image.tar"))
    assert [m.name for m in members] == ["dev"]


def test_busybox_tree_links_every_applet_to_the_binary(tmp_path: Path) -> None:
    binary = tmp_path / "busybox.bin"
    binary.write_bytes(b"\x7fELF fake")
    root = tmp_path / "root"
    busybox_tree(root, binary, ["sh", "ping", "busybox", "wget", "[", "usr/bin/odd", "sh"])
    assert (root / "bin/busybox").read_bytes() == b"\x7fELF fake"
    assert os.access(root / "bin/busybox", os.X_OK)
    links = sorted(p.name for p in (root / "bin").iterdir() if p.is_symlink())
    assert links == ["[", "ping", "sh", "wget"]
    assert all(os.readlink(root / "bin" / name) == "busybox" for name in links)
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert "nogroup:x:65534:" in (root / "etc/group").read_text()


def test_image_names_are_local_references_and_follow_the_package_version() -> None:
    assert images.IMAGE_NAMES["weave-node"] == f"localhost/weave-node:{weave_node.__version__}"
    assert set(images.IMAGE_NAMES) == {"weave-node", "busybox", "pause"}
    assert all(ref.startswith("localhost/") and ref.count(":") == 1 for ref in images.IMAGE_NAMES.values())
    specs = images._specs("1:1.35.0-4")
    assert {name: spec.reference for name, spec in specs.items()} == images.IMAGE_NAMES
    assert specs["weave-node"].cmd == ("weave-node", "router")
    assert specs["pause"].entrypoint[:2] == ("/bin/sh", "-c") and "TERM" in specs["pause"].entrypoint[2]


def test_pruning_keeps_the_newest_archives_and_any_a_running_lab_may_still_use(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    ages = {"a": 10 * 86400, "b": 9 * 86400, "c": 8 * 86400, "d": 7 * 86400, "e": 3600, "f": 60}
    for key, age in ages.items():
        for path in (tmp_path / f"weave-node-{key}.tar", tmp_path / f"weave-node-{key}.tar.json"):
            path.write_text(key)
            os.utime(path, (now - age, now - age))
    (tmp_path / "busybox-x.tar").write_text("other image")
    os.utime(tmp_path / "busybox-x.tar", (now - 30 * 86400, now - 30 * 86400))
    images._prune(tmp_path, "weave-node", keep=1, min_age=86400, now=now)
    # f is the newest; e is not, but was built within the day (a running lab may have it bind-mounted).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "busybox-x.tar",
        "weave-node-e.tar",
        "weave-node-e.tar.json",
        "weave-node-f.tar",
        "weave-node-f.tar.json",
    ]
