"""The standard INT8 deployment scheme as a harness-quantized model, and which quantized layers Q/DQ
ONNX can express.

The scheme: symmetric 8-bit RTN weights (per output channel, or per tensor), static per-tensor
8-bit activations calibrated by max|x| (symmetric, or the uint8 zero-point grid over [min, max]),
and — where the engine needs it for integer kernels — each layer's output requantized to 8 bits
(s_y = max|y| / 127): ONNX Runtime fuses DequantizeLinear → Conv → QuantizeLinear into
QLinearConv only with a quantizer on the output. The requantization is part of the simulated
model (``LayerSpec.output_bits``), so the simulator scores exactly what the export writes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from harness.artifacts.onnx.export import ExportError
from reference_methods.simulator.granularity import ActivationGranularity, WeightGranularity
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, QuantLayer, layer_kind
from reference_methods.simulator.quantizer import quantize_groups
from reference_methods.simulator.scheme import QuantConfig, quantize, target_layers
from reference_methods.simulator.weight_format import QuantizedWeight, to_rows

INT8_BITS = 8
EXPORTABLE_WEIGHTS = (WeightGranularity.PER_CHANNEL, WeightGranularity.PER_TENSOR)


def int8_model(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    skip: tuple[str, ...] = (),
    activation_quantizer: str = "symmetric",
    *,
    weight_granularity: WeightGranularity = WeightGranularity.PER_CHANNEL,
    requantize_outputs: bool = True,
) -> nn.Module:
    """``model`` under the standard INT8 scheme (module docstring): RTN weights at
    ``weight_granularity``, static per-tensor activations on the ``activation_quantizer`` grid,
    outputs requantized when ``requantize_outputs`` (the placement's ``requantize_outputs``);
    the layers named in ``skip`` stay in floating point."""
    weight_granularity = WeightGranularity(weight_granularity)
    if weight_granularity not in EXPORTABLE_WEIGHTS:
        raise ExportError(
            f"the INT8 scheme has per-channel or per-tensor weights, not {weight_granularity.value}"
        )
    config = QuantConfig(
        weight_bits=INT8_BITS,
        activation_bits=INT8_BITS,
        granularity="per-tensor",
        skip=skip,
        activation_quantizer=activation_quantizer,
        output_bits=INT8_BITS if requantize_outputs else None,
    )
    weights = {}
    for name, layer in target_layers(model, config).items():
        axis = QUANT_LAYER_TYPES[layer_kind(layer)].weight_channel_axis
        rows = to_rows(layer.weight.detach().float(), axis)
        if weight_granularity is WeightGranularity.PER_TENSOR:
            codes, scale = quantize_groups(rows.reshape(1, -1), INT8_BITS, rows.numel())
            codes = codes.reshape(rows.shape)
        else:
            codes, scale = quantize_groups(rows, INT8_BITS, rows.shape[1])
        weights[name] = QuantizedWeight(weight_granularity, codes, scale)
    return quantize(model, config, calibration, weights=weights)


def check_exportable(name: str, layer: QuantLayer) -> None:
    """Raise ExportError naming what of layer ``name``'s spec Q/DQ ONNX cannot express."""
    spec = layer.spec
    problems = []
    if spec.weight_granularity not in EXPORTABLE_WEIGHTS:
        problems.append(f"{spec.weight_granularity.value} weights")
    if spec.weight_zero_point:
        problems.append("affine weights")
    if spec.weight_bits > INT8_BITS:
        problems.append(f"{spec.weight_bits}-bit weights")
    if spec.input_scale or spec.input_rotation or spec.lowrank_rank:
        problems.append("method extras (input scale, rotation or low-rank branch)")
    if spec.activation_bits is not None and (
        spec.activation_bits != INT8_BITS
        or spec.activation_granularity is not ActivationGranularity.PER_TENSOR
        or spec.activation_scale != "static"
    ):
        problems.append(
            f"{spec.activation_bits}-bit {spec.activation_granularity.value} "
            f"{spec.activation_scale} activations"
        )
    if spec.output_bits not in (None, INT8_BITS):
        problems.append(f"outputs requantized to {spec.output_bits} bits")
    if problems:
        raise ExportError(
            f"layer {name!r} has {', '.join(problems)}: Q/DQ ONNX export takes symmetric "
            "per-channel or per-tensor weights of at most 8 bits with static per-tensor 8-bit "
            "activations, symmetric or asymmetric (or weight-only), outputs in float or "
            "requantized to 8 bits"
        )
