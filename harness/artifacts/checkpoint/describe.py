"""What a checkpoint really holds: its precision read from the tensors and its size from the
bytes stored.

Weight bits are the fewest bits that hold each layer's codes (symmetric codes |c| <= 2^(b-1)-1,
affine codes 0 <= c <= 2^b - 1); granularities come from the scale, zero-point and group-id
tensors, checked against the codes; static activation scales from ``act_scale`` tensors and their
grid from ``act_zero_point`` ones (``activation_quantizers``: symmetric / asymmetric). Activation
bits and dynamic rules are what the manifest declares, which is exactly what the simulator then
applies. ``weight_bits`` is the maximum over layers; ``activation_bits`` is the maximum, or None
when some quantized layer keeps floating-point activations.

Sizes are bytes as stored in the weights file (a version-2 packed tensor counts its packed bytes,
a version-1 int8 code one byte): ``size_bytes`` is the bytes of the checkpoint's two files;
``size_breakdown_bytes`` splits it into the quantized layers' ``SIZE_PARTS``, ``other`` (biases,
activation scales and zero-points, float layers, folded input scales) and ``container`` (the
safetensors header with its packing description, and the manifest). Each layer reports its own
share. ``bits_per_weight`` = 8 × (stored bytes of every ``SIZE_PARTS`` tensor of the quantized
layers) ÷ (their number of weights): codes, scales, zero-points, group ids, explicit input scales
and low-rank branches, per quantized weight -- the same definition as an ONNX artifact's (its
integer weight initializers with their scales and zero-points, at their storage width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.artifacts.checkpoint.checks import (
    check_activation_zero_point,
    check_extras,
    code_bits,
    layout_tensor,
)
from harness.artifacts.checkpoint.storage import FORMAT, CheckpointFiles, read_checkpoint
from harness.errors import CheckpointError
from reference_methods.simulator.granularity import WeightGranularity
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, LayerSpec
from reference_methods.simulator.quantizer import MAX_BITS, MIN_BITS
from reference_methods.simulator.weight_format import to_rows

SIZE_PARTS = {
    "weight_codes": ("weight_codes",),
    "weight_scales": ("weight_scale",),
    "weight_zero_points": ("weight_zero_point",),
    "weight_group_ids": ("weight_group_ids",),
    "input_scales": ("input_scale",),
    "lowrank_branch": ("lowrank_u", "lowrank_v"),
}
"""Stored parts of a quantized layer's weight (part: its tensors): what bits per weight count."""
OTHER_BUFFERS = ("bias", "act_scale", "act_zero_point")
"""A quantized layer's tensors outside its weight, counted under ``other``."""


def describe_checkpoint(ckpt_dir: Path | CheckpointFiles) -> dict[str, Any]:
    """Precision and size actually held by the checkpoint in ``ckpt_dir`` (see the module), or
    by the checkpoint already read."""
    files = ckpt_dir if isinstance(ckpt_dir, CheckpointFiles) else read_checkpoint(Path(ckpt_dir))
    layers = {
        name: _verified_layer(name, spec, files.tensors, files.stored)
        for name, spec in files.specs.items()
    }
    entries = list(layers.values())
    kinds = sorted({e["kind"] for e in entries})
    activation_bits = [e["activation_bits"] for e in entries]

    def distinct(key: str, kind: str | None = None) -> list[Any]:
        values = {e[key] for e in entries if kind is None or e["kind"] == kind}
        return sorted(values, key=lambda v: (v is not None, v or 0))

    weight_granularities = distinct("weight_granularity")
    activation_granularities = [g for g in distinct("activation_granularity") if g is not None]
    activations = "+".join(activation_granularities) or "none"
    breakdown = _breakdown(layers, files.stored, files.file_bytes)
    weights = sum(e["weights"] for e in entries)
    weight_bytes = sum(breakdown[part] for part in SIZE_PARTS)
    return {
        "format": FORMAT,
        "version": files.manifest["version"],
        "num_quantized_layers": len(layers),
        "weight_bits": max(e["weight_bits"] for e in entries),
        "activation_bits": None if None in activation_bits else max(activation_bits),
        "granularity": f"weights {'+'.join(weight_granularities)}; activations {activations}",
        "weight_bits_by_kind": {kind: distinct("weight_bits", kind) for kind in kinds},
        "activation_bits_by_kind": {kind: distinct("activation_bits", kind) for kind in kinds},
        "weight_granularities": weight_granularities,
        "activation_granularities": activation_granularities,
        "activation_scales": [s for s in distinct("activation_scale") if s is not None],
        "activation_quantizers": sorted(
            {e["activation_quantizer"] for e in entries if "activation_quantizer" in e}
        ),
        "size_bytes": files.file_bytes,
        "size_breakdown_bytes": breakdown,
        "quantized_weights": weights,
        "bits_per_weight": 8 * weight_bytes / weights if weights else 0.0,
        "layers": layers,
    }


