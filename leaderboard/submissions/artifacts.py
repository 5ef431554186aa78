"""Uploaded artifacts: checked for size, type and path traversal before they are stored, and
unpacked on the worker into a private folder the harness reads.

A quantized checkpoint is stored as one zip holding ``manifest.json`` and
``weights.safetensors`` (at the top level or inside a single folder); a manifest + safetensors
pair uploaded as two files is packed into such a zip. Members are read by name, never extracted
wholesale, so no member path is ever written to disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from django.conf import settings
from django.core.files.base import ContentFile, File

from harness.artifacts.checkpoint import MANIFEST_NAME, WEIGHTS_NAME
from harness.containers.images import MANIFEST as IMAGE_MANIFEST

SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024
ONNX_SUFFIX = ".onnx"


class ArtifactError(ValueError):
    """An upload that cannot be a valid artifact; the message is shown to the submitter."""


def max_bytes() -> int:
    return settings.MEDQUANT_MAX_ARTIFACT_BYTES


def _check_size(size: int, what: str) -> None:
    if size > max_bytes():
        raise ArtifactError(
            f"{what} is {size / 2**20:.1f} MB; the limit is {max_bytes() / 2**20:.0f} MB"
        )
    if size == 0:
        raise ArtifactError(f"{what} is empty")


def check_safetensors_header(head: bytes, what: str = WEIGHTS_NAME) -> None:
    """A safetensors file starts with a little-endian u64 header length and a JSON object."""
    if len(head) < 8:
        raise ArtifactError(f"{what} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", head[:8])
    if length > SAFETENSORS_HEADER_LIMIT or len(head) < 8 + length:
        raise ArtifactError(f"{what} is not a safetensors file (bad header length)")
    try:
        header = json.loads(head[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{what} is not a safetensors file (header is not JSON)") from error
    if not isinstance(header, dict):
        raise ArtifactError(f"{what} is not a safetensors file (header is not an object)")


def check_manifest(data: bytes) -> None:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{MANIFEST_NAME} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or "layers" not in manifest:
        raise ArtifactError(f"{MANIFEST_NAME} must be a JSON object with a 'layers' entry")


def _member_names(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Checkpoint members by base name; refuses traversal, links, extra or missing files."""
    found: dict[str, zipfile.ZipInfo] = {}
    folders = set()
    for info in archive.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or ":" in info.filename:
            raise ArtifactError(f"zip member {info.filename!r} has an unsafe path")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise ArtifactError(f"zip member {info.filename!r} is a symbolic link")
        if info.is_dir():
            continue
        if path.name not in (MANIFEST_NAME, WEIGHTS_NAME):
            raise ArtifactError(
                f"unexpected file {info.filename!r} in the zip: a checkpoint holds only "
                f"{MANIFEST_NAME} and {WEIGHTS_NAME}"
            )
        if path.name in found:
            raise ArtifactError(f"the zip holds more than one {path.name}")
        folders.add(path.parent)
        found[path.name] = info
    missing = [n for n in (MANIFEST_NAME, WEIGHTS_NAME) if n not in found]
    if missing:
        raise ArtifactError(f"the zip is missing {' and '.join(missing)}")
    if len(folders) > 1:
        raise ArtifactError(f"{MANIFEST_NAME} and {WEIGHTS_NAME} must sit in the same folder")
    total = sum(i.file_size for i in found.values())
    _check_size(total, "the unpacked checkpoint")
    return found


def check_checkpoint_zip(stream: BinaryIO, size: int) -> None:
    """Raise ArtifactError unless ``stream`` is a zip holding a plausible checkpoint."""
    _check_size(size, "the upload")
    if not zipfile.is_zipfile(stream):
        raise ArtifactError("the upload is not a zip file")
    stream.seek(0)
    with zipfile.ZipFile(stream) as archive:
        members = _member_names(archive)
        check_manifest(archive.read(members[MANIFEST_NAME]))
        with archive.open(members[WEIGHTS_NAME]) as weights:
            check_safetensors_header(weights.read(SAFETENSORS_HEADER_LIMIT + 8))
    stream.seek(0)


def pack_checkpoint_pair(manifest: File, weights: File) -> ContentFile:
    """Zip a manifest + safetensors pair uploaded as two files (after checking both)."""
    _check_size(manifest.size + weights.size, "the upload")
    manifest_bytes = manifest.read()
    check_manifest(manifest_bytes)
    weights.seek(0)
    check_safetensors_header(weights.read(SAFETENSORS_HEADER_LIMIT + 8))
    weights.seek(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(MANIFEST_NAME, manifest_bytes)
        with archive.open(WEIGHTS_NAME, "w", force_zip64=True) as out:
            for chunk in weights.chunks():
                out.write(chunk)
    return ContentFile(buffer.getvalue(), name="checkpoint.zip")


def check_onnx(upload: File) -> None:
    _check_size(upload.size, "the upload")
    if not upload.name.lower().endswith(ONNX_SUFFIX):
        raise ArtifactError("an ONNX submission must be a single .onnx file")


def check_image_archive(upload: File) -> None:
    """A quantizer image upload is the output of ``docker save``: an uncompressed tar holding a
    ``manifest.json``, within ``MEDQUANT_MAX_IMAGE_BYTES``. The worker checks it fully (paths,
    manifest, config digest) before Docker loads it."""
    limit = settings.MEDQUANT_MAX_IMAGE_BYTES
    if upload.size > limit:
        size, limit_mb = upload.size / 2**20, limit / 2**20
        raise ArtifactError(f"the image archive is {size:.1f} MB; the limit is {limit_mb:.0f} MB")
    if upload.size == 0:
        raise ArtifactError("the image archive is empty")
    upload.seek(0)
    try:
        with tarfile.open(fileobj=upload, mode="r:") as tar:
            has_manifest = any(
                PurePosixPath(member.name) == PurePosixPath(IMAGE_MANIFEST) for member in tar
            )
    except (tarfile.TarError, EOFError) as error:
        raise ArtifactError(
            "the image archive is not an uncompressed tar file (make it with "
            f"`docker save -o quantizer.tar IMAGE`): {error}"
        ) from error
    finally:
        upload.seek(0)
    if not has_manifest:
        raise ArtifactError(
            f"the image archive has no {IMAGE_MANIFEST}: is it the output of `docker save`?"
        )


def sha256_of(upload: File) -> str:
    digest = hashlib.sha256()
    upload.seek(0)
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()


def unpack_checkpoint(stream: BinaryIO, size: int, dest: Path) -> Path:
    """Write the checkpoint's two files to ``dest`` (re-checked) and return ``dest``."""
    check_checkpoint_zip(stream, size)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(stream) as archive:
        for name, info in _member_names(archive).items():
            with archive.open(info) as src, open(dest / name, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return dest
