"""Format version 2's packed integer tensors: the bytes on disk are the bits a layer reports.

A packed tensor is stored as a 1-D ``uint8`` tensor under its state_dict name, described in the
weights file's metadata (``PACKED_METADATA``, a JSON object {tensor name: descriptor}) by
``{"shape": [...], "bits": b, "offset": o}`` and, for group ids equal in every row of the layer's
rows view, ``"shared_rows": true``. The stored values are v - o, each taking b bits in a little
endian bit stream: value i occupies stream bits [i b, (i + 1) b), least significant bit first,
stream bit k being bit k mod 8 of byte k // 8 (so at 4 bits the low nibble of a byte is the first
value, as torchao and GPTQ-format checkpoints pack). The stream takes exactly ceil(count b / 8)
bytes, count being the number of stored values (the tensor's elements, or one row when the rows
are shared).

What ``save_checkpoint`` packs, per quantized layer:

| tensor            | bits                               | offset                               |
|-------------------|------------------------------------|--------------------------------------|
| weight_codes      | the layer's weight bits b          | -(2^(b-1) - 1) symmetric, 0 affine   |
| weight_zero_point | fewest that span [min, max]        | min                                  |
| weight_group_ids  | ceil(log2 G) (0 for one group)     | 0; one row of ids when rows are equal |
| act_zero_point    | fewest that span [min, max]        | min                                  |

Scales, biases and every float tensor are stored as they are, in their declared float dtype.
The reader accepts a packed descriptor only for these integer buffers of a declared layer; an
unpacked tensor is read as stored (and counted at its stored width).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from harness.errors import CheckpointError
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, LayerSpec
from reference_methods.simulator.weight_format import from_rows, to_rows

PACKED_METADATA = "medquant.packed"
"""Key of the weights file's metadata entry that describes its packed tensors."""
PACKABLE_BUFFERS = ("weight_codes", "weight_zero_point", "weight_group_ids", "act_zero_point")
MAX_PACKED_BITS = 32
"""Widest stored value: the decoded values are int32 (zero-points are int32 in the simulator)."""
_DESCRIPTOR_KEYS = {"shape", "bits", "offset"}
_MAX_DIMS = 8
_CHUNK_VALUES = 1 << 20
"""Values packed / unpacked per step (a multiple of 8, so every chunk starts on a byte)."""
_INT32 = torch.iinfo(torch.int32)
_DECODED_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32)


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (non-negative integers < 2^bits, any shape) as a little-endian bit stream."""
    flat = values.reshape(-1).astype(np.uint64)
    shifts = np.arange(bits, dtype=np.uint64)
    out = np.zeros(math.ceil(flat.size * bits / 8), dtype=np.uint8)
    for start in range(0, flat.size, _CHUNK_VALUES):
        chunk = flat[start : start + _CHUNK_VALUES]
        stream = ((chunk[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)
        packed = np.packbits(stream, bitorder="little")
        first = start * bits // 8
        out[first : first + packed.size] = packed
    return out


def unpack_bits(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The ``count`` int64 values of the ``bits``-bit stream ``data`` (inverse of pack_bits)."""
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK_VALUES):
        size = min(_CHUNK_VALUES, count - start)
        first = start * bits // 8
        chunk = data[first : first + math.ceil(size * bits / 8)]
        stream = np.unpackbits(chunk, count=size * bits, bitorder="little")
        out[start : start + size] = stream.reshape(size, bits).astype(np.int64) @ weights
    return out


def span_bits(low: int, high: int) -> int:
    """Fewest bits (at least 1) holding every integer of [low, high] as an offset from low."""
    return max(1, (high - low).bit_length())


