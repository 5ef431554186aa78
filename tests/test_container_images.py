"""Quantizer images: ``docker save`` archives are checked, loaded without their tags and pinned by
image ID; malformed or hostile archives and unpinned references get a specific error."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import docker.errors
import pytest

from harness.containers.images import ImageError, load_image_archive, pin_registry_image

pytestmark = [pytest.mark.slow, pytest.mark.docker]
MAX_BYTES = 16 << 20


@pytest.fixture
def saved_image(docker_client, tmp_path) -> tuple[str, Path]:
    """(image ID, its `docker save` archive) of a tiny one-file image, removed from the engine."""
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as tar:
        data = uuid.uuid4().hex.encode()  # a fresh image each time
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tag = f"medquant-test/tiny:{uuid.uuid4().hex[:8]}"
    docker_client.api.import_image_from_data(
        rootfs.getvalue(), repository=tag.split(":")[0], tag=tag.split(":")[1]
    )
    image = docker_client.images.get(tag)
    archive = tmp_path / "image.tar"
    with archive.open("wb") as out:
        for chunk in image.save(named=True):
            out.write(chunk)
    docker_client.images.remove(image.id, force=True)
    yield image.id, archive
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(image.id, force=True)


def test_archive_is_loaded_without_tags_and_pinned_by_id(docker_client, saved_image, tmp_path):
    image_id, archive = saved_image
    with tarfile.open(archive) as tar:  # docker save recorded the tag ...
        assert json.loads(tar.extractfile("manifest.json").read())[0]["RepoTags"]
    pinned = load_image_archive(docker_client, archive, max_bytes=MAX_BYTES, workdir=tmp_path)
    assert (pinned.reference, pinned.digest, pinned.source) == (image_id, image_id, "archive")
    assert docker_client.images.get(image_id).tags == []  # ... but the upload got none


def _rewrite(archive: Path, dest: Path, *, drop=(), add=(), manifest=None) -> Path:
    """A copy of ``archive`` without members ``drop``, plus TarInfos ``add``, and optionally
    ``manifest(entries) -> entries`` applied to manifest.json."""
    with tarfile.open(archive) as src, tarfile.open(dest, "w") as out:
        for member in src.getmembers():
            if member.name in drop:
                continue
            data = src.extractfile(member).read() if member.isfile() else None
            if member.name == "manifest.json" and manifest is not None:
                data = json.dumps(manifest(json.loads(data))).encode()
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
        for info in add:
            out.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return dest


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


def _two_images(entries: list) -> list:
    return entries * 2


def _missing_layer(entries: list) -> list:
    return [entries[0] | {"Layers": ["nowhere/layer.tar"]}]


BAD_ARCHIVES = {
    "traversal": ({"add": [_entry("../evil.txt")]}, "points outside the archive"),
    "absolute": ({"add": [_entry("/etc/evil.txt")]}, "points outside the archive"),
    "symlink escape": (
        {"add": [_entry("link", tarfile.SYMTYPE, "../../etc/passwd")]},
        "symlink 'link' points outside the archive",
    ),
    "device": ({"add": [_entry("dev", tarfile.CHRTYPE)]}, "is not a file, folder or symlink"),
    "no manifest": ({"drop": ["manifest.json"]}, "has no manifest.json"),
    "two images": ({"manifest": _two_images}, "must describe exactly one image"),
    "missing layer": ({"manifest": _missing_layer}, "names 'nowhere/layer.tar', which is not"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES))
def test_bad_archive_is_refused_with_a_specific_error(docker_client, saved_image, tmp_path, case):
    _, archive = saved_image
    changes, message = BAD_ARCHIVES[case]
    bad = _rewrite(archive, tmp_path / "bad.tar", **changes)
    with pytest.raises(ImageError, match=message):
        load_image_archive(docker_client, bad, max_bytes=MAX_BYTES, workdir=tmp_path)


def test_compressed_or_oversized_archive_is_refused(docker_client, saved_image, tmp_path):
    _, archive = saved_image
    packed = tmp_path / "image.tar.gz"
    packed.write_bytes(gzip.compress(archive.read_bytes()))
    with pytest.raises(ImageError, match="not a readable tar file"):
        load_image_archive(docker_client, packed, max_bytes=MAX_BYTES, workdir=tmp_path)
    size = archive.stat().st_size
    with pytest.raises(ImageError, match="the limit is"):
        load_image_archive(docker_client, archive, max_bytes=size - 1, workdir=tmp_path)


def test_registry_reference_must_be_pinned_without_a_registry(docker_client):
    with pytest.raises(ImageError, match="must be pinned by digest"):
        pin_registry_image(docker_client, "example.org/quantizer:latest", pull=False)
    missing = "example.org/quantizer@sha256:" + "0" * 64
    with pytest.raises(ImageError, match="does not exist"):
        pin_registry_image(docker_client, missing, pull=False)
    with pytest.raises(ImageError, match="malformed digest"):
        pin_registry_image(docker_client, "example.org/quantizer@md5:abc", pull=False)


@pytest.fixture
def registry(tmp_path):
    """A local registry (Debian ``docker-registry``) on a free port of 127.0.0.1, which Docker
    treats as an insecure registry by default; yields its host:port."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (apt install docker-registry)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with (tmp_path / "registry.log").open("wb") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as client, contextlib.suppress(OSError):
                client.connect(("127.0.0.1", port))
                break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_registry_image_is_pulled_and_pinned_by_digest(docker_client, saved_image, registry):
    image_id, archive = saved_image
    (image,) = docker_client.images.load(archive.read_bytes())
    repository = f"{registry}/medquant/tiny"
    image.tag(repository, "v1")
    docker_client.images.push(repository, "v1")
    docker_client.images.remove(image.id, force=True)

    pinned = pin_registry_image(docker_client, f"{repository}:v1")
    assert pinned.source == "registry"
    assert pinned.reference == f"{repository}@{pinned.digest}"
    assert pinned.digest.startswith("sha256:") and pinned.digest != image_id
    assert docker_client.images.get(pinned.reference).id == image_id

    assert pin_registry_image(docker_client, pinned.reference) == pinned
    assert pin_registry_image(docker_client, pinned.reference, pull=False) == pinned
    with pytest.raises(ImageError, match="could not be pulled"):
        pin_registry_image(docker_client, f"{repository}@sha256:{'1' * 64}")
