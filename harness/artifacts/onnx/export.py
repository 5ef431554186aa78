"""Export to ONNX: the FP32 reference network, and a harness-quantized network as Q/DQ ONNX.

The graph takes ``image`` (N, C, *roi) and returns ``logits`` (N, K, *roi) with a dynamic batch
dimension N, opset ``OPSET``. A quantized layer (per-channel or per-tensor symmetric weights of at
most 8 bits, static per-tensor activations) becomes

    x → QuantizeLinear/DequantizeLinear(s_x) → Conv(W = DequantizeLinear(codes, s_w, axis),
        b = DequantizeLinear(round(b / (s_x s_w)) int32)) → QuantizeLinear/DequantizeLinear(s_y)

so that an engine fuses it into an integer kernel. The weight codes and s_w, s_x are the
checkpoint's own; s_y = max|y| / 127 is calibrated on the track's calibration patches (an integer
kernel needs a requantized output; the simulation has none).

How symmetric activation codes are stored and where else they are requantized is the
``QdqPlacement`` (``harness.artifacts.onnx.placement``): one per engine, the integers the same in
all. A layer with asymmetric activations (``activation_zero_point``) keeps its own uint8
zero-point z from the checkpoint on its input quantizer in every placement, the grid the
simulator applies: ONNX QuantizeLinear computes clamp(round(x / s) + z, 0, 255), DequantizeLinear
s (q - z).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from harness.artifacts.onnx.graph import PASS_THROUGH_OPS
from harness.artifacts.onnx.placement import (
    NON_NEGATIVE_OPS,
    NORMALISATION_OPS,
    ORT_PLACEMENT,
    QdqPlacement,
)
from harness.errors import HarnessError
from harness.models.interface import INPUT_NAME, METADATA_PREFIX, OPSET, OUTPUT_NAME
from harness.models.reference import ModelSpec
from reference_methods.simulator.granularity import ActivationGranularity, WeightGranularity
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, QuantLayer, layer_kind
from reference_methods.simulator.quantizer import quantize_groups
from reference_methods.simulator.scheme import (
    QuantConfig,
    quantize,
    quantized_layers,
    target_layers,
)
from reference_methods.simulator.weight_format import QuantizedWeight, to_rows

FP32_TOLERANCE = 5e-3  # max |ONNX Runtime − PyTorch| / max |PyTorch| on FP32 logits
OUTPUT_QMAX = 127


class ExportError(HarnessError):
    """A network or quantized checkpoint that cannot be written as (Q/DQ) ONNX."""


def export_fp32(model: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``model`` as ONNX (input = the track's roi, dynamic batch) and check it."""
    proto = _torch_export(model, spec)
    set_metadata(proto, {"source": "harness export-onnx", "precision": "fp32"})
    return save_checked(proto, path)


_REFERENCE_EXPORTS: dict[tuple[str, str], Path] = {}
_REFERENCE_FOLDER: tempfile.TemporaryDirectory | None = None


def reference_onnx(
    model: nn.Module, spec: ModelSpec, model_dir: str | Path, weights_digest: str
) -> Path:
    """``export_fp32`` of a track's reference network, written once per process and weights
    (``model_dir`` and ``weights_digest``, the digest of its weights the caller already holds)
    into a temporary folder removed at exit: what an ONNX upload is matched against, the FP32 row
    of an ONNX board, and what a backend times an entry against. An ONNX reference's graph is its
    own file."""
    global _REFERENCE_FOLDER
    if not spec.has_torch_network:
        return Path(model_dir) / spec.weights_file
    key = (str(Path(model_dir).resolve()), weights_digest)
    if key not in _REFERENCE_EXPORTS or not _REFERENCE_EXPORTS[key].is_file():
        if _REFERENCE_FOLDER is None:
            _REFERENCE_FOLDER = tempfile.TemporaryDirectory(prefix="medquant-fp32-")
        path = Path(_REFERENCE_FOLDER.name) / f"fp32-{len(_REFERENCE_EXPORTS)}.onnx"
        _REFERENCE_EXPORTS[key] = export_fp32(model, spec, path)
    return _REFERENCE_EXPORTS[key]