def pack_state(
    tensors: dict[str, torch.Tensor], specs: Mapping[str, LayerSpec]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """(tensors with the quantized layers' integer buffers packed, their descriptors).

    Codes that do not fit the layer's declared weight bits raise CheckpointError.
    """
    stored = dict(tensors)
    descriptors = {}
    for name, spec in specs.items():
        for buffer in PACKABLE_BUFFERS:
            key = f"{name}.{buffer}"
            if key not in tensors:
                continue
            values = tensors[key].to(torch.int64)
            bits, offset = _storage_width(name, buffer, spec, values)
            descriptor = {"shape": list(values.shape), "bits": bits, "offset": offset}
            if buffer == "weight_group_ids":
                rows = to_rows(values, QUANT_LAYER_TYPES[spec.kind].weight_channel_axis)
                if bool((rows == rows[:1]).all()):
                    descriptor["shared_rows"] = True
                    values = rows[:1]
            stored[key] = torch.from_numpy(pack_bits((values - offset).numpy(), bits))
            descriptors[key] = descriptor
    return stored, descriptors


def _storage_width(
    name: str, buffer: str, spec: LayerSpec, values: torch.Tensor
) -> tuple[int, int]:
    """(bits, offset) at which ``buffer`` is packed (see the module table)."""
    low, high = (int(values.min()), int(values.max())) if values.numel() else (0, 0)
    if buffer == "weight_codes":
        bits = spec.weight_bits
        offset = 0 if spec.weight_zero_point else -(2 ** (bits - 1) - 1)
        if low < offset or high > offset + 2**bits - 1:
            raise CheckpointError(
                f"layer {name!r}: weight codes in [{low}, {high}] do not fit its declared "
                f"{bits}-bit weights"
            )
        return bits, offset
    if buffer == "weight_group_ids":
        if low < 0 or high >= spec.weight_groups:
            raise CheckpointError(
                f"layer {name!r}: group ids in [{low}, {high}] outside its {spec.weight_groups} "
                "groups"
            )
        return (spec.weight_groups - 1).bit_length(), 0
    return span_bits(low, high), low


def unpack_state(
    stored: dict[str, torch.Tensor], descriptors: Any, specs: Mapping[str, LayerSpec]
) -> dict[str, torch.Tensor]:
    """The tensors with every packed one decoded to integers of its declared shape.

    Refused (CheckpointError): descriptors that are not a JSON object of well-formed entries,
    name no integer buffer of a declared quantized layer, or whose tensor is not a 1-D uint8
    stream of exactly ceil(count b / 8) bytes; shared rows anywhere but group ids, or group ids
    shaped otherwise than their layer's codes.
    """
    if not isinstance(descriptors, dict):
        raise CheckpointError(f"weights metadata {PACKED_METADATA!r} must be a JSON object")
    tensors = dict(stored)
    for key, descriptor in descriptors.items():
        name, _, buffer = str(key).rpartition(".")
        if name not in specs or buffer not in PACKABLE_BUFFERS:
            raise CheckpointError(
                f"packed tensor {key!r} is not an integer buffer ({', '.join(PACKABLE_BUFFERS)}) "
                "of a quantized layer in the manifest"
            )
        shape, bits, offset, shared = _checked_descriptor(key, descriptor)
        spec = specs[name]
        axis = QUANT_LAYER_TYPES[spec.kind].weight_channel_axis
        if shared and buffer != "weight_group_ids":
            raise CheckpointError(f"packed tensor {key!r}: only group ids may share rows")
        if buffer == "weight_group_ids":
            _check_ids_shape(key, shape, _codes_shape(name, stored, descriptors), axis)
        elif bits == 0:
            raise CheckpointError(f"packed tensor {key!r}: only group ids may take 0 bits")
        count = math.prod(shape) // shape[axis] if shared else math.prod(shape)
        data = stored.get(key)
        need = math.ceil(count * bits / 8)
        if data is None or data.dtype != torch.uint8 or data.ndim != 1 or data.numel() != need:
            held = "nothing" if data is None else f"{data.dtype} {tuple(data.shape)}"
            raise CheckpointError(
                f"packed tensor {key!r} of {count} {bits}-bit values needs {need} uint8 bytes, "
                f"holds {held}"
            )
        values = torch.from_numpy(unpack_bits(data.numpy(), count, bits) + offset)
        values = values.to(_narrowest_dtype(offset, offset + 2**bits - 1))
        if shared:
            rows = values.reshape(1, count).expand(shape[axis], count)
            values = from_rows(rows, torch.Size(shape), axis).contiguous()
        tensors[key] = values.reshape(shape)
    return tensors


def _checked_descriptor(key: str, descriptor: Any) -> tuple[list[int], int, int, bool]:
    """(shape, bits, offset, shared_rows) of a well-formed descriptor, else CheckpointError."""
    if not isinstance(descriptor, dict) or not (
        _DESCRIPTOR_KEYS <= descriptor.keys() <= _DESCRIPTOR_KEYS | {"shared_rows"}
    ):
        raise CheckpointError(
            f"packed tensor {key!r}: descriptor must be {{shape, bits, offset[, shared_rows]}}"
        )
    shape, bits, offset = descriptor["shape"], descriptor["bits"], descriptor["offset"]
    shared = descriptor.get("shared_rows", False)
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or any(type(size) is not int or size < 1 for size in shape)
    ):
        raise CheckpointError(f"packed tensor {key!r}: shape must be a list of positive integers")
    if type(bits) is not int or not 0 <= bits <= MAX_PACKED_BITS:
        raise CheckpointError(f"packed tensor {key!r}: bits must be an integer in [0, 32]")
    if type(offset) is not int or offset < _INT32.min or offset + 2**bits - 1 > _INT32.max:
        raise CheckpointError(
            f"packed tensor {key!r}: offset {offset!r} with {bits} bits leaves int32"
        )
    if type(shared) is not bool:
        raise CheckpointError(f"packed tensor {key!r}: shared_rows must be true or false")
    return shape, bits, offset, shared


def _codes_shape(name: str, stored: dict[str, torch.Tensor], descriptors: dict) -> Any:
    """The declared shape of layer ``name``'s codes (packed or stored as is), None if absent."""
    key = f"{name}.weight_codes"
    descriptor = descriptors.get(key)
    if isinstance(descriptor, dict):
        return descriptor.get("shape")
    return list(stored[key].shape) if key in stored else None


def _check_ids_shape(key: str, shape: list[int], codes_shape: Any, axis: int) -> None:
    """Group ids (shared rows or not, at 0 bits for one group) have their layer's codes' shape
    and no larger -- a few stored bytes never decode to more ids than the layer has weights,
    whose codes take at least a bit each -- which has a channel axis."""
    if shape != codes_shape or len(shape) <= axis:
        raise CheckpointError(
            f"packed tensor {key!r}: group ids of shape {tuple(shape)} for codes of "
            f"shape {codes_shape if codes_shape is None else tuple(codes_shape)}"
        )


def _narrowest_dtype(low: int, high: int) -> torch.dtype:
    """The narrowest of int8, uint8, int16, int32 holding [low, high]."""
    for dtype in _DECODED_DTYPES:
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return torch.int32
