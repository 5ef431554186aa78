"""A checkpoint's two files: reading and writing the manifest and the weights, within limits.

``read_checkpoint`` returns what a reader needs of both: the declared layers, the tensors as
stored (what the size counts) and the tensors decoded (version 2's packed integer buffers
unpacked, see ``packing``), which the loader and the verifier check. Version 1 stores every tensor
as it is; its files are read unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save_file

from harness.artifacts import untrusted_json
from harness.artifacts.checkpoint.packing import PACKED_METADATA, unpack_state
from harness.errors import CheckpointError
from reference_methods.simulator.quantized_layers import LayerSpec

FORMAT = "medquant-quantized-checkpoint"
VERSION = 2
"""The version written: integer buffers packed at their bits (``packing``)."""
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
MANIFEST_MAX_BYTES = 4 * 2**20
"""Largest manifest read: ~300 bytes per quantized layer, so room for 10,000+ layers."""
PACKED_METADATA_MAX_BYTES = 4 * 2**20
"""Largest packing description read: ~100 bytes per packed tensor."""
WEIGHTS_NAME = "weights.safetensors"
FOLDED_SCALE_TENSOR = "folded_input_scale"
"""``<layer>.folded_input_scale``: the input scale a method folded into the layer's producer,
declared for verification (see ``FOLDED_INPUT_SCALES``); inference does not read it."""
SUPPORTED_DTYPES = (
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
"""Tensor dtypes a checkpoint may hold: those the simulator computes with (unsigned 16-64-bit
integers and float8 formats lack the reductions verification needs)."""


@dataclass(frozen=True)
class CheckpointFiles:
    """A checkpoint as read (once): its manifest, declared layers, tensors as stored and decoded,
    the bytes of its two files and the SHA-256 of its weights file (what identifies it)."""

    manifest: dict[str, Any]
    specs: dict[str, LayerSpec]
    stored: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    file_bytes: int
    weights_sha256: str


def write_checkpoint(
    out_dir: Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor], packed: dict
) -> Path:
    """Write ``manifest`` and the stored ``tensors`` (their packing described by ``packed``)."""
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"reference is not JSON-serializable: {error}") from error
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {PACKED_METADATA: json.dumps(packed, sort_keys=True, separators=(",", ":"))}
    save_file(tensors, out_dir / WEIGHTS_NAME, metadata=metadata)
    (out_dir / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")
    return out_dir


def read_checkpoint(ckpt_dir: Path) -> CheckpointFiles:
    """The checkpoint in ``ckpt_dir``: manifest and layers checked, tensors read and decoded."""
    ckpt_dir = Path(ckpt_dir)
    manifest = read_manifest(ckpt_dir)
    specs = _layer_specs(manifest)
    stored, packed, digest = _read_tensors(ckpt_dir)
    if packed is not None and manifest["version"] < 2:
        raise CheckpointError(f"a version-1 checkpoint holds no packed tensors ({PACKED_METADATA})")
    tensors = stored if packed is None else unpack_state(stored, packed, specs)
    size = sum((ckpt_dir / name).stat().st_size for name in (MANIFEST_NAME, WEIGHTS_NAME))
    return CheckpointFiles(manifest, specs, stored, tensors, size, digest)


def read_manifest(ckpt_dir: Path) -> dict[str, Any]:
    """The parsed manifest, within ``MANIFEST_MAX_BYTES`` and ``untrusted_json``'s limits, of
    this format and a readable version."""
    path = ckpt_dir / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint has no {MANIFEST_NAME}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MANIFEST_MAX_BYTES + 1)
        manifest = untrusted_json.loads(data, max_bytes=MANIFEST_MAX_BYTES)
    except OSError as error:
        raise CheckpointError(f"{MANIFEST_NAME} is not readable: {error}") from error
    except untrusted_json.UntrustedJsonError as error:
        raise CheckpointError(f"{MANIFEST_NAME} {error}") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{MANIFEST_NAME} must be a JSON object")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"unknown checkpoint format {manifest.get('format')!r} (expected {FORMAT!r})"
        )
    version = manifest.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = " or ".join(map(str, READABLE_VERSIONS))
        raise CheckpointError(f"unsupported checkpoint version {version!r} (expected {readable})")
    return manifest


def _layer_specs(manifest: dict[str, Any]) -> dict[str, LayerSpec]:
    if not isinstance(manifest.get("reference", {}), dict):
        raise CheckpointError("manifest 'reference' must be a JSON object")
    layers = manifest.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise CheckpointError("manifest declares no quantized layers")
    specs = {}
    for name, entry in layers.items():
        try:
            specs[name] = LayerSpec.from_dict(entry)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"layer {name!r}: {error}") from error
    return specs


def _read_tensors(ckpt_dir: Path) -> tuple[dict[str, torch.Tensor], Any, str]:
    """(every tensor of the safetensors file, its parsed packing description or None, the file's
    SHA-256), the file read once; a dtype outside ``SUPPORTED_DTYPES`` is refused."""
    path = ckpt_dir / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint has no {WEIGHTS_NAME}")
    try:
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
        data = path.read_bytes()
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{WEIGHTS_NAME} is unreadable or corrupt: {error}") from error
    for key, tensor in tensors.items():
        if tensor.dtype not in SUPPORTED_DTYPES:
            supported = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
            raise CheckpointError(
                f"tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}, which "
                f"checkpoints do not support (supported: {supported})"
            )
    digest = hashlib.sha256(data).hexdigest()
    text = metadata.get(PACKED_METADATA)
    if text is None:
        return tensors, None, digest
    try:
        packed = untrusted_json.loads(text.encode(), max_bytes=PACKED_METADATA_MAX_BYTES)
    except untrusted_json.UntrustedJsonError as error:
        raise CheckpointError(f"{WEIGHTS_NAME} metadata {PACKED_METADATA!r} {error}") from None
    return tensors, packed, digest
