"""Quantizer images: a registry reference or an uploaded ``docker save`` archive, each pinned to
the content digest that is then run and recorded on the submission.

An archive is checked before Docker sees it: size limit, a plain (uncompressed) tar of at most
``MAX_ARCHIVE_MEMBERS`` entries (counted header by header, so a million-entry archive costs no more
memory than the cap) with only regular files, directories and symlinks that stay inside it, no
absolute or ``..`` paths, and a ``manifest.json`` naming exactly one image of at most
``MAX_IMAGE_LAYERS`` layers whose config and layers are in the archive. Its tags
are dropped (an upload must never retag a local image); the loaded image ID must equal the SHA-256
of the config it declares.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

import docker
import docker.errors

from harness.artifacts import untrusted_json
from harness.errors import SubmissionError

MANIFEST = "manifest.json"
_DROPPED = ("repositories",)  # legacy tag file: tags never come from an upload
_CHUNK = 1 << 20
MANIFEST_MAX_BYTES = _CHUNK
"""Largest ``docker save`` manifest read: a few hundred bytes per layer."""
MAX_IMAGE_LAYERS = 125
"""Docker's own limit on an image's layers (moby's ``maxLayerDepth``): a deeper image fails to load,
so it is refused here with the reason instead."""
MAX_ARCHIVE_MEMBERS = 1024
"""Most entries a ``docker save`` archive may hold: it writes at most 5 per layer (the layer's
folder, ``VERSION``, ``json``, ``layer.tar`` and its OCI blob) plus fewer than 10 for the image
(manifest, index, config, ``oci-layout``, folders), 633 at ``MAX_IMAGE_LAYERS``; the cap bounds the
headers held in memory while an archive is read."""
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, UnicodeError, ValueError)
"""What reading a corrupt or truncated tar raises (``ImageError`` is raised before these)."""


class ImageError(SubmissionError):
    """A quantizer image reference or archive is unusable; the message says why."""


@dataclass(frozen=True)
class PinnedImage:
    """What the runner starts (``reference``) and the digest recorded on the submission."""

    reference: str
    digest: str
    source: Literal["registry", "archive"]


def repository(reference: str) -> str:
    """The repository of an image reference (``registry:5000/name:tag@sha256:…`` →
    ``registry:5000/name``): a tag is a colon after the last slash, a port one before it."""
    name = reference.partition("@")[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def pinned_reference(reference: str, digest: str | None) -> str:
    """``reference`` pinned to ``digest`` (the one recorded at its first run), or as it is."""
    return f"{repository(reference)}@{digest}" if digest else reference


def pin_registry_image(
    client: docker.DockerClient, reference: str, *, pull: bool = True
) -> PinnedImage:
    """Pull ``reference`` (``name:tag`` or ``name@sha256:…``) and pin it to its repo digest.

    With ``pull=False`` (no registry configured) the image must already be on the engine and
    ``reference`` must carry its digest.
    """
    name, at, wanted = reference.partition("@")
    if at and not wanted.startswith("sha256:"):
        raise ImageError(f"image reference {reference!r} has a malformed digest")
    if not pull and not at:
        raise ImageError(
            f"image reference {reference!r} must be pinned by digest (name@sha256:…): "
            "no registry is configured to resolve tags"
        )
    try:
        image = client.images.pull(reference) if pull else client.images.get(reference)
    except docker.errors.ImageNotFound:
        raise ImageError(f"image {reference!r} does not exist") from None
    except docker.errors.APIError as error:
        raise ImageError(f"image {reference!r} could not be pulled: {error.explanation}") from None
    repo = repository(reference)
    digests = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(f"{repo}@")]
    if at and reference not in digests and f"{repo}@{wanted}" not in digests:
        raise ImageError(f"image {reference!r} resolved to a different digest ({digests})")
    if not digests:
        raise ImageError(f"image {reference!r} has no registry digest to pin it by")
    pinned = f"{repo}@{wanted}" if at else digests[0]
    return PinnedImage(pinned, pinned.partition("@")[2], "registry")


def check_image_upload(upload: BinaryIO, size: int, max_bytes: int) -> None:
    """A quantizer image upload is the output of ``docker save``: an uncompressed tar holding a
    ``manifest.json``, within ``max_bytes``. The worker checks it fully (paths, manifest, config
    digest, ``load_image_archive``) before Docker loads it."""
    if size > max_bytes:
        size_mb, limit_mb = size / 2**20, max_bytes / 2**20
        raise ImageError(f"the image archive is {size_mb:.1f} MB; the limit is {limit_mb:.0f} MB")
    if size == 0:
        raise ImageError("the image archive is empty")
    upload.seek(0)
    try:
        with tarfile.open(fileobj=upload, mode="r:") as tar:
            has_manifest = any(
                PurePosixPath(member.name) == PurePosixPath(MANIFEST) for member in _headers(tar)
            )
    except ImageError:
        raise
    except _ARCHIVE_ERRORS as error:
        raise ImageError(
            "the image archive is not an uncompressed tar file (make it with "
            f"`docker save -o quantizer.tar IMAGE`): {error}"
        ) from error
    finally:
        upload.seek(0)
    if not has_manifest:
        raise ImageError(f"the image archive has no {MANIFEST}: is it the output of `docker save`?")


def load_image_archive(
    client: docker.DockerClient, archive: str | Path, *, max_bytes: int, workdir: str | Path
) -> PinnedImage:
    """Check a ``docker save`` archive, load it without its tags and pin it by image ID."""
    archive = Path(archive)
    size = archive.stat().st_size
    if size > max_bytes:
        raise ImageError(
            f"image archive is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB"
        )
    clean = Path(workdir) / f"sanitized-{uuid.uuid4().hex}.tar"
    config_digest = _sanitized_copy(archive, clean)
    try:
        with clean.open("rb") as stream:
            images = client.images.load(stream)
    except docker.errors.APIError as error:
        raise ImageError(f"Docker refused the image archive: {error.explanation}") from None
    except docker.errors.ImageLoadError as error:  # the engine read the archive and refused it
        raise ImageError(f"Docker could not load the image archive: {error}") from None
    finally:
        clean.unlink(missing_ok=True)
    ids = {image.id for image in images}
    if ids != {config_digest}:
        raise ImageError(
            f"the archive loaded as {sorted(ids)}, not the image its manifest declares "
            f"({config_digest})"
        )
    return PinnedImage(config_digest, config_digest, "archive")


def _sanitized_copy(archive: Path, dest: Path) -> str:
    """Copy ``archive`` to ``dest`` with tags removed; return the declared image ID."""
    try:
        with tarfile.open(archive, "r:") as tar:
            members = {_checked_name(m): m for m in _headers(tar)}
            manifest = _manifest(tar, members)
            config = _resolve(members, members[manifest["Config"]])
            if not config.isfile():
                raise ImageError(
                    f"image archive {MANIFEST} names Config {manifest['Config']!r}, which is not a "
                    "file"
                )
            digest = "sha256:" + _sha256(tar, config)
            manifest["RepoTags"] = None
            data = json.dumps([manifest]).encode()
            with tarfile.open(dest, "w") as out:
                for name, member in members.items():
                    if name in _DROPPED:
                        continue
                    if name == MANIFEST:
                        member.size = len(data)
                        out.addfile(member, io.BytesIO(data))
                    else:
                        out.addfile(member, tar.extractfile(member) if member.isfile() else None)
    except ImageError:
        raise
    except _ARCHIVE_ERRORS as error:
        raise ImageError(f"image archive is not a readable tar file: {error}") from None
    return digest


def _headers(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The archive's entries, read header by header; ImageError past ``MAX_ARCHIVE_MEMBERS``
    (before the next header is read)."""
    members = []
    while (member := tar.next()) is not None:
        if len(members) == MAX_ARCHIVE_MEMBERS:
            raise ImageError(
                f"the image archive holds more than {MAX_ARCHIVE_MEMBERS} entries; `docker save` "
                f"writes at most 5 per layer (and an image has at most {MAX_IMAGE_LAYERS} layers)"
            )
        members.append(member)
    return members


def _checked_name(member: tarfile.TarInfo) -> str:
    name = posixpath.normpath(member.name)
    if member.name.startswith("/") or name == ".." or name.startswith("../"):
        raise ImageError(f"image archive entry {member.name!r} points outside the archive")
    if not (member.isfile() or member.isdir() or member.issym()):
        raise ImageError(f"image archive entry {member.name!r} is not a file, folder or symlink")
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise ImageError(
                f"image archive symlink {member.name!r} points outside the archive "
                f"({member.linkname!r})"
            )
    return name


def _manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> dict:
    if MANIFEST not in members or not members[MANIFEST].isfile():
        raise ImageError(f"image archive has no {MANIFEST}: is it the output of `docker save`?")
    data = tar.extractfile(members[MANIFEST]).read(MANIFEST_MAX_BYTES + 1)
    try:
        manifest = untrusted_json.loads(data, max_bytes=MANIFEST_MAX_BYTES)
    except untrusted_json.UntrustedJsonError as error:
        raise ImageError(f"image archive {MANIFEST} {error}") from None
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        raise ImageError(f"image archive {MANIFEST} must describe exactly one image")
    entry = manifest[0]
    layers = entry.get("Layers")
    if not isinstance(entry.get("Config"), str) or not isinstance(layers, list) or not layers:
        raise ImageError(f"image archive {MANIFEST} lacks its Config or Layers")
    if len(layers) > MAX_IMAGE_LAYERS:
        raise ImageError(
            f"the image has {len(layers)} layers; Docker loads at most {MAX_IMAGE_LAYERS} (squash "
            "some of its build steps)"
        )
    for path in (entry["Config"], *layers):
        if not isinstance(path, str) or posixpath.normpath(path) not in members:
            raise ImageError(f"image archive {MANIFEST} names {path!r}, which is not in it")
    entry["Config"] = posixpath.normpath(entry["Config"])
    return entry


def _resolve(members: dict[str, tarfile.TarInfo], member: tarfile.TarInfo) -> tarfile.TarInfo:
    seen = set()
    while member.issym():
        name = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
        if name in seen or name not in members:
            raise ImageError(f"image archive symlink {member.name!r} does not resolve")
        seen.add(name)
        member = members[name]
    return member


def _sha256(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    digest = hashlib.sha256()
    stream = tar.extractfile(member)
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()
