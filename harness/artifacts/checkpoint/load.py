"""Loading a checkpoint onto the reference architecture: never unpickles; rebuilds the quantized
model on a copy of the architecture and refuses, with a CheckpointError naming the layer, anything
that does not fit it exactly."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.artifacts.checkpoint.checks import (
    check_activation_zero_point,
    check_code_bits,
    check_extras,
    check_finite,
    integer_range,
    preview,
)
from harness.artifacts.checkpoint.storage import (
    FOLDED_SCALE_TENSOR,
    CheckpointFiles,
    read_checkpoint,
)
from harness.errors import CheckpointError
from reference_methods.simulator.layer_extras import FOLDED_INPUT_SCALES
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, LayerSpec, layer_kind

SCALE_BUFFERS = ("weight_scale", "act_scale", "input_scale")
"""A quantized layer's float buffers that must be positive."""
_INT32 = torch.iinfo(torch.int32)


def load_checkpoint(ckpt_dir: Path | CheckpointFiles, reference_model: nn.Module) -> nn.Module:
    """A deep copy of ``reference_model`` carrying the checkpoint's quantized layers and state
    (``ckpt_dir``: its folder, or the checkpoint already read)."""
    files = ckpt_dir if isinstance(ckpt_dir, CheckpointFiles) else read_checkpoint(ckpt_dir)
    specs = files.specs
    tensors = dict(files.tensors)
    model = copy.deepcopy(reference_model).eval()
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        check_extras(name, spec, tensors)
        layer = modules.get(name) if name else None
        if layer is None:
            raise CheckpointError(
                f"layer {name!r} in the manifest does not exist in the reference architecture"
            )
        if layer_kind(layer) != spec.kind:
            raise CheckpointError(
                f"layer {name!r} is declared {spec.kind} but the reference architecture has "
                f"{type(layer).__name__} there"
            )
        try:
            quantized = QUANT_LAYER_TYPES[spec.kind](layer, spec)
        except ValueError as error:
            raise CheckpointError(f"layer {name!r}: {error}") from error
        model.set_submodule(name, quantized)
    folds = _read_folds(files.manifest, tensors, specs, modules)
    model.load_state_dict(_checked_state(tensors, model.state_dict(), specs), strict=True)
    if folds:
        setattr(model, FOLDED_INPUT_SCALES, folds)
    return model


def _read_folds(
    manifest: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    specs: dict[str, LayerSpec],
    modules: dict[str, nn.Module],
) -> dict[str, tuple[str, torch.Tensor]]:
    """The declared folded input scales {layer: (producer, s)}, their tensors taken out of
    ``tensors``; each must name a quantized layer, a module of the architecture and hold one
    positive, finite factor per input channel of the layer."""
    declared = manifest.get("folded_input_scales", {})
    if not isinstance(declared, dict):
        raise CheckpointError("manifest 'folded_input_scales' must map layers to producers")
    folds = {}
    for name, producer in declared.items():
        factors = tensors.pop(f"{name}.{FOLDED_SCALE_TENSOR}", None)
        if name not in specs or not isinstance(producer, str) or producer not in modules:
            raise CheckpointError(
                f"folded input scale of {name!r} into {producer!r}: both must be layers of the "
                "architecture, the first a quantized one"
            )
        layer = modules[name]
        width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        if factors is None or tuple(factors.shape) != (width,):
            raise CheckpointError(
                f"layer {name!r} declares a folded input scale but holds no {FOLDED_SCALE_TENSOR} "
                f"of shape ({width},)"
            )
        check_finite(f"layer {name!r}: {FOLDED_SCALE_TENSOR}", factors, positive=True)
        folds[name] = (producer, factors.to(torch.float32))
    return folds


def _checked_state(
    tensors: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    specs: dict[str, LayerSpec],
) -> dict[str, torch.Tensor]:
    """Tensors validated against the architecture's state_dict and cast to its dtypes."""
    missing = sorted(expected.keys() - tensors.keys())
    if missing:
        raise CheckpointError(f"missing tensors: {preview(missing)}")
    unexpected = sorted(tensors.keys() - expected.keys())
    if unexpected:
        raise CheckpointError(f"unexpected tensors: {preview(unexpected)}")
    state = {}
    for key, want in expected.items():
        got = tensors[key]
        owner, _, buffer = key.rpartition(".")
        spec = specs.get(owner)
        label = f"layer {owner!r}: {buffer}" if spec is not None else f"tensor {key!r}"
        if got.shape != want.shape:
            raise CheckpointError(
                f"{label} has shape {tuple(got.shape)} but the layer needs {tuple(want.shape)}"
            )
        if spec is not None and buffer == "weight_codes":
            check_code_bits(owner, spec, got)
        elif spec is not None and buffer == "weight_zero_point":
            low, high = integer_range(owner, buffer, got)
            if low < _INT32.min or high > _INT32.max:
                raise CheckpointError(f"layer {owner!r}: weight_zero_point does not fit in int32")
        elif spec is not None and buffer == "act_zero_point":
            check_activation_zero_point(owner, spec, got)
        elif spec is not None and buffer == "weight_group_ids":
            low, high = integer_range(owner, buffer, got)
            if low < 0 or high >= spec.weight_groups:
                raise CheckpointError(
                    f"layer {owner!r}: weight_group_ids must lie in [0, {spec.weight_groups}) for "
                    f"its {spec.weight_groups} declared groups, found {low if low < 0 else high}"
                )
        elif got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise CheckpointError(f"{label} has dtype {got.dtype}, expected {want.dtype}")
        elif got.dtype.is_floating_point:
            check_finite(label, got, positive=spec is not None and buffer in SCALE_BUFFERS)
        state[key] = got.to(want.dtype)
    return state
