"""An OpenVINO model quantized with FakeQuantize nodes and compressed weights (what NNCF's
post-training quantization returns) written back as Q/DQ ONNX on the FP32 ONNX file it was read
from: the same graph, its weights replaced by the quantizer's integer codes and scales, its
activations quantized where the quantizer put a FakeQuantize. The result is an ordinary Q/DQ
upload, verified like any other.

OpenVINO's ONNX frontend keeps the ONNX tensor names on its output ports, which is how each
quantizer is placed:

- an activation FakeQuantize (levels L, input range = output range [lo, hi], per tensor) on the
  tensor T becomes QuantizeLinear → DequantizeLinear on T for all of T's consumers, with
  s = (hi - lo) / (L - 1) and zero-point -lo / s (an integer, else the quantizer is refused);
  stored as int8 with zero-point 0 when the range is the symmetric signed one ([-128 s, 127 s]),
  as uint8 otherwise: the same integers either way;
- a compressed weight (integer constant → Convert → [Subtract zero-point] → Multiply scale) of a
  Convolution, ConvolutionBackpropData or MatMul replaces the ONNX weight initializer by
  DequantizeLinear of the same codes and scales along their one non-trivial axis; a bias the
  quantizer changed (NNCF's bias correction) replaces the ONNX bias values;
- a weighted op left without an input quantizer because its input is a Concat of quantized
  tensors sharing one scale and zero-point (NNCF unifies the scales of a Concat's inputs) gets
  that quantizer on the Concat output: exact, the values already lie on that grid;
- a signed quantizer on a Concat output that a Conv reads, or on an InstanceNormalization input,
  is stored as uint8 with zero-point 128, the same codes (``OPENVINO_PLACEMENT`` does the same
  for the Concat): OpenVINO miscomputes int8 codes there (``harness.artifacts.onnx.placement``,
  ``SIGNED_CONCAT_DEVIATION``). NNCF's UNETR written back with int8 codes ran 0.164 (mean
  |Δ| / mean |logit|) off ONNX Runtime's output on OpenVINO, 0.075 with its 4 Concat outputs
  unsigned, 0.020 with its InstanceNormalization inputs unsigned too.

A quantizer that feeds only some consumers of a tensor, or any other form, raises
``ExportError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.artifacts.onnx.export import ExportError, save_checked, set_metadata
from harness.artifacts.onnx.graph import WEIGHTED_OPS, GraphIndex, weighted_ops
from harness.artifacts.onnx.placement import ACTIVATION_ZERO_POINT
from harness.artifacts.onnx.qdq_graph import sorted_graph

ZERO_POINT_TOLERANCE = 1e-2
"""|zero-point - nearest integer| a FakeQuantize range may show (float32 rounding of its ends)."""
SHAPE_ONLY_OPS = frozenset({"ShapeOf"})
"""Consumers that read only a tensor's shape, unaffected by where a quantizer sits."""
WEIGHTED_TYPES = frozenset(
    {
        "Convolution",
        "GroupConvolution",
        "ConvolutionBackpropData",
        "GroupConvolutionBackpropData",
        "MatMul",
    }
)
GROUPED_TYPES = frozenset({"GroupConvolution", "GroupConvolutionBackpropData"})
UNSIGNED_INPUT_OPS = frozenset({"InstanceNormalization"})
"""Ops whose int8-coded input OpenVINO misreads (see module docstring); stored unsigned."""


@dataclass(frozen=True)
class Quantizer:
    """A per-tensor activation quantizer: scale, zero-point and storage type."""

    scale: float
    zero_point: int
    dtype: int  # TensorProto.INT8 or TensorProto.UINT8

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        zero = np.array(self.zero_point, np.int8 if self.dtype == TensorProto.INT8 else np.uint8)
        return np.array(self.scale, np.float32), zero