def _breakdown(
    layers: dict[str, dict[str, Any]], stored: dict[str, torch.Tensor], file_bytes: int
) -> dict[str, int]:
    """The file's bytes by part (summing to ``file_bytes``); each layer's ``size_bytes`` by
    part becomes its total, with its ``bits_per_weight``."""
    entries = list(layers.values())
    breakdown = {part: sum(e["size_bytes"][part] for e in entries) for part in SIZE_PARTS}
    owned = {
        f"{name}.{tensor}"
        for name in layers
        for tensor in (*OTHER_BUFFERS, *(t for part in SIZE_PARTS.values() for t in part))
    }
    breakdown["other"] = sum(e["size_bytes"]["other"] for e in entries) + sum(
        _nbytes(t) for key, t in stored.items() if key not in owned
    )
    breakdown["container"] = file_bytes - sum(_nbytes(t) for t in stored.values())
    for entry in entries:
        parts = entry["size_bytes"]
        entry["bits_per_weight"] = 8 * sum(parts[part] for part in SIZE_PARTS) / entry["weights"]
        entry["size_bytes"] = sum(parts.values())
    return breakdown


def _verified_layer(
    name: str,
    spec: LayerSpec,
    tensors: dict[str, torch.Tensor],
    stored: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """Manifest-shaped entry whose weight bits and layout come from the (decoded) ``tensors``,
    with the layer's stored bytes by part (``size_bytes``) and its number of weights."""
    codes, scale, has_ids = _checked_weight_layout(name, spec, tensors)
    activation_granularity = _checked_activation_layout(name, spec, tensors)
    granularity = spec.weight_granularity
    if scale.numel() == 1 and not has_ids:
        granularity = WeightGranularity.PER_TENSOR
    entry = LayerSpec(
        spec.kind,
        _weight_bits(name, spec, codes),
        granularity,
        weight_group_size=(
            spec.weight_group_size if granularity is WeightGranularity.GROUP_WISE else None
        ),
        weight_groups=scale.shape[-1] if has_ids else None,
        weight_zero_point=spec.weight_zero_point,
        input_scale=spec.input_scale,
        input_rotation=spec.input_rotation,
        lowrank_rank=spec.lowrank_rank,
    ).as_dict()
    entry["activation_bits"] = spec.activation_bits
    entry["activation_granularity"] = (
        None if activation_granularity is None else str(activation_granularity)
    )
    entry["activation_scale"] = spec.activation_scale
    if spec.activation_bits is not None:
        entry["activation_quantizer"] = "asymmetric" if spec.activation_zero_point else "symmetric"
    group_ids = tensors.get(f"{name}.weight_group_ids")
    if group_ids is not None:
        rows = to_rows(group_ids, QUANT_LAYER_TYPES[spec.kind].weight_channel_axis)
        if bool((rows == rows[:1]).all()):
            entry["weight_group_ids_shared"] = "columns"
    entry["weights"] = codes.numel()
    entry["size_bytes"] = {
        part: sum(_nbytes(stored.get(f"{name}.{tensor}")) for tensor in part_tensors)
        for part, part_tensors in SIZE_PARTS.items()
    }
    entry["size_bytes"]["other"] = sum(
        _nbytes(stored.get(f"{name}.{buffer}")) for buffer in OTHER_BUFFERS
    )
    return entry


def _checked_weight_layout(
    name: str, spec: LayerSpec, tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(codes, scale, whether the layout has group ids), the scale, extras, zero-point and
    group-id shapes checked against the codes."""
    codes = tensors.get(f"{name}.weight_codes")
    scale = tensors.get(f"{name}.weight_scale")
    if codes is None or scale is None:
        raise CheckpointError(f"layer {name!r} has no weight_codes / weight_scale tensors")
    try:
        scale_shape = QUANT_LAYER_TYPES[spec.kind].weight_scale_shape(spec, tuple(codes.shape))
    except ValueError as error:
        raise CheckpointError(f"layer {name!r}: {error}") from error
    if tuple(scale.shape) != scale_shape:
        raise CheckpointError(
            f"layer {name!r}: weight_scale has shape {tuple(scale.shape)} but "
            f"{spec.weight_granularity.value} codes {tuple(codes.shape)} need {scale_shape}"
        )
    check_extras(name, spec, tensors)
    zero_point = layout_tensor(name, tensors, "weight_zero_point", spec.weight_zero_point)
    if zero_point is not None and zero_point.shape != scale.shape:
        raise CheckpointError(
            f"layer {name!r}: weight_zero_point has shape {tuple(zero_point.shape)}, its "
            f"weight_scale {tuple(scale.shape)}"
        )
    has_ids = spec.weight_granularity.has_group_ids
    group_ids = layout_tensor(name, tensors, "weight_group_ids", has_ids)
    if group_ids is not None and group_ids.shape != codes.shape:
        raise CheckpointError(
            f"layer {name!r}: weight_group_ids has shape {tuple(group_ids.shape)}, its "
            f"weight_codes {tuple(codes.shape)}"
        )
    return codes, scale, has_ids


def _checked_activation_layout(
    name: str, spec: LayerSpec, tensors: dict[str, torch.Tensor]
) -> str | None:
    """The activation granularity the tensors hold (static scales: per-tensor or per-channel by
    their count; else the declared one), act_scale / act_zero_point checked against the spec."""
    act_scale = tensors.get(f"{name}.act_scale")
    if (act_scale is not None) != (spec.activation_scale == "static"):
        declared = spec.activation_scale or "no"
        held = "holds" if act_scale is not None else "holds no"
        raise CheckpointError(
            f"layer {name!r} declares {declared} activation scales but {held} act_scale tensor"
        )
    act_zero = layout_tensor(
        name,
        tensors,
        "act_zero_point",
        spec.activation_zero_point and spec.activation_scale == "static",
    )
    if act_zero is not None:
        if act_zero.shape != act_scale.shape:
            raise CheckpointError(
                f"layer {name!r}: act_zero_point has shape {tuple(act_zero.shape)}, its "
                f"act_scale {tuple(act_scale.shape)}"
            )
        check_activation_zero_point(name, spec, act_zero)
    if act_scale is not None:
        return "per-tensor" if act_scale.numel() == 1 else "per-channel"
    return spec.activation_granularity


def _weight_bits(name: str, spec: LayerSpec, codes: torch.Tensor) -> int:
    """The fewest bits (at least ``MIN_BITS``) holding the codes; beyond ``MAX_BITS`` refused."""
    bits, max_code = code_bits(name, spec, codes)
    if bits > MAX_BITS:
        magnitude = "" if spec.weight_zero_point else " in magnitude"
        raise CheckpointError(
            f"layer {name!r} holds weight codes up to {max_code}{magnitude}, which need "
            f"{bits} bits; quantized weights take at most {MAX_BITS} bits"
        )
    return max(MIN_BITS, bits)


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()