def export_qdq(
    model: nn.Module,
    spec: ModelSpec,
    calibration: Iterable[torch.Tensor],
    path: str | Path,
    *,
    placement: QdqPlacement = ORT_PLACEMENT,
) -> Path:
    """Write a harness-quantized ``model`` as Q/DQ ONNX in ``placement`` (see module docstring)."""
    layers = quantized_layers(model)
    if not layers:
        raise ExportError("the model has no quantized layers")
    for name, layer in layers.items():
        _check_exportable(name, layer)
    calibration = list(calibration)
    output_scales = _output_scales(model, layers, calibration)
    proto = _torch_export(_float_twin(model, layers), spec)
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    for name, layer in layers.items():
        weight_name, transposed = _find_weight(initializers, name, layer)
        compute = _compute_node(weight_name, consumers)
        act_scale = None if layer.act_scale is None else float(layer.act_scale.reshape(()))
        _quantize_weight(graph, initializers, weight_name, name, layer, transposed)
        if act_scale is not None:
            zero = None
            if layer.act_zero_point is not None:
                zero = int(layer.act_zero_point.reshape(()))
            _insert_qdq(graph, compute, 0, f"{name}.input", act_scale, placement, zero)
            _quantize_bias(graph, initializers, compute, name, layer, act_scale)
            _insert_qdq(graph, compute, None, f"{name}.output", output_scales[name], placement)
    if placement.quantize_normalisations and any(
        layer.act_scale is not None for layer in layers.values()
    ):
        proto = _quantize_normalisations(sorted_graph(proto), calibration, placement)
    bits = {layer.spec.weight_bits for layer in layers.values()}
    act_bits = {layer.spec.activation_bits for layer in layers.values()}
    set_metadata(
        proto,
        {
            "source": "harness export-onnx",
            "placement": placement.name,
            "weight_bits": str(max(bits)),
            "activation_bits": "none" if None in act_bits else str(max(act_bits)),
        },
    )
    return save_checked(sorted_graph(proto), path)


def int8_model(
    model: nn.Module,
    calibration: Iterable[torch.Tensor],
    skip: tuple[str, ...] = (),
    activation_quantizer: str = "symmetric",
) -> nn.Module:
    """The standard INT8 deployment scheme as a harness-quantized model: symmetric per-channel
    8-bit RTN weights, static per-tensor 8-bit activations calibrated by max|x| (on the
    symmetric grid, or with ``activation_quantizer="asymmetric"`` the uint8 zero-point one over
    [min, max]); the layers named in ``skip`` stay in floating point."""
    config = QuantConfig(
        weight_bits=8,
        activation_bits=8,
        granularity="per-tensor",
        skip=skip,
        activation_quantizer=activation_quantizer,
    )
    weights = {}
    for name, layer in target_layers(model, config).items():
        axis = QUANT_LAYER_TYPES[layer_kind(layer)].weight_channel_axis
        rows = to_rows(layer.weight.detach().float(), axis)
        codes, scale = quantize_groups(rows, 8, rows.shape[1])
        weights[name] = QuantizedWeight(WeightGranularity.PER_CHANNEL, codes, scale)
    return quantize(model, config, calibration, weights=weights)


# The exporter logs every initializer it deduplicates and every constant it does not fold (INFO),
# and every torchvision op it cannot register (WARNING; torchvision is not a dependency): hundreds
# of lines per export in a worker's log.
_NOISY_EXPORTER_LOGGERS = {
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,
}