def openvino_to_qdq(fp32_onnx: str | Path, quantized, out: str | Path, metadata: dict) -> Path:
    """Write ``quantized`` (an ``openvino.Model`` read from ``fp32_onnx`` and quantized) as Q/DQ
    ONNX at ``out`` (see module docstring); ``metadata`` is recorded in the file."""
    proto = onnx.load(str(fp32_onnx), load_external_data=False)
    graph = proto.graph
    names = _tensor_names(graph)
    activations: dict[str, Quantizer] = {}
    weights: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
    biases: dict[str, np.ndarray] = {}
    producer = {name: node for node in graph.node for name in node.output}
    for op in quantized.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            quantizer = _activation_quantizer(op)
            for tensor in _onnx_names(op.input_value(0), names, op):
                activations[tensor] = quantizer
        elif kind in WEIGHTED_TYPES:
            _map_weight(op, kind, names, producer, weights, biases)
    _complete_concat_inputs(proto, activations)
    _store_unsigned_where_openvino_misreads_int8(proto, activations)
    initializers = {t.name: t for t in graph.initializer}
    for weight, (codes, scale, zero) in weights.items():
        _replace_weight(graph, initializers, weight, codes, scale, zero)
    for bias, values in biases.items():
        tensor = initializers[bias]
        dims = list(tensor.dims)
        tensor.CopyFrom(numpy_helper.from_array(values.reshape(dims).astype(np.float32), bias))
    _insert_activation_quantizers(graph, activations)
    set_metadata(proto, metadata)
    return save_checked(sorted_graph(proto), out)


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    return (
        {name for node in graph.node for name in node.output}
        | {i.name for i in graph.input}
        | {t.name for t in graph.initializer}
    )


def _onnx_names(output, names: set[str], quantizer) -> list[str]:
    """The ONNX tensors an OpenVINO output port stands for; the port's other consumers must all
    go through ``quantizer`` (or read only its shape)."""
    found = sorted(output.get_names() & names)
    if not found:
        raise ExportError(
            f"FakeQuantize {quantizer.get_friendly_name()!r} quantizes a tensor the ONNX file does "
            "not name"
        )
    for target in output.get_target_inputs():
        node = target.get_node()
        if node is not quantizer and node.get_type_name() not in SHAPE_ONLY_OPS:
            raise ExportError(
                f"FakeQuantize {quantizer.get_friendly_name()!r} quantizes {found[0]!r} for some "
                f"of its consumers only ({node.get_type_name()} {node.get_friendly_name()!r} "
                "reads it unquantized)"
            )
    return found


def _constant(output) -> np.ndarray:
    node = output.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        raise ExportError(f"{node.get_friendly_name()!r} is not a constant")
    return np.asarray(node.get_data())


def _activation_quantizer(op) -> Quantizer:
    """The Q/DQ form of an activation FakeQuantize (see module docstring)."""
    name = op.get_friendly_name()
    levels = int(op.get_attributes()["levels"])
    low, high, out_low, out_high = (
        _constant(op.input_value(i)).astype(np.float64) for i in range(1, 5)
    )
    if low.size != 1 or high.size != 1:
        raise ExportError(f"FakeQuantize {name!r} is per-channel; activations must be per tensor")
    if not (np.allclose(low, out_low) and np.allclose(high, out_high)):
        raise ExportError(f"FakeQuantize {name!r} maps its input range onto another range")
    low, high = float(low.reshape(())), float(high.reshape(()))
    if levels != 256 or not high > low:
        raise ExportError(f"FakeQuantize {name!r} has {levels} levels over [{low}, {high}]")
    scale = (high - low) / (levels - 1)
    offset = -low / scale
    zero_point = round(offset)
    if abs(offset - zero_point) > ZERO_POINT_TOLERANCE or not 0 <= zero_point <= 255:
        raise ExportError(f"FakeQuantize {name!r}: zero-point {offset:.3f} is not an integer")
    if zero_point == 128:
        return Quantizer(scale, 0, TensorProto.INT8)
    return Quantizer(scale, zero_point, TensorProto.UINT8)


