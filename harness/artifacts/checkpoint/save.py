"""Writing a quantized model as a checkpoint (format version 2, integer buffers packed)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from harness.artifacts.checkpoint.packing import pack_state
from harness.artifacts.checkpoint.storage import (
    FOLDED_SCALE_TENSOR,
    FORMAT,
    VERSION,
    write_checkpoint,
)
from harness.errors import CheckpointError
from reference_methods.simulator.layer_extras import FOLDED_INPUT_SCALES
from reference_methods.simulator.scheme import quantized_layers


def save_checkpoint(model: nn.Module, out_dir: Path, reference: dict | None = None) -> Path:
    """Write ``model``'s quantized layers and full state to ``out_dir``; return ``out_dir``.

    The quantized layers' codes, zero-points and group ids are packed at their bits
    (``packing``); every other tensor is stored as the model holds it.
    """
    layers = quantized_layers(model)
    if not layers:
        raise CheckpointError("the model has no quantized layers")
    for name, layer in layers.items():
        if layer.needs_calibration:
            raise CheckpointError(f"layer {name!r} has an uncalibrated static activation scale")
        if layer.spec.output_bits is not None:
            raise CheckpointError(
                f"layer {name!r} requantizes its output, a property of the INT8 Q/DQ export "
                "scheme (harness export-onnx --int8), not of the checkpoint format"
            )
    folds = getattr(model, FOLDED_INPUT_SCALES, {})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "reference": reference or {},
        "layers": {name: layer.description for name, layer in layers.items()},
    }
    if folds:
        manifest["folded_input_scales"] = {name: producer for name, (producer, _) in folds.items()}
    tensors = {
        key: value.detach().to("cpu").contiguous().clone()
        for key, value in model.state_dict().items()
    }
    for name, (_, factors) in folds.items():
        tensors[f"{name}.{FOLDED_SCALE_TENSOR}"] = factors.detach().to("cpu", torch.float32).clone()
    stored, packed = pack_state(tensors, {name: layer.spec for name, layer in layers.items()})
    return write_checkpoint(out_dir, manifest, stored, packed)
