"""Uploads on the site: the harness's Django-free upload checks (``harness.artifacts.uploads``,
``harness.containers.images``) under the site's limits, on Django's uploaded files."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files.base import File

from harness.artifacts import uploads
from harness.containers.images import check_image_upload
from harness.entry.upload import Submission as HarnessSubmission
from harness.models.interface import ONNX_FILE


def max_bytes() -> int:
    return settings.MEDQUANT_MAX_ARTIFACT_BYTES


def check_checkpoint_zip(stream: BinaryIO, size: int) -> None:
    uploads.check_checkpoint_zip(stream, size, max_bytes())


def pack_checkpoint_pair(manifest: File, weights: File) -> File:
    """A manifest + safetensors pair uploaded as two files, checked and zipped into a temporary
    file (closed with the returned File)."""
    packed = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the returned File)
    uploads.pack_checkpoint_pair(
        manifest, manifest.size, weights, weights.size, max_bytes(), packed
    )
    return File(packed, name="checkpoint.zip")


def check_onnx(upload: File) -> None:
    uploads.check_onnx_upload(upload, upload.name, upload.size, max_bytes())


def check_image_archive(upload: File) -> None:
    check_image_upload(upload, upload.size, settings.MEDQUANT_MAX_IMAGE_BYTES)


def sha256_of(upload: File) -> str:
    return uploads.sha256_of(upload)


def unpack_checkpoint(stream: BinaryIO, size: int, dest: Path) -> Path:
    return uploads.unpack_checkpoint(stream, size, dest, max_bytes())


def harness_upload(submission, workdir: Path) -> HarnessSubmission:
    """A submission's uploaded checkpoint (unpacked safely) or ONNX file, copied into
    ``workdir``, as the harness submission it is."""
    if submission.kind == "checkpoint":
        with submission.artifact.open("rb") as stream:
            ckpt = unpack_checkpoint(stream, submission.artifact.size, workdir / "checkpoint")
        return HarnessSubmission("checkpoint", checkpoint=ckpt)
    path = workdir / ONNX_FILE
    with submission.artifact.open("rb") as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out)
    return HarnessSubmission("onnx", onnx=path)