def _compressed_weight(output) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple | None]:
    """(codes, scale, zero-point or None, reshaped-to shape or None) of a compressed weight; a
    ``ExportError`` when the weight is in another form."""
    node = output.get_node()
    reshaped = None
    if node.get_type_name() == "Reshape":
        reshaped = tuple(int(d) for d in node.get_output_shape(0))
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Multiply":
        raise ExportError(
            f"weight {node.get_friendly_name()!r} is a {node.get_type_name()}, not a compressed "
            "integer constant"
        )
    first, second = node.input_value(0), node.input_value(1)
    if second.get_node().get_type_name() != "Constant":
        first, second = second, first
    scale = _constant(second).astype(np.float32)
    source = first.get_node()
    zero = None
    if source.get_type_name() == "Subtract":
        zero = _constant(source.input_value(1))
        source = source.input_value(0).get_node()
    if source.get_type_name() != "Convert":
        raise ExportError(f"weight {source.get_friendly_name()!r} is not a converted constant")
    codes = _constant(source.input_value(0))
    if codes.dtype not in (np.int8, np.uint8):
        raise ExportError(f"weight {source.get_friendly_name()!r} holds {codes.dtype} codes")
    return codes, scale, zero, reshaped


def _map_weight(op, kind: str, names: set[str], producer: dict, weights: dict, biases: dict):
    """Record the ONNX weight (and bias) that ``op``'s compressed weight replaces."""
    try:
        codes, scale, zero, reshaped = _compressed_weight(op.input_value(1))
    except ExportError:
        if kind != "MatMul":
            raise
        codes, scale, zero, reshaped = _compressed_weight(op.input_value(0))
    bias_add = None
    outputs = op.output(0).get_names() & names
    if not outputs:
        consumers = [
            t.get_node()
            for t in op.output(0).get_target_inputs()
            if t.get_node().get_type_name() not in SHAPE_ONLY_OPS
        ]
        if len(consumers) == 1 and consumers[0].get_type_name() == "Add":
            bias_add = consumers[0]
            outputs = bias_add.output(0).get_names() & names
    node = next((producer[n] for n in sorted(outputs) if n in producer), None)
    if node is None or node.op_type not in WEIGHTED_OPS:
        raise ExportError(
            f"OpenVINO {kind} {op.get_friendly_name()!r} maps to no ONNX weighted node"
        )
    weight = node.input[1]
    if node.op_type == "MatMul" and node.input[0] not in producer and node.input[1] in producer:
        weight = node.input[0]
    if kind in GROUPED_TYPES:
        groups, per_group = codes.shape[0], codes.shape[1]
        codes = codes.reshape(groups * per_group, *codes.shape[2:])
        scale = scale.reshape(groups * per_group, *scale.shape[2:])
        zero = None if zero is None else zero.reshape(groups * per_group, *zero.shape[2:])
    elif reshaped is not None:
        codes = codes.reshape(reshaped)
    weights[weight] = (codes, scale, zero)
    if bias_add is not None and node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 2:
        constant = next(
            (
                bias_add.input_value(i)
                for i in range(2)
                if bias_add.input_value(i).get_node().get_type_name() == "Constant"
            ),
            None,
        )
        if constant is not None:
            biases[node.input[2]] = _constant(constant).astype(np.float32).reshape(-1)


