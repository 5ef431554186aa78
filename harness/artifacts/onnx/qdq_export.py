"""Export a harness-quantized network as Q/DQ ONNX that computes what the simulator computes.

A quantized layer (symmetric per-channel or per-tensor weights of at most 8 bits, static
per-tensor 8-bit activations, the output requantized only where its spec says so) becomes

    x → QuantizeLinear/DequantizeLinear(s_x[, z]) → Conv(W = DequantizeLinear(codes, s_w, axis),
        b = DequantizeLinear(round(b / (s_x s_w)) int32)) [→ QuantizeLinear/DequantizeLinear(s_y)]

with every code and scale the simulated layer's own, and no other tensor quantized: the file's
logits equal the simulation's up to float summation order and the int32 bias rounding
(``harness.artifacts.onnx.agreement`` checks it). How symmetric codes are stored is the
``QdqPlacement`` (``harness.artifacts.onnx.placement``); a layer with asymmetric activations
keeps its own uint8 zero-point z on its input quantizer in every placement.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import onnx
import torch
from torch import nn

from harness.artifacts.onnx.agreement import check_simulation_agreement
from harness.artifacts.onnx.export import ExportError, save_checked, set_metadata, torch_export
from harness.artifacts.onnx.int8_scheme import check_exportable
from harness.artifacts.onnx.placement import ORT_PLACEMENT, QdqPlacement
from harness.artifacts.onnx.qdq_graph import (
    compute_node,
    consumers_of,
    find_weight,
    insert_qdq,
    quantize_bias,
    quantize_weight,
    sorted_graph,
)
from harness.models.reference import ModelSpec
from reference_methods.simulator.quantized_layers import QuantLayer
from reference_methods.simulator.scheme import quantized_layers


def export_qdq(
    model: nn.Module,
    spec: ModelSpec,
    calibration: Iterable[torch.Tensor],
    path: str | Path,
    *,
    placement: QdqPlacement = ORT_PLACEMENT,
) -> Path:
    """Write a harness-quantized ``model`` as Q/DQ ONNX in ``placement`` (see module docstring),
    checked to compute the simulation on the first ``calibration`` batch (an ExportError naming
    the first diverging tensor, and no file, when it does not)."""
    batch = next(iter(calibration), None)
    if batch is None:
        raise ExportError(
            "the Q/DQ export is checked against the simulation on a calibration batch"
        )
    layers = quantized_layers(model)
    if not layers:
        raise ExportError("the model has no quantized layers")
    for name, layer in layers.items():
        check_exportable(name, layer)
    proto = torch_export(_float_twin(model, layers), spec)
    _quantize_layers(proto.graph, layers, placement)
    bits = {layer.spec.weight_bits for layer in layers.values()}
    act_bits = {layer.spec.activation_bits for layer in layers.values()}
    output_bits = {layer.spec.output_bits for layer in layers.values()}
    set_metadata(
        proto,
        {
            "source": "harness export-onnx",
            "placement": placement.name,
            "weight_bits": str(max(bits)),
            "activation_bits": "none" if None in act_bits else str(max(act_bits)),
            "output_bits": "none" if output_bits == {None} else str(max(output_bits - {None})),
        },
    )
    path = save_checked(sorted_graph(proto), path)
    try:
        check_simulation_agreement(model, path, batch)
    except ExportError:
        path.unlink()
        raise
    return path


def _quantize_layers(
    graph: onnx.GraphProto, layers: dict[str, QuantLayer], placement: QdqPlacement
) -> None:
    """Rewrite each layer's weight, bias and activation quantizers into ``graph`` in place."""
    initializers = {t.name: t for t in graph.initializer}
    consumers = consumers_of(graph)
    for name, layer in layers.items():
        weight_name, transposed = find_weight(initializers, name, layer)
        compute = compute_node(weight_name, consumers)
        quantize_weight(graph, initializers, weight_name, name, layer, transposed)
        if layer.act_scale is None:
            continue
        act_scale = float(layer.act_scale.reshape(()))
        zero = None
        if layer.act_zero_point is not None:
            zero = int(layer.act_zero_point.reshape(()))
        insert_qdq(graph, compute, 0, f"{name}.input", act_scale, placement, zero)
        quantize_bias(graph, initializers, compute, name, layer, act_scale)
        if layer.output_scale is not None:
            output_scale = float(layer.output_scale.reshape(()))
            insert_qdq(graph, compute, None, f"{name}.output", output_scale, placement)


def _float_twin(model: nn.Module, layers: dict[str, QuantLayer]) -> nn.Module:
    """A copy of ``model`` whose quantized layers are float layers holding w_hat."""
    twin = copy.deepcopy(model).eval()
    for name, layer in layers.items():
        weight = layer.dequantized_weight().detach()
        bias = layer.bias is not None
        match layer.kind:
            case "conv3d":
                out_ch, in_per_group, *kernel = weight.shape
                module = nn.Conv3d(
                    in_per_group * layer.groups, out_ch, tuple(kernel), layer.stride,
                    layer.padding, layer.dilation, layer.groups, bias,
                )  # fmt: skip
            case "conv_transpose3d":
                in_ch, out_per_group, *kernel = weight.shape
                module = nn.ConvTranspose3d(
                    in_ch, out_per_group * layer.groups, tuple(kernel), layer.stride,
                    layer.padding, layer.output_padding, layer.groups, bias, layer.dilation,
                )  # fmt: skip
            case _:
                module = nn.Linear(weight.shape[1], weight.shape[0], bias)
        with torch.no_grad():
            module.weight.copy_(weight)
            if bias:
                module.bias.copy_(layer.bias)
        twin.set_submodule(name, module.eval())
    return twin
