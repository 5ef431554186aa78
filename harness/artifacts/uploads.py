"""Uploaded artifacts: checked for size, type and path traversal before they are stored, and
unpacked on the worker into a private folder the harness reads (Django-free: the site passes its
limits and file objects).

A quantized checkpoint is stored as one zip holding ``manifest.json`` and
``weights.safetensors`` (at the top level or inside a single folder); a manifest + safetensors
pair uploaded as two files is packed into such a zip. Members are read by name, never extracted
wholesale, so no member path is ever written to disk.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import onnx

from harness.artifacts import untrusted_json
from harness.artifacts.checkpoint.storage import MANIFEST_MAX_BYTES, MANIFEST_NAME, WEIGHTS_NAME
from harness.artifacts.onnx.safety import (
    OnnxVerificationError,
    check_containers,
    check_external_data,
    check_node_count,
    first_line,
    parse_model,
)
from harness.errors import SubmissionError

SAFETENSORS_LENGTH_BYTES = 8
"""A safetensors file begins with its header's length, a little-endian u64."""
SAFETENSORS_HEADER_LIMIT = 16 * 1024 * 1024
"""Largest safetensors header read: ~100 bytes per tensor, so room for 100,000+ tensors (a 3D
segmentation network has a few hundred)."""
ONNX_SUFFIX = ".onnx"
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
"""Compression methods Python's zipfile reads (Deflate64, PPMd, … are refused by name)."""
ZIP_ENCRYPTED_FLAG = 0x1
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    struct.error,
    NotImplementedError,
    ValueError,
)
"""What reading a corrupt zip raises: bad CRC, truncated data, broken deflate streams."""
_CHUNK = 1 << 20
ZIP_ENTRY_LIMIT = 16
"""Most entries (files and folders) a checkpoint zip may list: it holds two files, in at most one
folder whose parents may be listed too. Counted from the central directory's records before
Python's zipfile builds an object per entry (3 million folder entries cost it 1.6 GB)."""
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"
_CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_MAX_COMMENT = 0xFFFF
_ZIP64_MARKERS = (0xFFFF, 0xFFFFFFFF)
"""Field values of the end-of-central-directory record that mean "see the ZIP64 record"."""


class UploadError(SubmissionError):
    """An upload that cannot be a valid artifact; the message is shown to the submitter."""


def check_size(size: int, max_bytes: int, what: str) -> None:
    """``size`` bytes fit ``max_bytes`` and are not zero."""
    if size > max_bytes:
        raise UploadError(
            f"{what} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB"
        )
    if size == 0:
        raise UploadError(f"{what} is empty")


def check_safetensors_header(stream: BinaryIO, size: int, what: str = WEIGHTS_NAME) -> None:
    """A safetensors file of ``size`` bytes starts with a little-endian u64 header length and a
    JSON object whose tensors' data offsets end exactly where the file does (read from
    ``stream``: only the header, never the tensors), so a truncated file is refused at once."""
    head = stream.read(SAFETENSORS_LENGTH_BYTES)
    if len(head) < SAFETENSORS_LENGTH_BYTES:
        raise UploadError(f"{what} is not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", head)
    if length > SAFETENSORS_HEADER_LIMIT:
        raise UploadError(
            f"{what} is not a safetensors file (bad header length: {length} bytes, the limit is "
            f"{SAFETENSORS_HEADER_LIMIT // 2**20} MiB)"
        )
    header_bytes = stream.read(length)
    if len(header_bytes) < length:
        raise UploadError(f"{what} is not a safetensors file (bad header length)")
    try:
        header = untrusted_json.loads(header_bytes, max_bytes=SAFETENSORS_HEADER_LIMIT)
    except untrusted_json.UntrustedJsonError as error:
        raise UploadError(f"{what} is not a safetensors file (its header {error})") from None
    if not isinstance(header, dict):
        raise UploadError(f"{what} is not a safetensors file (header is not an object)")
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and _offsets(entry)
    ]
    data_bytes = size - SAFETENSORS_LENGTH_BYTES - length
    if max(ends, default=0) != data_bytes:
        raise UploadError(
            f"{what} is truncated or corrupt: its header describes {max(ends, default=0):,} bytes "
            f"of tensor data, the file holds {data_bytes:,}"
        )


def _offsets(entry: dict) -> bool:
    offsets = entry.get("data_offsets")
    return (
        isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
    )


def check_manifest(data: bytes) -> None:
    """``data`` is a manifest within ``MANIFEST_MAX_BYTES``, depth and number limits."""
    try:
        manifest = untrusted_json.loads(data, max_bytes=MANIFEST_MAX_BYTES)
    except untrusted_json.UntrustedJsonError as error:
        raise UploadError(f"{MANIFEST_NAME} {error}") from None
    if not isinstance(manifest, dict) or "layers" not in manifest:
        raise UploadError(f"{MANIFEST_NAME} must be a JSON object with a 'layers' entry")