def _scale_axis(codes: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The scale as a 1-D (or scalar) array and the axis of ``codes`` it runs along."""
    shape = (1,) * (codes.ndim - scale.ndim) + tuple(scale.shape)
    axes = [i for i, d in enumerate(shape) if d != 1]
    if not axes:
        return scale.reshape(()), None
    if len(axes) > 1 or shape[axes[0]] != codes.shape[axes[0]]:
        raise ExportError(
            f"weight scale of shape {scale.shape} is not per channel of {codes.shape}"
        )
    return scale.reshape(-1), axes[0]


def _replace_weight(
    graph: onnx.GraphProto,
    initializers: dict[str, TensorProto],
    weight: str,
    codes: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray | None,
) -> None:
    """The ONNX weight initializer ``weight`` → DequantizeLinear(codes, scale, zero, axis)."""
    if weight not in initializers:
        raise ExportError(f"ONNX weight {weight!r} is not an initializer")
    target = tuple(initializers[weight].dims)
    if codes.shape != target:
        if codes.ndim == 2 and codes.T.shape == target:
            codes, scale = codes.T, scale.T
            zero = None if zero is None else zero.T
        else:
            raise ExportError(f"weight {weight!r}: codes {codes.shape} for a {target} weight")
    scale, axis = _scale_axis(codes, scale)
    if zero is None:
        zero = np.zeros(scale.shape, codes.dtype)
    else:
        zero = np.broadcast_to(zero.reshape(-1) if zero.size > 1 else zero.reshape(()), scale.shape)
    tensor = initializers.pop(weight)
    graph.initializer.remove(tensor)
    prefix = f"{weight}_nncf"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(codes), f"{prefix}_quantized"),
            numpy_helper.from_array(scale.astype(np.float32), f"{prefix}_scale"),
            numpy_helper.from_array(np.ascontiguousarray(zero.astype(codes.dtype)), f"{prefix}_zp"),
        ]
    )
    attributes = {} if axis is None else {"axis": axis}
    graph.node.append(
        helper.make_node(
            "DequantizeLinear",
            [f"{prefix}_quantized", f"{prefix}_scale", f"{prefix}_zp"],
            [weight],
            name=f"{prefix}_dequantize",
            **attributes,
        )
    )


def _complete_concat_inputs(proto: onnx.ModelProto, activations: dict[str, Quantizer]) -> None:
    """A weighted op reading an unquantized Concat of inputs that share one quantizer gets that
    quantizer on the Concat output (see module docstring)."""
    index = GraphIndex(proto)
    for op in weighted_ops(index):
        tensor = op.activation
        node = index.producer.get(tensor)
        if tensor in activations or node is None or node.op_type != "Concat":
            continue
        shared = {activations.get(name) for name in node.input}
        if len(shared) == 1 and None not in shared:
            activations[tensor] = shared.pop()


def _store_unsigned_where_openvino_misreads_int8(
    proto: onnx.ModelProto, activations: dict[str, Quantizer]
) -> None:
    """A signed quantizer on a Concat output that a Conv reads, or on an InstanceNormalization
    input, stored as uint8 with zero-point 128 (see module docstring)."""
    producer = GraphIndex(proto).producer
    read_by: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            read_by.setdefault(name, set()).add(node.op_type)
    for tensor, quantizer in activations.items():
        node, readers = producer.get(tensor), read_by.get(tensor, set())
        conv_reads_concat = node is not None and node.op_type == "Concat" and "Conv" in readers
        misread = conv_reads_concat or bool(readers & UNSIGNED_INPUT_OPS)
        if misread and quantizer.dtype == TensorProto.INT8:
            activations[tensor] = Quantizer(
                quantizer.scale, ACTIVATION_ZERO_POINT, TensorProto.UINT8
            )


def _insert_activation_quantizers(
    graph: onnx.GraphProto, activations: dict[str, Quantizer]
) -> None:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    for position, (tensor, quantizer) in enumerate(sorted(activations.items())):
        if tensor in outputs:
            raise ExportError(f"a quantizer on the graph output {tensor!r} is not supported")
        prefix = f"nncf_activation_{position}"
        scale, zero = quantizer.arrays()
        graph.initializer.extend(
            [
                numpy_helper.from_array(scale, f"{prefix}_scale"),
                numpy_helper.from_array(zero, f"{prefix}_zero_point"),
            ]
        )
        for consumer in consumers.get(tensor, []):
            for i, name in enumerate(consumer.input):
                if name == tensor:
                    consumer.input[i] = f"{prefix}_dequantized"
        graph.node.extend(
            [
                helper.make_node(
                    "QuantizeLinear",
                    [tensor, f"{prefix}_scale", f"{prefix}_zero_point"],
                    [f"{prefix}_quantized"],
                    name=f"{prefix}_quantize",
                ),
                helper.make_node(
                    "DequantizeLinear",
                    [f"{prefix}_quantized", f"{prefix}_scale", f"{prefix}_zero_point"],
                    [f"{prefix}_dequantized"],
                    name=f"{prefix}_dequantize",
                ),
            ]
        )
