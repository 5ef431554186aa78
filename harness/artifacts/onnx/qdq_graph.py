"""Q/DQ surgery on an exported ONNX graph: a float weight initializer replaced by
DequantizeLinear(int8 codes, s_w, axis), a bias by DequantizeLinear(int32 codes, s_x s_w), and a
QuantizeLinear → DequantizeLinear pair put on a node's input or output; then the nodes sorted
back into topological order.

ONNX QuantizeLinear computes clamp(round(x / s) + z, qmin, qmax) of the zero-point's storage type,
DequantizeLinear s (q - z).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.artifacts.onnx.export import ExportError
from harness.artifacts.onnx.graph import PASS_THROUGH_OPS, WEIGHTED_OPS
from harness.artifacts.onnx.placement import NON_NEGATIVE_OPS, QdqPlacement
from reference_methods.simulator.quantized_layers import QuantLayer


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes reading each tensor, by tensor name."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def compute_node(weight: str, consumers: dict[str, list[onnx.NodeProto]]) -> onnx.NodeProto:
    """The Conv/ConvTranspose/Gemm/MatMul using ``weight`` (directly or through a Transpose)."""
    frontier = [weight]
    while frontier:
        name = frontier.pop()
        for node in consumers.get(name, []):
            if node.op_type in WEIGHTED_OPS:
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


def add_initializer(graph: onnx.GraphProto, array: np.ndarray, name: str) -> str:
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def find_weight(
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


def quantize_weight(
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
        add_initializer(graph, np.ascontiguousarray(codes), f"{prefix}_quantized"),
        add_initializer(graph, scale, f"{prefix}_scale"),
        add_initializer(graph, np.zeros(scale.shape, np.int8), f"{prefix}_zero_point"),
    ]
    graph.node.append(
        helper.make_node(
            "DequantizeLinear", inputs, [weight_name], name=f"{prefix}_dequantize", axis=axis
        )
    )


def quantize_bias(
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
        add_initializer(graph, codes, f"{name}.bias_quantized"),
        add_initializer(graph, scale, f"{name}.bias_scale"),
        add_initializer(graph, np.zeros(scale.shape, np.int32), f"{name}.bias_zero_point"),
    ]
    graph.node.append(
        helper.make_node(
            "DequantizeLinear", inputs, [bias_name], name=f"{name}.bias_dequantize", axis=0
        )
    )


def insert_qdq(
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
    source_op = None if input_index is None else _source_op(graph, node.input[input_index])
    non_negative = source_op in NON_NEGATIVE_OPS
    scale_name = add_initializer(graph, np.array(scale, np.float32), f"{prefix}_scale")
    if zero_point is not None:
        zero = np.array(zero_point, np.uint8)
    else:
        zero = placement.zero_point_for(
            non_negative=non_negative,
            conv_reads_concat=node.op_type == "Conv" and source_op == "Concat",
        )
    zero_name = add_initializer(graph, zero, f"{prefix}_zero_point")
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


def _source_op(graph: onnx.GraphProto, tensor: str) -> str | None:
    """The type of the op that makes ``tensor``, looking through reshapes (None for a graph
    input or an initializer)."""
    producers = {name: node for node in graph.node for name in node.output}
    node = producers.get(tensor)
    while node is not None and node.op_type in PASS_THROUGH_OPS and node.input:
        node = producers.get(node.input[0])
    return None if node is None else node.op_type


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