def _read_manifest(read, declared_size: int) -> bytes:
    """The manifest's bytes through ``read(n)``, refused once over ``MANIFEST_MAX_BYTES`` (its
    declared size is checked first; a lying one is caught by reading one byte more)."""
    if declared_size > MANIFEST_MAX_BYTES:
        raise UploadError(
            f"{MANIFEST_NAME} is {declared_size / 2**20:.1f} MiB; the limit is "
            f"{MANIFEST_MAX_BYTES / 2**20:g} MiB"
        )
    data = read(MANIFEST_MAX_BYTES + 1)
    if len(data) > MANIFEST_MAX_BYTES:
        raise UploadError(
            f"{MANIFEST_NAME} is larger than the {MANIFEST_MAX_BYTES / 2**20:g} MiB limit"
        )
    return data


def _member_names(archive: zipfile.ZipFile, max_bytes: int) -> dict[str, zipfile.ZipInfo]:
    """Checkpoint members by base name; refuses traversal, links, extra or missing files."""
    found: dict[str, zipfile.ZipInfo] = {}
    folders = set()
    for info in archive.infolist():
        path = PurePosixPath(info.filename.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or ":" in info.filename:
            raise UploadError(f"zip member {info.filename!r} has an unsafe path")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise UploadError(f"zip member {info.filename!r} is a symbolic link")
        if info.is_dir():
            continue
        if info.flag_bits & ZIP_ENCRYPTED_FLAG:
            raise UploadError(
                f"zip member {info.filename!r} is encrypted; upload the zip without a password"
            )
        if info.compress_type not in ZIP_METHODS:
            raise UploadError(
                f"zip member {info.filename!r} uses compression method {info.compress_type}, "
                f"which is not supported; use one of: {', '.join(ZIP_METHODS.values())}"
            )
        if path.name not in (MANIFEST_NAME, WEIGHTS_NAME):
            raise UploadError(
                f"unexpected file {info.filename!r} in the zip: a checkpoint holds only "
                f"{MANIFEST_NAME} and {WEIGHTS_NAME}"
            )
        if path.name in found:
            raise UploadError(f"the zip holds more than one {path.name}")
        folders.add(path.parent)
        found[path.name] = info
    missing = [n for n in (MANIFEST_NAME, WEIGHTS_NAME) if n not in found]
    if missing:
        raise UploadError(f"the zip is missing {' and '.join(missing)}")
    if len(folders) > 1:
        raise UploadError(f"{MANIFEST_NAME} and {WEIGHTS_NAME} must sit in the same folder")
    total = sum(i.file_size for i in found.values())
    check_size(total, max_bytes, "the unpacked checkpoint")
    return found


def _corrupt(error: Exception) -> UploadError:
    return UploadError(
        f"the zip is corrupt or truncated ({type(error).__name__}: {error}); re-create it"
    )


def _central_directory(stream: BinaryIO, size: int) -> tuple[int, int, int]:
    """(entries declared, start, size) of the zip's central directory, read from its end
    records only (ZIP64 where the classic fields overflow); the start is where the directory
    really lies (before the end records), as zipfile reads it, so data prepended to the zip
    does not shift it."""
    tail_size = min(size, _EOCD.size + _MAX_COMMENT)
    stream.seek(size - tail_size)
    tail = stream.read(tail_size)
    at = tail.rfind(_EOCD_SIGNATURE)
    if at < 0 or len(tail) - at < _EOCD.size:
        raise UploadError("the upload is not a zip file")
    end = size - tail_size + at
    _, _, _, _, entries, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    if entries not in _ZIP64_MARKERS and cd_size not in _ZIP64_MARKERS:
        return entries, end - cd_size, cd_size
    locator_at = end - _ZIP64_LOCATOR.size
    if locator_at < _ZIP64_EOCD.size:
        raise UploadError("the zip's ZIP64 end record is missing")
    stream.seek(locator_at)
    locator = stream.read(_ZIP64_LOCATOR.size)
    if locator[:4] != _ZIP64_LOCATOR_SIGNATURE:
        raise UploadError("the zip's ZIP64 end record is missing")
    record_at = locator_at - _ZIP64_EOCD.size
    stream.seek(record_at)
    record = stream.read(_ZIP64_EOCD.size)
    if record[:4] != _ZIP64_EOCD_SIGNATURE:
        raise UploadError("the zip's ZIP64 end record is corrupt")
    *_, entries, cd_size, _ = _ZIP64_EOCD.unpack(record)
    return entries, record_at - cd_size, cd_size


def check_zip_entry_count(stream: BinaryIO, size: int, limit: int = ZIP_ENTRY_LIMIT) -> int:
    """The number of entries of the zip in ``stream`` (``size`` bytes), refused with an
    UploadError once over ``limit``: the count its end record declares, then the central
    directory's records themselves, walked header by header up to ``limit`` + 1 (a lying
    count is caught; nothing per entry is kept), so a zip of millions of entries is refused
    after reading a few of them."""
    declared, start, cd_size = _central_directory(stream, size)
    too_many = UploadError(
        f"the zip lists more than {limit} entries (files and folders); a checkpoint zip holds "
        f"only {MANIFEST_NAME} and {WEIGHTS_NAME}"
    )
    if declared > limit:
        raise too_many
    if start < 0:
        raise UploadError("the zip's central directory lies outside the file")
    stream.seek(start)
    count = read = 0
    while read < cd_size:
        header = stream.read(_CENTRAL_HEADER.size)
        if len(header) < _CENTRAL_HEADER.size or header[:4] != _CENTRAL_SIGNATURE:
            raise UploadError("the zip's central directory is corrupt")
        fields = _CENTRAL_HEADER.unpack(header)
        name_length, extra_length, comment_length = fields[10:13]
        variable = name_length + extra_length + comment_length
        stream.seek(variable, 1)
        read += _CENTRAL_HEADER.size + variable
        count += 1
        if count > limit:
            raise too_many
    return count


def _read_checkpoint_zip(stream: BinaryIO, size: int, max_bytes: int) -> None:
    check_size(size, max_bytes, "the upload")
    stream.seek(0)
    if not zipfile.is_zipfile(stream):
        raise UploadError("the upload is not a zip file")
    check_zip_entry_count(stream, size)
    stream.seek(0)
    with zipfile.ZipFile(stream) as archive:
        members = _member_names(archive, max_bytes)
        info = members[MANIFEST_NAME]
        with archive.open(info) as manifest:
            check_manifest(_read_manifest(manifest.read, info.file_size))
        info = members[WEIGHTS_NAME]
        with archive.open(info) as weights:
            check_safetensors_header(weights, info.file_size)


def check_checkpoint_zip(stream: BinaryIO, size: int, max_bytes: int) -> None:
    """Raise UploadError unless ``stream`` is a zip holding a plausible checkpoint within
    ``max_bytes``: whatever is wrong with the archive (traversal, encryption, unsupported
    compression, bad CRC, truncated or broken deflate data) is an UploadError with the reason."""
    try:
        _read_checkpoint_zip(stream, size, max_bytes)
    except UploadError:
        raise
    except ZIP_ERRORS as error:
        raise _corrupt(error) from None
    finally:
        stream.seek(0)


def pack_checkpoint_pair(
    manifest: BinaryIO,
    manifest_size: int,
    weights: BinaryIO,
    weights_size: int,
    max_bytes: int,
    out: BinaryIO,
) -> None:
    """Zip a manifest + safetensors pair uploaded as two files (after checking both) into
    ``out``, streaming the weights (never the whole upload in memory)."""
    check_size(manifest_size + weights_size, max_bytes, "the upload")
    manifest.seek(0)
    manifest_bytes = _read_manifest(manifest.read, manifest_size)
    check_manifest(manifest_bytes)
    weights.seek(0)
    check_safetensors_header(weights, weights_size)
    weights.seek(0)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(MANIFEST_NAME, manifest_bytes)
        with archive.open(WEIGHTS_NAME, "w", force_zip64=True) as packed:
            shutil.copyfileobj(weights, packed, _CHUNK)
    out.seek(0)


def check_onnx_upload(stream: BinaryIO, name: str, size: int, max_bytes: int) -> None:
    """An ONNX submission is one ``.onnx`` file within ``max_bytes`` that parses, keeps its
    weights inside the file, and passes ``onnx.checker`` — checked at upload, so a truncated or
    corrupt file is refused at once (the worker verifies it fully against the track)."""
    check_size(size, max_bytes, "the upload")
    if not name.lower().endswith(ONNX_SUFFIX):
        raise UploadError("an ONNX submission must be a single .onnx file")
    stream.seek(0)
    try:
        model = parse_model(stream.read(max_bytes + 1))
        check_node_count(model.graph)
        check_containers(model)
        check_external_data(model)
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise UploadError(f"onnx.checker rejects the model: {first_line(error)}") from None
    except OnnxVerificationError as error:
        raise UploadError(str(error)) from None
    finally:
        stream.seek(0)


def sha256_of(stream: BinaryIO) -> str:
    """SHA-256 of the whole stream (read in chunks; left at its start)."""
    digest = hashlib.sha256()
    stream.seek(0)
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


def unpack_checkpoint(stream: BinaryIO, size: int, dest: Path, max_bytes: int) -> Path:
    """Write the checkpoint's two files to ``dest`` (re-checked; each stops at its declared
    size, which the limits checked) and return ``dest``."""
    check_checkpoint_zip(stream, size, max_bytes)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(stream) as archive:
            for name, info in _member_names(archive, max_bytes).items():
                written = 0
                with archive.open(info) as src, open(dest / name, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > info.file_size:
                            raise UploadError(
                                f"zip member {info.filename!r} inflates beyond its declared "
                                f"{info.file_size} bytes"
                            )
                        out.write(chunk)
    except UploadError:
        raise
    except ZIP_ERRORS as error:
        raise _corrupt(error) from None
    return dest
