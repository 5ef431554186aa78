"""Read-only views of an ONNX graph: producers and constants by tensor name, the weight and
activation paths of every weighted op (Conv, ConvTranspose, Gemm, MatMul), the quantizer grid an
activation lies on and its MACs.

MACs per sample (batch dimension excluded): Conv = output voxels × weight elements; ConvTranspose =
input voxels × weight elements; Gemm/MatMul = output rows × weight elements.

Grid-preserving ops (``GraphIndex.grid_sources``): an op whose every output value is one of its
input's values, or 0.0 (which every affine grid with an integer zero-point holds), keeps its input
on the integer grid a DequantizeLinear put it on: the pass-through ops, Slice, Split, MaxPool (its
values, not its indices), Resize in ``nearest`` mode, Pad copying values (``edge``, ``reflect``,
``wrap``) or padding with 0, and Concat of inputs that all lie on one per-tensor grid (the same
scale, zero-point and integer type), as NNCF writes a Concat: one shared quantizer for its inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# ops a weight or an activation may pass through unchanged in value between its quantizer and use
PASS_THROUGH_OPS = ("Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
INTEGER_BITS = {
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
    TensorProto.INT8: 8,
    TensorProto.UINT8: 8,
    TensorProto.INT16: 16,
    TensorProto.UINT16: 16,
    TensorProto.INT32: 32,
    TensorProto.UINT32: 32,
}


GRID_COPYING_OPS = frozenset({*PASS_THROUGH_OPS, "Slice", "Split", "MaxPool"})
"""Ops whose first input's values are all their first output reads (see module docstring)."""
COPYING_PAD_MODES = frozenset({"edge", "reflect", "wrap"})
"""Pad modes that only repeat the input's values."""

QUANTIZERS = ("QuantizeLinear", "DequantizeLinear")
"""The Q/DQ pair every quantized tensor passes through."""
FLOAT_BITS = {
    TensorProto.FLOAT: 32,
    TensorProto.FLOAT16: 16,
    TensorProto.BFLOAT16: 16,
    TensorProto.DOUBLE: 64,
}
OTHER_BITS = FLOAT_BITS | {TensorProto.INT64: 64, TensorProto.BOOL: 8}


def dtype_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