def _torch_export(model: nn.Module, spec: ModelSpec) -> onnx.ModelProto:
    example = torch.zeros((2, spec.in_channels, *spec.sliding_window.roi_size))
    for name, level in _NOISY_EXPORTER_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    try:
        program = torch.onnx.export(
            model.eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    except Exception as error:  # the exporter raises many unrelated types
        raise ExportError(f"torch.onnx.export failed for {spec.architecture}: {error}") from error
    return _strip_exporter_metadata(program.model_proto)


def _strip_exporter_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node stack traces and source names (about 0.1 MB for a UNet)."""
    graph = proto.graph
    for item in (*graph.node, *graph.initializer, *graph.value_info, *graph.input, *graph.output):
        del item.metadata_props[:]
        item.doc_string = ""
    return proto


def save_checked(proto: onnx.ModelProto, path: str | Path) -> Path:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"exported graph fails onnx.checker: {error}") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, path)
    return path


def set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in values.items():
        proto.metadata_props.add(key=METADATA_PREFIX + key, value=value)


def _check_exportable(name: str, layer: QuantLayer) -> None:
    spec = layer.spec
    problems = []
    if spec.weight_granularity not in (WeightGranularity.PER_CHANNEL, WeightGranularity.PER_TENSOR):
        problems.append(f"{spec.weight_granularity.value} weights")
    if spec.weight_zero_point:
        problems.append("affine weights")
    if spec.weight_bits > 8:
        problems.append(f"{spec.weight_bits}-bit weights")
    if spec.input_scale or spec.input_rotation or spec.lowrank_rank:
        problems.append("method extras (input scale, rotation or low-rank branch)")
    if spec.activation_bits is not None and (
        spec.activation_bits != 8
        or spec.activation_granularity is not ActivationGranularity.PER_TENSOR
        or spec.activation_scale != "static"
    ):
        problems.append(
            f"{spec.activation_bits}-bit {spec.activation_granularity.value} "
            f"{spec.activation_scale} activations"
        )
    if problems:
        raise ExportError(
            f"layer {name!r} has {', '.join(problems)}: Q/DQ ONNX export takes symmetric "
            "per-channel or per-tensor weights of at most 8 bits with static per-tensor 8-bit "
            "activations, symmetric or asymmetric (or weight-only)"
        )


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


@torch.no_grad()
def _output_scales(
    model: nn.Module, layers: dict[str, QuantLayer], calibration: Iterable[torch.Tensor]
) -> dict[str, float]:
    """s_y = max|y| / 127 of each activation-quantized layer's output over the calibration."""
    observed: dict[str, float] = {}
    hooks = []
    for name, layer in layers.items():
        if layer.act_scale is None:
            continue

        def record(_module, _inputs, output, name=name) -> None:
            observed[name] = max(observed.get(name, 0.0), float(output.abs().max()))

        hooks.append(layer.register_forward_hook(record))
    try:
        seen = 0
        if hooks:
            for batch in calibration:
                model.eval()(batch)
                seen += 1
        if hooks and not seen:
            raise ExportError("activation-quantized export needs calibration patches")
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (value / OUTPUT_QMAX if value > 0 else 1.0) for name, value in observed.items()}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _compute_node(weight: str, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto:
    """The Conv/ConvTranspose/Gemm/MatMul using ``weight`` (directly or through a Transpose)."""
    frontier = [weight]
    while frontier:
        name = frontier.pop()
        for node in consumers.get(name, []):
            if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                return node
            if node.op_type in ("Transpose", "Reshape", "Identity"):
                frontier.extend(node.output)
    raise ExportError(f"no Conv/ConvTranspose/Gemm/MatMul node uses {weight!r}")


def _replace_initializer(
    graph: onnx.GraphProto, initializers: dict[str, TensorProto], name: str
) -> TensorProto:
    tensor = initializers.pop(name)
    graph.initializer.remove(tensor)
    return tensor


def _add_initializer(graph: onnx.GraphProto, array: np.ndarray, name: str) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def _find_weight(
    initializers: dict[str, TensorProto], name: str, layer: QuantLayer
) -> tuple[str, bool]:
    """(initializer, transposed) holding ``name``'s weight: ``<name>.weight`` itself, or for a
    linear layer the W^T initializer the exporter folded a Transpose into (matched by value)."""
    if f"{name}.weight" in initializers:
        return f"{name}.weight", False
    if layer.kind == "linear":
        target = layer.dequantized_weight().detach().cpu().numpy().T
        for key, tensor in initializers.items():
            if tuple(tensor.dims) == target.shape and np.array_equal(
                numpy_helper.to_array(tensor), target
            ):
                return key, True
    raise ExportError(f"the exporter did not keep the weight of layer {name!r} as an initializer")


def _quantize_weight(
    graph: onnx.GraphProto,
    initializers: dict[str, TensorProto],
    weight_name: str,
    name: str,
    layer: QuantLayer,
    transposed: bool,
) -> None:
    """Replace the float initializer by DequantizeLinear(int8 codes, s_w, axis) of the same name
    (codes transposed, axis 1, when the graph holds W^T)."""
    _replace_initializer(graph, initializers, weight_name)
    codes = layer.weight_codes.detach().cpu().numpy().astype(np.int8)
    scale = layer.weight_scale.detach().cpu().numpy().astype(np.float32).reshape(-1)
    axis = layer.weight_channel_axis
    if transposed:
        codes, axis = codes.T, 1 - axis
    if scale.size == 1:
        scale = scale.reshape(())
    prefix = f"{name}.weight"
    inputs = [
        _add_initializer(graph, np.ascontiguousarray(codes), f"{prefix}_quantized"),
        _add_initializer(graph, scale, f"{prefix}_scale"),
        _add_initializer(graph, np.zeros(scale.shape, np.int8), f"{prefix}_zero_point"),
    ]
    graph.node.append(
        helper.make_node(
            "DequantizeLinear", inputs, [weight_name], name=f"{prefix}_dequantize", axis=axis
        )
    )


def _quantize_bias(
    graph: onnx.GraphProto,
    initializers: dict[str, TensorProto],
    compute: onnx.NodeProto,
    name: str,
    layer: QuantLayer,
    act_scale: float,
) -> None:
    """Bias b → DequantizeLinear(round(b / (s_x s_w)) int32, s_x s_w): what QLinearConv takes."""
    if compute.op_type not in ("Conv", "ConvTranspose") or len(compute.input) < 3:
        return
    bias_name = compute.input[2]
    if bias_name not in initializers:
        return
    _replace_initializer(graph, initializers, bias_name)
    bias = layer.bias.detach().cpu().numpy().astype(np.float64)
    scale = (act_scale * layer.weight_scale.detach().cpu().numpy().astype(np.float64)).reshape(-1)
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
    codes = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
    inputs = [
        _add_initializer(graph, codes, f"{name}.bias_quantized"),
        _add_initializer(graph, scale, f"{name}.bias_scale"),
        _add_initializer(graph, np.zeros(scale.shape, np.int32), f"{name}.bias_zero_point"),
    ]
    graph.node.append(
        helper.make_node(
            "DequantizeLinear", inputs, [bias_name], name=f"{name}.bias_dequantize", axis=0
        )
    )


def _insert_qdq(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    input_index: int | None,
    prefix: str,
    scale: float,
    placement: QdqPlacement,
    zero_point: int | None = None,
) -> None:
    """Put QuantizeLinear → DequantizeLinear on an input of ``node`` (``input_index``) or, with
    None, on its first output (consumers keep the original name): stored as the placement says
    for symmetric codes, or as uint8 with ``zero_point`` for an asymmetric grid."""
    if not math.isfinite(scale) or scale <= 0:
        raise ExportError(f"{prefix}: activation scale {scale} is not a positive finite number")
    non_negative = input_index is not None and _is_non_negative(graph, node.input[input_index])
    scale_name = _add_initializer(graph, np.array(scale, np.float32), f"{prefix}_scale")
    if zero_point is not None:
        zero = np.array(zero_point, np.uint8)
    else:
        zero = placement.zero_point_for(non_negative=non_negative)
    zero_name = _add_initializer(graph, zero, f"{prefix}_zero_point")
    if input_index is not None:
        source, target = node.input[input_index], f"{prefix}_dequantized"
        node.input[input_index] = target
    else:
        source, target = f"{prefix}_float", node.output[0]
        node.output[0] = source
    graph.node.extend(
        [
            helper.make_node(
                "QuantizeLinear",
                [source, scale_name, zero_name],
                [f"{prefix}_quantized"],
                name=f"{prefix}_quantize",
            ),
            helper.make_node(
                "DequantizeLinear",
                [f"{prefix}_quantized", scale_name, zero_name],
                [target],
                name=f"{prefix}_dequantize",
            ),
        ]
    )


def _is_non_negative(graph: onnx.GraphProto, tensor: str) -> bool:
    """Whether ``tensor`` is made by an op whose output is never negative (through reshapes)."""
    producers = {name: node for node in graph.node for name in node.output}
    node = producers.get(tensor)
    while node is not None and node.op_type in PASS_THROUGH_OPS and node.input:
        node = producers.get(node.input[0])
    return node is not None and node.op_type in NON_NEGATIVE_OPS


def sorted_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its nodes in topological order (appended Q/DQ nodes moved into place)."""
    graph = proto.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ExportError("the rewritten graph has a cycle or an undefined input")
        pending = waiting
    result = copy.deepcopy(proto)
    del result.graph.node[:]
    result.graph.node.extend(copy.deepcopy(n) for n in ordered)
    return result


def _quantize_normalisations(
    proto: onnx.ModelProto, calibration: list[torch.Tensor], placement: QdqPlacement
) -> onnx.ModelProto:
    """``proto`` with a quantizer (s = max|x| / 127 over ``calibration``, run through the graph
    itself) on the input of each normalisation (walking back through reshapes) and on its output,
    wherever no quantizer is yet."""
    from harness.artifacts.onnx.graph import GraphIndex

    index = GraphIndex(proto)
    consumers = _consumers(proto.graph)
    tensors = []
    for node in proto.graph.node:
        if node.op_type not in NORMALISATION_OPS:
            continue
        source, producer = index.follow(node.input[0])
        if producer is not None and producer.op_type != "DequantizeLinear":
            tensors.append(source)
        if not any(c.op_type == "QuantizeLinear" for c in consumers.get(node.output[0], [])):
            tensors.append(node.output[0])
    tensors = list(dict.fromkeys(tensors))
    if not tensors:
        return proto
    maxima = _tensor_maxima(proto, tensors, calibration)
    graph = proto.graph
    consumers = _consumers(graph)
    for position, tensor in enumerate(tensors):
        scale = maxima[tensor] / OUTPUT_QMAX if maxima[tensor] > 0 else 1.0
        prefix = f"normalisation_{position}"
        scale_name = _add_initializer(graph, np.array(scale, np.float32), f"{prefix}_scale")
        zero_name = _add_initializer(graph, placement.zero_point, f"{prefix}_zero_point")
        for consumer in consumers.get(tensor, []):
            for i, name in enumerate(consumer.input):
                if name == tensor:
                    consumer.input[i] = f"{prefix}_dequantized"
        graph.node.extend(
            [
                helper.make_node(
                    "QuantizeLinear", [tensor, scale_name, zero_name], [f"{prefix}_quantized"],
                    name=f"{prefix}_quantize",
                ),
                helper.make_node(
                    "DequantizeLinear", [f"{prefix}_quantized", scale_name, zero_name],
                    [f"{prefix}_dequantized"], name=f"{prefix}_dequantize",
                ),
            ]
        )  # fmt: skip
    return sorted_graph(proto)


def _tensor_maxima(
    proto: onnx.ModelProto, tensors: list[str], calibration: list[torch.Tensor]
) -> dict[str, float]:
    """max |t| of each of ``tensors`` over the calibration batches, computed by ONNX Runtime on
    ``proto`` with those tensors as extra outputs."""
    import onnxruntime as ort

    probe = copy.deepcopy(proto)
    for tensor in tensors:
        probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    maxima = dict.fromkeys(tensors, 0.0)
    for batch in calibration:
        outputs = session.run(tensors, {INPUT_NAME: batch.numpy().astype(np.float32)})
        for tensor, value in zip(tensors, outputs, strict=True):
            maxima[tensor] = max(maxima[tensor], float(np.abs(value).max()))
    return maxima
