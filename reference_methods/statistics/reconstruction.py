"""Layer reconstruction error: how far a quantized weight moves a layer's outputs on given inputs.

    error(W, Q) = ||X W^T - X Q^T||_F^2 = tr((W - Q) H (W - Q)^T),  H = X^T X,

with W, Q the (m, n) rows views of the float and dequantized weights and X the layer's inputs (see
``gram``); a grouped conv sums its conv groups. It is the objective COMQ minimises.
"""

import copy
from collections.abc import Iterable

import torch
from torch import nn

from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, layer_kind
from reference_methods.simulator.scheme import quantized_layers
from reference_methods.simulator.weight_format import to_rows
from reference_methods.statistics.gram import collect_grams


def layer_reconstruction_error(
    gram: torch.Tensor, weight: torch.Tensor, quantized: torch.Tensor
) -> float:
    """tr((W - Q) H (W - Q)^T) in float64; ``gram`` (conv groups, n, n), row i in conv group
    i // (m / groups)."""
    conv_groups, columns, _ = gram.shape
    difference = (weight.to(torch.float64) - quantized.to(torch.float64)).reshape(
        conv_groups, -1, columns
    )
    return float(((difference @ gram.to(torch.float64)) * difference).sum())


def reconstruction_errors(
    quantized_model: nn.Module, fp32_model: nn.Module, calibration: Iterable[torch.Tensor]
) -> dict[str, float]:
    """Error of every quantized layer's dequantized weight against the FP32 layer of the same
    name, on that layer's inputs in the FP32 model over the calibration batches. Layers with a
    method's extras (input scale, rotation, low-rank branch) are refused: their weight is not the
    FP32 layer's in the FP32 basis."""
    layers = quantized_layers(quantized_model)
    transformed = [
        name
        for name, layer in layers.items()
        if layer.spec.input_scale or layer.spec.input_rotation or layer.spec.lowrank_rank
    ]
    if transformed:
        raise ValueError(f"layers with method extras have no plain weight error: {transformed}")
    reference = copy.deepcopy(fp32_model).eval()
    modules = dict(reference.named_modules())
    missing = [name for name in layers if layer_kind(modules.get(name)) is None]
    if missing:
        raise ValueError(f"no float layer in the FP32 model for: {', '.join(missing)}")
    grams = collect_grams(reference, {name: modules[name] for name in layers}, calibration)
    errors = {}
    for name, layer in layers.items():
        float_layer = modules[name]
        axis = QUANT_LAYER_TYPES[layer_kind(float_layer)].weight_channel_axis
        weight = to_rows(float_layer.weight.detach(), axis)
        errors[name] = layer_reconstruction_error(
            grams[name], weight, layer.quantized_weight().dequantize()
        )
    return errors