class GraphIndex:
    """Producers, constants and value shapes and element types of a model's main graph, by
    tensor name."""

    def __init__(self, model: onnx.ModelProto, shapes: onnx.ModelProto | None = None) -> None:
        graph = model.graph
        self.model = model
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
        self.constants: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        self.constants[node.output[0]] = attr.t
        self.shapes: dict[str, list[int | None]] = {}
        self.types: dict[str, int] = {}
        source = shapes if shapes is not None else model
        for info in (*source.graph.input, *source.graph.value_info, *source.graph.output):
            tensor = info.type.tensor_type
            if tensor.elem_type:
                self.types[info.name] = tensor.elem_type
            if tensor.HasField("shape"):
                self.shapes[info.name] = [
                    d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
                ]
        for name, tensor in self.constants.items():
            self.shapes[name] = list(tensor.dims)
            self.types[name] = tensor.data_type

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.constants[name])

    def follow(self, name: str) -> tuple[str, onnx.NodeProto | None]:
        """Walk back from ``name`` through pass-through ops: (tensor name, its producer or None)."""
        seen = set()
        while name in self.producer and name not in seen:
            seen.add(name)
            node = self.producer[name]
            if node.op_type not in PASS_THROUGH_OPS or not node.input:
                return name, node
            name = node.input[0]
        return name, self.producer.get(name)

    def grid_sources(self, name: str) -> list[onnx.NodeProto] | None:
        """The DequantizeLinear nodes whose values the tensor ``name`` copies, walked back
        through grid-preserving ops (see module docstring; whether a Concat's sources share one
        grid is the caller's to decide); None when some value of it is computed otherwise."""
        found: list[onnx.NodeProto] = []
        pending, seen = [name], set()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            node = self.producer.get(current)
            if node is None:
                return None
            if node.op_type == "DequantizeLinear":
                found.append(node)
                continue
            sources = self._grid_inputs(node, current)
            if sources is None:
                return None
            pending.extend(sources)
        return found

    def _grid_inputs(self, node: onnx.NodeProto, output: str) -> list[str] | None:
        """The inputs whose values ``node``'s ``output`` copies, None when it computes new ones."""
        if node.domain not in ("", "ai.onnx") or not node.input or not node.input[0]:
            return None
        kind = node.op_type
        first_output = node.output[0] == output
        if kind == "Concat":
            return [name for name in node.input if name]
        if kind in GRID_COPYING_OPS and (first_output or kind == "Split"):
            return [node.input[0]]
        if kind == "Resize" and first_output and _attribute(node, "mode", b"nearest") == b"nearest":
            return [node.input[0]]
        if kind == "Pad" and first_output:
            mode = _attribute(node, "mode", b"constant").decode()
            if mode in COPYING_PAD_MODES or (mode == "constant" and self._pads_with_zero(node)):
                return [node.input[0]]
        return None

    def _pads_with_zero(self, node: onnx.NodeProto) -> bool:
        """Whether a constant-mode Pad's value is 0 (absent, or a constant 0)."""
        if _attribute(node, "value", 0.0) != 0.0:  # opset < 11 carries it as an attribute
            return False
        if len(node.input) < 3 or not node.input[2]:
            return True
        source, _ = self.follow(node.input[2])
        return source in self.constants and not np.any(self.array(source))

    def is_constant(self, name: str) -> bool:
        """True when ``name`` is computed from initializers/Constants only (no graph input)."""
        stack, seen = [name], set()
        while stack:
            current = stack.pop()
            if current in seen or current in self.constants or not current:
                continue
            seen.add(current)
            node = self.producer.get(current)
            if node is None:
                return False
            stack.extend(node.input)
        return True


def _attribute(node: onnx.NodeProto, name: str, default):
    """The value of ``node``'s attribute ``name`` (int, float or bytes), ``default`` if absent."""
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


@dataclass(frozen=True)
class WeightedOp:
    """A weighted op: its node, which input carries the weight and which the activation."""

    node: onnx.NodeProto
    weight_input: int
    activation_input: int

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def weight(self) -> str:
        return self.node.input[self.weight_input]

    @property
    def activation(self) -> str:
        return self.node.input[self.activation_input]


def weighted_ops(index: GraphIndex) -> list[WeightedOp]:
    """Conv/ConvTranspose/Gemm/MatMul nodes with a constant weight input, in graph order.
    A MatMul of two activations (e.g. attention scores) has no weight and is not listed."""
    ops = []
    for node in index.model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHTED_OPS:
            continue
        if len(node.input) < 2:
            continue
        if node.op_type == "MatMul" and index.is_constant(node.input[0]):
            ops.append(WeightedOp(node, 0, 1))
        elif node.op_type != "MatMul" or index.is_constant(node.input[1]):
            ops.append(WeightedOp(node, 1, 0))
    return ops


def macs_per_sample(op: WeightedOp, index: GraphIndex, weight_shape: list[int]) -> int | None:
    """MACs of one sample through ``op`` (see module docstring); None when shapes are unknown."""
    weight_elements = math.prod(weight_shape)
    kind = op.node.op_type
    if kind in ("Conv", "ConvTranspose"):
        shape = index.shapes.get(op.node.output[0] if kind == "Conv" else op.activation)
        if not shape or len(shape) < 3 or any(d is None for d in shape[2:]):
            return None
        return math.prod(shape[2:]) * weight_elements
    shape = index.shapes.get(op.node.output[0])
    if not shape or any(d is None for d in shape[1:-1]):
        return None
    return math.prod(shape[1:-1]) * weight_elements


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with inferred value shapes (best effort: unknown ops leave shapes unknown)."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return model
