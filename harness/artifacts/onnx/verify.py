"""Verification of a submitted ONNX file before it is scored, and its verified precision.

Checks, in order, each failure an ``OnnxVerificationError`` naming the tensor or node: file size;
a parsable protobuf; at most ``MAX_NODES`` nodes; no model-local functions, subgraphs or
external data; allowed opset domains and op types (default domain + com.microsoft quantization
ops); sane declared dimensions and initializer sizes; an acyclic graph at most
``MAX_GRAPH_DEPTH`` deep with every input defined; the track's input/output names, element type
and shapes; Q/DQ scale inputs present; ``onnx.checker`` (full check, with shape inference); every
tensor's inferred size within ``MAX_ELEMENTS_PER_INPUT_ELEMENT`` times the input's; static,
positive, finite Q/DQ scales; every weighted op (Conv, ConvTranspose, Gemm, MatMul with a
constant operand) takes its weight through DequantizeLinear from integer codes (an integer
initializer, or QuantizeLinear of a float initializer as TensorRT-style tools write it) that need
at most the track's weight bits, float weights covering at most the track's share of MACs; every
activation quantizer at most the track's activation bits (and, with an activation
limit, every quantized op's input quantized); metadata precision claims not below what is carried.

Bits of a weight = min(storage bits, fewest bits spanning its code range max - min), so int8
storage holding codes in [-7, 7] counts as 4-bit; activation bits = storage bits of the quantizer.
A weight stored as a float initializer and quantized at run time (QuantizeLinear → DequantizeLinear,
as ModelOpt writes it) counts at its code bits against the weight limit and is reported as stored
(``weight_storage``, ``run_time_quantized_weight_layers``). Float weights and activations count at
their float width: a 32-bit limit admits an FP32 graph. Opset imports no node uses are ignored.
Each activation quantizer's grid is reported (``activation_quantizer``: symmetric, or asymmetric
with a zero-point).
Effective bits per weight over the quantized weighted ops = 8 × the bytes stored for them (codes at
their storage width -- int8 codes are 8 bits even when they span 4 --, or the float width of a
weight stored as float and quantized at run time, + scales and zero-points at their storage width)
÷ their number of weights: the same definition as a checkpoint's (``checkpoint.describe``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from harness.artifacts.onnx.graph import (
    INTEGER_BITS,
    GraphIndex,
    WeightedOp,
    dtype_name,
    infer_shapes,
    macs_per_sample,
    weighted_ops,
)
from harness.artifacts.onnx.identity import check_reference_network
from harness.artifacts.onnx.interface import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME
from harness.errors import SubmissionError
from harness.models.reference import ModelSpec

if TYPE_CHECKING:
    from torch import nn

    from harness.track.spec import TrackSpec

DEFAULT_MAX_BYTES = 512 * 2**20
MAX_DIM = 2**16  # no input/output dimension of a segmentation graph is larger
MAX_ELEMENTS = 2**31  # no single tensor is larger
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
MAX_NODES = 50_000
"""Most nodes a graph may have: the shipped models' Q/DQ exports have a few thousand; every node
costs verification and session creation time (300,000 Identity nodes cost 74 s and 2 GB)."""
MAX_GRAPH_DEPTH = 10_000
"""Longest chain of nodes from an input to an output (the shipped exports: a few hundred)."""
MAX_ELEMENTS_PER_INPUT_ELEMENT = 256
"""Largest intermediate tensor, inferred shapes included, per element of the track's input (one
sample): a segmentation network's widest tensor is its full-resolution stage at 16-64 channels,
so 256 leaves room while a graph that ``Expand``s its logits thousands of times is refused
before it runs."""
ALLOWED_DOMAINS = {"": "default", "ai.onnx": "default", "com.microsoft": "com.microsoft"}
DEFAULT_OPS = frozenset(
    [
        "Abs",
        "Add",
        "And",
        "ArgMax",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "CastLike",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GroupNormalization",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "InstanceNormalization",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pad",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "Range",
        "Reciprocal",
        "ReduceL2",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "Round",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Sin",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Tile",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)
MICROSOFT_OPS = frozenset(
    [
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
        "QGemm",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "Gelu",
        "FastGelu",
        "BiasGelu",
    ]
)
QUANTIZERS = ("QuantizeLinear", "DequantizeLinear")
FLOAT_BITS = {
    TensorProto.FLOAT: 32,
    TensorProto.FLOAT16: 16,
    TensorProto.BFLOAT16: 16,
    TensorProto.DOUBLE: 64,
}
OTHER_BITS = FLOAT_BITS | {TensorProto.INT64: 64, TensorProto.BOOL: 8}


class OnnxVerificationError(SubmissionError):
    """A submitted ONNX file that is malformed, unsafe or not what it claims to be."""


@dataclass(frozen=True)
class OnnxInterface:
    """The input and output a track's ONNX must have: (N, C, *roi) → (N, K, *roi), float32."""

    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]

    @classmethod
    def for_model(cls, spec: ModelSpec) -> OnnxInterface:
        roi = spec.sliding_window.roi_size
        return cls(INPUT_NAME, (spec.in_channels, *roi), OUTPUT_NAME, (len(spec.labels), *roi))


@dataclass(frozen=True)
class PrecisionLimits:
    """The most a submission may use: weight / activation bits (None: no limit), bytes, and the
    fraction of weighted-op MACs that may keep float weights (and float inputs) under a weight
    limit, e.g. an output head left in floating point by the quantizer."""

    weight_bits: int | None = None
    activation_bits: int | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_float_mac_fraction: float = 0.0


def verify_for_track(
    path: str | Path, spec: TrackSpec, model_spec: ModelSpec, reference: nn.Module
) -> dict:
    """Verify an ONNX submission against a track: its interface and precision limits, then that it
    is the track's reference network (and, on a closed track, post-training quantized from its
    FP32 weights; see ``identity``)."""
    limits = PrecisionLimits(
        weight_bits=spec.weight_bits,
        activation_bits=spec.activation_bits,
        max_float_mac_fraction=spec.max_float_mac_fraction,
    )
    report, submitted = _verified(path, OnnxInterface.for_model(model_spec), limits)
    from harness.artifacts.onnx.export import reference_onnx

    expected = onnx.load(str(reference_onnx(reference, model_spec, spec.model_dir)))
    check_reference_network(submitted, expected, closed=spec.division == "closed")
    return report | {"reference_network": "matched", "division": spec.division}


def verify_onnx(path: str | Path, interface: OnnxInterface, limits: PrecisionLimits) -> dict:
    """Verify the file at ``path`` (see module docstring); its verified precision report."""
    return _verified(path, interface, limits)[0]


def _verified(
    path: str | Path, interface: OnnxInterface, limits: PrecisionLimits
) -> tuple[dict, onnx.ModelProto]:
    """The verified precision report of the file at ``path`` and the model it parsed."""
    path = Path(path)
    size = _check_size(path, limits.max_bytes)
    model = _parse(path.read_bytes())
    _check_node_count(model.graph)
    _check_containers(model)
    _check_external_data(model)
    opset = _check_domains_and_ops(model)
    _check_declared_dims(model)
    _check_graph_structure(model.graph)
    _check_interface(model.graph, interface)
    _check_quantizer_inputs(model.graph)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise OnnxVerificationError(
            f"onnx.checker rejects the model: {_first_line(error)}"
        ) from None
    index = GraphIndex(model, infer_shapes(model))
    _check_inferred_sizes(index, interface)
    _check_quantizer_scales(index)
    layers = [_weighted_layer(op, index, limits) for op in weighted_ops(index)]
    _check_float_layers(layers, limits)
    activation_bits = _check_activation_quantizers(index, limits)
    report = _report(layers, activation_bits, size, opset)
    _check_claims(model, report, layers)
    return report, model


def _check_size(path: Path, max_bytes: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise OnnxVerificationError(f"ONNX file {path} does not exist") from None
    if size > max_bytes:
        raise OnnxVerificationError(
            f"ONNX file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB"
        )
    return size


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as error:
        raise OnnxVerificationError(
            f"not a valid ONNX file: the protobuf cannot be parsed ({error}); truncated or corrupt"
        ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise OnnxVerificationError("not a valid ONNX file: it holds no graph nodes")
    return model


def _check_node_count(graph: onnx.GraphProto) -> None:
    if len(graph.node) > MAX_NODES:
        raise OnnxVerificationError(
            f"the graph has {len(graph.node)} nodes; the limit is {MAX_NODES}"
        )


def _check_inferred_sizes(index: GraphIndex, interface: OnnxInterface) -> None:
    """No tensor the graph computes, by its inferred shape (batch excluded: unknown dimensions
    count as 1), exceeds ``MAX_ELEMENTS_PER_INPUT_ELEMENT`` times the track's input."""
    limit = MAX_ELEMENTS_PER_INPUT_ELEMENT * math.prod(interface.input_shape)
    for name, dims in index.shapes.items():
        if name in index.constants:
            continue
        elements = math.prod(d for d in dims if d is not None)
        if elements > limit:
            raise OnnxVerificationError(
                f"tensor {name!r} would hold {elements} elements per sample (inferred shape "
                f"{['N' if d is None else d for d in dims]}); at most {limit} "
                f"({MAX_ELEMENTS_PER_INPUT_ELEMENT}x the track's input) are allowed"
            )


def _all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and its subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _all_nodes(sub)


def _check_containers(model: onnx.ModelProto) -> None:
    if model.functions:
        raise OnnxVerificationError(
            f"model-local function {model.functions[0].name!r} is not allowed: ops must be "
            "standard or com.microsoft quantization ops"
        )
    for node in _all_nodes(model.graph):
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise OnnxVerificationError(
                    f"node {node.name!r} ({node.op_type}) holds a subgraph; control flow is not "
                    "allowed"
                )


def _tensors(model: onnx.ModelProto):
    graph = model.graph
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _check_external_data(model: onnx.ModelProto) -> None:
    for tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise OnnxVerificationError(
                f"tensor {tensor.name!r} references external data file {where!r}; all weights "
                "must be embedded in the single uploaded file"
            )


def _check_domains_and_ops(model: onnx.ModelProto) -> int:
    for node in model.graph.node:
        allowed = MICROSOFT_OPS if node.domain == "com.microsoft" else DEFAULT_OPS
        if node.domain not in ALLOWED_DOMAINS:
            raise OnnxVerificationError(
                f"node {node.name!r} uses custom op {node.domain}::{node.op_type}; only default "
                "ONNX ops and com.microsoft quantization ops are allowed"
            )
        if node.op_type not in allowed:
            domain = ALLOWED_DOMAINS[node.domain]
            raise OnnxVerificationError(
                f"node {node.name!r} uses op {node.op_type!r} ({domain} domain), which is not on "
                "the allowed list"
            )
    # Only the nodes are judged: an opset import no node uses (ORT's quant_pre_process declares
    # ai.onnx.ml, com.microsoft.nchwc, org.pytorch.aten, ...) runs nothing.
    opset = None
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            opset = entry.version
    if opset is None or opset < MIN_OPSET:
        raise OnnxVerificationError(f"default-domain opset {opset} is older than {MIN_OPSET}")
    return opset


def _check_declared_dims(model: onnx.ModelProto) -> None:
    graph = model.graph
    for info in (*graph.input, *graph.output, *graph.value_info):
        dims = info.type.tensor_type.shape.dim
        largest = MAX_DIM if info in (*graph.input, *graph.output) else MAX_ELEMENTS
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and not 0 <= dim.dim_value <= largest:
                raise OnnxVerificationError(
                    f"tensor {info.name!r} declares dimension {dim.dim_value} at axis {axis}; "
                    f"dimensions must lie in [0, {largest}]"
                )
        known = [d.dim_value for d in dims if d.HasField("dim_value")]
        if math.prod(known) > MAX_ELEMENTS:
            raise OnnxVerificationError(
                f"tensor {info.name!r} declares {math.prod(known)} elements; at most "
                f"{MAX_ELEMENTS} per tensor"
            )
    for tensor in graph.initializer:
        if any(d < 0 for d in tensor.dims) or math.prod(tensor.dims) > MAX_ELEMENTS:
            raise OnnxVerificationError(
                f"initializer {tensor.name!r} declares absurd dimensions {list(tensor.dims)}"
            )
        _check_initializer_length(tensor)


def _check_initializer_length(tensor: TensorProto) -> None:
    """Declared element count against the bytes actually stored (raw_data only)."""
    if not tensor.HasField("raw_data"):
        return
    bits = INTEGER_BITS.get(tensor.data_type)
    item_bits = bits if bits is not None else OTHER_BITS.get(tensor.data_type)
    if item_bits is None:
        return
    expected = math.ceil(math.prod(tensor.dims) * item_bits / 8)
    if len(tensor.raw_data) != expected:
        raise OnnxVerificationError(
            f"initializer {tensor.name!r} declares dimensions {list(tensor.dims)} "
            f"({expected} bytes) but stores {len(tensor.raw_data)} bytes"
        )


def _check_graph_structure(graph: onnx.GraphProto) -> None:
    """Every node input is defined somewhere, and the dependency graph has no cycle."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producers: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        for name in node.output:
            producers[name] = position
    for node in graph.node:
        for name in node.input:
            if name not in defined and name not in producers:
                raise OnnxVerificationError(
                    f"node {node.name!r} reads tensor {name!r}, which nothing defines"
                )
    state = [0] * len(graph.node)  # 0 unvisited, 1 on the stack, 2 done
    depth = [0] * len(graph.node)  # longest chain of nodes ending at each node
    for start in range(len(graph.node)):
        if state[start]:
            continue
        stack = [(start, iter(graph.node[start].input))]
        state[start] = 1
        while stack:
            position, inputs = stack[-1]
            name = next(inputs, None)
            if name is None:
                state[position] = 2
                depth[position] = 1 + max(
                    (depth[producers[i]] for i in graph.node[position].input if i in producers),
                    default=0,
                )
                if depth[position] > MAX_GRAPH_DEPTH:
                    raise OnnxVerificationError(
                        f"the graph is more than {MAX_GRAPH_DEPTH} nodes deep (at node "
                        f"{graph.node[position].name!r})"
                    )
                stack.pop()
                continue
            producer = producers.get(name)
            if producer is None or state[producer] == 2:
                continue
            if state[producer] == 1:
                raise OnnxVerificationError(
                    f"the graph has a cycle through node {graph.node[producer].name!r}"
                )
            state[producer] = 1
            stack.append((producer, iter(graph.node[producer].input)))


def _check_interface(graph: onnx.GraphProto, interface: OnnxInterface) -> None:
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    for role, values, name, shape in (
        ("input", inputs, interface.input_name, interface.input_shape),
        ("output", list(graph.output), interface.output_name, interface.output_shape),
    ):
        if len(values) != 1:
            raise OnnxVerificationError(
                f"the graph has {len(values)} {role}s; the track's model has exactly one, {name!r}"
            )
        value = values[0]
        if value.name != name:
            raise OnnxVerificationError(
                f"the graph's {role} is named {value.name!r}; the track's reference model's "
                f"{role} is {name!r}"
            )
        tensor = value.type.tensor_type
        if tensor.elem_type != TensorProto.FLOAT:
            raise OnnxVerificationError(
                f"{role} {name!r} is {dtype_name(tensor.elem_type)}; the track's is float"
            )
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
        if len(dims) != len(shape) + 1 or dims[1:] != list(shape):
            expected = ["N", *shape]
            raise OnnxVerificationError(
                f"{role} {name!r} has shape {dims}; the track's reference model has {expected}"
            )


def _check_quantizer_inputs(graph: onnx.GraphProto) -> None:
    for node in graph.node:
        if node.op_type in QUANTIZERS and (len(node.input) < 2 or not node.input[1]):
            raise OnnxVerificationError(f"{node.op_type} node {node.name!r} has no scale input")


def _check_quantizer_scales(index: GraphIndex) -> None:
    for node in index.model.graph.node:
        if node.op_type not in QUANTIZERS:
            continue
        scale_name = node.input[1]
        source, _ = index.follow(scale_name)
        if source not in index.constants:
            raise OnnxVerificationError(
                f"{node.op_type} node {node.name!r}: scale {scale_name!r} is computed at run time; "
                "scales must be constants"
            )
        scale = index.array(source).astype(np.float64)
        if scale.size == 0 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            raise OnnxVerificationError(
                f"{node.op_type} node {node.name!r}: scale {scale_name!r} holds zero, negative "
                "or non-finite values"
            )


def _quantizer_bits(node: onnx.NodeProto, index: GraphIndex) -> tuple[int, str] | None:
    """Storage bits and dtype of a quantizer's integer side (None: not an integer type)."""
    if node.op_type == "DequantizeLinear":
        source, producer = index.follow(node.input[0])
        if source in index.constants:
            elem = index.constants[source].data_type
        elif producer is not None and producer.op_type == "QuantizeLinear":
            elem = _quantized_type(producer, index)
        else:
            return None
    else:
        elem = _quantized_type(node, index)
    if elem not in INTEGER_BITS:
        return None
    return INTEGER_BITS[elem], dtype_name(elem)


def _quantized_type(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    """Output type of a QuantizeLinear: its zero-point's, else ``output_dtype``, else uint8."""
    if len(node.input) > 2 and node.input[2]:
        zero_point, _ = index.follow(node.input[2])
        tensor = index.constants.get(zero_point)
        return None if tensor is None else tensor.data_type
    output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    return output_dtype or TensorProto.UINT8


@dataclass(frozen=True)
class _Layer:
    node: str
    op: str
    weight: str
    weight_bits: int
    weight_dtype: str
    weight_granularity: str
    activation_bits: int | None
    macs: int | None
    weights: int = 0
    stored_bits: int = 0
    """Bits the weight is stored in: codes at their storage width (a float initializer quantized
    at run time: its float width), scales and zero-points at their storage width."""
    weight_storage: str = ""
    """How the weight is stored: its codes' dtype, or ``<float dtype>, quantized at run time`` for
    a float initializer through QuantizeLinear (ModelOpt's form), or the float dtype itself."""
    activation_quantizer: str | None = None
    """The input's grid: ``symmetric`` (zero-point 0 signed, or the mid-code of an unsigned type:
    128 for uint8), ``asymmetric`` (any other zero-point), None for a float input."""


def _tensor_bits(index: GraphIndex, name: str | None) -> int:
    """Storage bits of the constant ``name`` (0 when absent)."""
    if not name:
        return 0
    source, _ = index.follow(name)
    if source not in index.constants:
        return 0
    tensor = index.constants[source]
    return math.prod(tensor.dims) * OTHER_BITS.get(
        tensor.data_type, INTEGER_BITS.get(tensor.data_type, 32)
    )


def _weighted_layer(op: WeightedOp, index: GraphIndex, limits: PrecisionLimits) -> _Layer:
    what = f"{op.node.op_type} node {op.name!r}"
    source, producer = index.follow(op.weight)
    if producer is None or producer.op_type != "DequantizeLinear":
        if source in index.constants:
            tensor = index.constants[source]
            dtype = dtype_name(tensor.data_type)
            if tensor.data_type in FLOAT_BITS and (
                _float_admitted(tensor.data_type, limits.weight_bits)
                or limits.max_float_mac_fraction > 0
            ):
                return _Layer(
                    op.name,
                    op.node.op_type,
                    source,
                    FLOAT_BITS[tensor.data_type],
                    dtype,
                    "none",
                    _activation_bits(op, index),
                    macs_per_sample(op, index, list(tensor.dims)),
                    weight_storage=dtype,
                )
            raise OnnxVerificationError(
                f"{what}: weight {op.weight!r} is a {dtype} initializer, not DequantizeLinear of "
                f"an integer initializer; the track allows at most {limits.weight_bits}-bit "
                "weights"
            )
        maker = "nothing" if producer is None else f"{producer.op_type} node {producer.name!r}"
        raise OnnxVerificationError(
            f"{what}: weight {op.weight!r} is produced by {maker}, not by DequantizeLinear of an "
            "integer initializer"
        )
    codes_name, codes_producer = index.follow(producer.input[0])
    runtime_quantized = None
    if codes_name in index.constants:
        elem = index.constants[codes_name].data_type
        if elem not in INTEGER_BITS:
            raise OnnxVerificationError(
                f"{what}: its weight DequantizeLinear {producer.name!r} dequantizes "
                f"{dtype_name(elem)} {codes_name!r}, not an integer initializer"
            )
        codes = index.array(codes_name).astype(np.int64)
    elif codes_producer is not None and codes_producer.op_type == "QuantizeLinear":
        elem, codes = _constant_quantize(codes_producer, index, what)
        runtime_quantized = index.constants[index.follow(codes_producer.input[0])[0]]
    else:
        raise OnnxVerificationError(
            f"{what}: its weight DequantizeLinear {producer.name!r} reads {codes_name!r}, which "
            "is computed at run time, not an integer initializer"
        )
    storage = INTEGER_BITS[elem]
    span = int(codes.max() - codes.min()) if codes.size else 0
    bits = min(storage, max(1, span.bit_length()))
    dtype = dtype_name(elem)
    if limits.weight_bits is not None and bits > limits.weight_bits:
        raise OnnxVerificationError(
            f"{what}: weight {codes_name!r} carries {bits}-bit codes ({dtype} in "
            f"[{int(codes.min())}, {int(codes.max())}]); the track allows at most "
            f"{limits.weight_bits}-bit weights"
        )
    scale = index.array(index.follow(producer.input[1])[0])
    block = next((a.i for a in producer.attribute if a.name == "block_size"), 0)
    granularity = "blockwise" if block else "per-channel" if scale.size > 1 else "per-tensor"
    act_bits = _activation_bits(op, index)
    float_input = act_bits is None and not _float_admitted(
        TensorProto.FLOAT, limits.activation_bits
    )
    if limits.activation_bits is not None and float_input:  # float-weight layers excepted
        raise OnnxVerificationError(
            f"{what}: its input {op.activation!r} is not quantized; the track requires "
            f"activations of at most {limits.activation_bits} bits"
        )
    macs = macs_per_sample(op, index, list(codes.shape))
    if runtime_quantized is None:  # the codes as stored: at their dtype's width
        code_bits = codes.size * storage
    else:  # stored as float, quantized at run time: the float is what is stored
        code_bits = codes.size * FLOAT_BITS[runtime_quantized.data_type]
    zero = producer.input[2] if len(producer.input) > 2 else None
    stored = code_bits + _tensor_bits(index, producer.input[1]) + _tensor_bits(index, zero)
    return _Layer(
        op.name,
        op.node.op_type,
        codes_name,
        bits,
        dtype,
        granularity,
        act_bits,
        macs,
        int(codes.size),
        int(stored),
        dtype if runtime_quantized is None else _runtime_storage(runtime_quantized.data_type),
        _activation_grid(op, index),
    )


def _check_float_layers(layers: list[_Layer], limits: PrecisionLimits) -> None:
    """Under a weight limit, float-weight layers may cover at most ``max_float_mac_fraction``
    of the MACs; the largest offender is named."""
    if limits.weight_bits is None:
        return
    floats = [
        layer
        for layer in layers
        if layer.weight_granularity == "none" and layer.weight_bits > limits.weight_bits
    ]
    if not floats:
        return
    total = sum(layer.macs or 0 for layer in layers) or 1
    fraction = sum(layer.macs or 0 for layer in floats) / total
    if fraction > limits.max_float_mac_fraction:
        worst = max(floats, key=lambda layer: layer.macs or 0)
        raise OnnxVerificationError(
            f"{worst.op} node {worst.node!r}: weight {worst.weight!r} is a {worst.weight_dtype} "
            "initializer, not DequantizeLinear of an integer initializer; float weights cover "
            f"{fraction:.1%} of the weighted MACs and the track allows "
            f"{limits.max_float_mac_fraction:.1%}"
        )


def _runtime_storage(elem_type: int) -> str:
    return f"{dtype_name(elem_type)}, quantized at run time"


def _float_admitted(elem_type: int, limit: int | None) -> bool:
    """Whether a float tensor of ``elem_type`` fits a bit limit as it is (None: no limit): a
    32-bit limit admits float32, as an FP32 model on an FP32 track."""
    return limit is None or FLOAT_BITS[elem_type] <= limit


def _constant_quantize(
    node: onnx.NodeProto, index: GraphIndex, what: str
) -> tuple[int, np.ndarray]:
    """Integer type and codes of QuantizeLinear(float initializer) (TensorRT-style weights):
    q = saturate(round_half_even(x / s) + z), s and z per tensor or along ``axis``."""
    source, _ = index.follow(node.input[0])
    if source not in index.constants or index.constants[source].data_type not in FLOAT_BITS:
        raise OnnxVerificationError(
            f"{what}: its weight is quantized at run time by QuantizeLinear {node.name!r} from "
            f"{source!r}, which is not a float initializer"
        )
    if any(a.name == "block_size" and a.i for a in node.attribute):
        raise OnnxVerificationError(f"{what}: blocked weight QuantizeLinear {node.name!r}")
    elem = _quantized_type(node, index)
    if elem not in INTEGER_BITS:
        raise OnnxVerificationError(
            f"{what}: QuantizeLinear {node.name!r} does not quantize to an integer type"
        )
    weight = index.array(source).astype(np.float64)
    scale = index.array(index.follow(node.input[1])[0]).astype(np.float64)
    zero = np.zeros_like(scale)
    if len(node.input) > 2 and node.input[2]:
        zero_name, _ = index.follow(node.input[2])
        if zero_name not in index.constants:
            raise OnnxVerificationError(
                f"{what}: weight QuantizeLinear {node.name!r} has a zero-point computed at run time"
            )
        zero = index.array(zero_name).astype(np.float64)
    if scale.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % weight.ndim
        shape = [1] * weight.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    bits = INTEGER_BITS[elem]
    signed = elem in (TensorProto.INT4, TensorProto.INT8, TensorProto.INT16, TensorProto.INT32)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    codes = np.clip(np.rint(weight / scale) + zero, low, high).astype(np.int64)
    return elem, codes


def _activation_bits(op: WeightedOp, index: GraphIndex) -> int | None:
    """Bits of the quantizer feeding ``op``'s activation input, None when it is float."""
    _, producer = index.follow(op.activation)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    found = _quantizer_bits(producer, index)
    return None if found is None else found[0]


def _activation_grid(op: WeightedOp, index: GraphIndex) -> str | None:
    """``symmetric`` or ``asymmetric`` grid of the quantizer feeding ``op``'s activation input
    (None when it is float): read from its zero-point and integer type."""
    _, producer = index.follow(op.activation)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    found = _quantizer_bits(producer, index)
    if found is None:
        return None
    bits, dtype = found
    zero = np.zeros(1, np.int64)
    if len(producer.input) > 2 and producer.input[2]:
        source, _ = index.follow(producer.input[2])
        if source not in index.constants:
            return "asymmetric"  # a zero-point computed at run time is no fixed symmetric grid
        zero = index.array(source).astype(np.int64)
    middle = 2 ** (bits - 1) if dtype.startswith("uint") else 0
    return "symmetric" if bool(np.all(zero == middle)) else "asymmetric"


def _check_activation_quantizers(index: GraphIndex, limits: PrecisionLimits) -> int | None:
    """Largest activation quantizer bit-width; each must be within the track's limit."""
    largest = None
    for node in index.model.graph.node:
        if node.op_type not in QUANTIZERS:
            continue
        if node.op_type == "DequantizeLinear" and index.is_constant(node.input[0]):
            continue  # a weight or bias dequantizer
        found = _quantizer_bits(node, index)
        if found is None:
            raise OnnxVerificationError(
                f"{node.op_type} node {node.name!r} does not quantize to an integer type"
            )
        bits, dtype = found
        if limits.activation_bits is not None and bits > limits.activation_bits:
            raise OnnxVerificationError(
                f"{node.op_type} node {node.name!r} quantizes activations to {bits} bits "
                f"({dtype}); the track allows at most {limits.activation_bits}"
            )
        largest = bits if largest is None else max(largest, bits)
    return largest


def _report(layers: list[_Layer], activation_bits: int | None, size: int, opset: int) -> dict:
    known = [layer for layer in layers if layer.macs is not None]
    total = sum(layer.macs for layer in known)
    both = sum(
        layer.macs
        for layer in known
        if layer.activation_bits is not None and layer.weight_granularity != "none"
    )
    weights = sum(layer.macs for layer in known if layer.weight_granularity != "none")
    per_op: dict[str, dict] = {}
    for layer in layers:
        entry = per_op.setdefault(
            layer.op,
            {"count": 0, "weight_bits": [], "activation_bits": [], "granularity": Counter()},
        )
        entry["count"] += 1
        entry["weight_bits"] = sorted({*entry["weight_bits"], layer.weight_bits})
        if layer.activation_bits is not None:
            entry["activation_bits"] = sorted({*entry["activation_bits"], layer.activation_bits})
        entry["granularity"][layer.weight_granularity] += 1
    for entry in per_op.values():
        entry["granularity"] = dict(entry["granularity"])
    quantized = [layer for layer in layers if layer.weight_granularity != "none"]
    integer = quantized or layers
    granularities = {layer.weight_granularity for layer in integer}
    float_activations = any(layer.activation_bits is None for layer in integer)
    return {
        "source": "verified from the ONNX file",
        "weight_bits": max((layer.weight_bits for layer in integer), default=None),
        "activation_bits": None if float_activations else activation_bits,
        "granularity": granularities.pop() if len(granularities) == 1 else "mixed",
        "ops": per_op,
        "quantized_mac_fraction": both / total if total else 0.0,
        "weight_quantized_mac_fraction": weights / total if total else 0.0,
        "float_weight_layers": [
            layer.node for layer in layers if layer.weight_granularity == "none"
        ],
        "run_time_quantized_weight_layers": [
            layer.node for layer in layers if layer.weight_storage.endswith("at run time")
        ],
        "activation_quantizers": sorted(
            {layer.activation_quantizer for layer in layers if layer.activation_quantizer}
        ),
        "macs_per_sample": total,
        "quantized_weights": sum(layer.weights for layer in quantized),
        "bits_per_weight": (
            sum(layer.stored_bits for layer in quantized)
            / sum(layer.weights for layer in quantized)
            if quantized
            else 0.0
        ),
        "layers": [layer.__dict__ for layer in layers],
        "size_bytes": size,
        "opset": opset,
    }


def _check_claims(model: onnx.ModelProto, report: dict, layers: list[_Layer]) -> None:
    """Metadata ``medquant.weight_bits`` / ``medquant.activation_bits`` may not understate. The
    weight claim is about the quantized weights: float-weight layers are bounded by the track's
    float-MAC allowance instead (``_check_float_layers``)."""
    claims = {p.key[len(METADATA_PREFIX) :]: p.value for p in model.metadata_props}
    quantized = [lyr for lyr in layers if lyr.weight_granularity != "none"]
    for key, carried in (
        ("weight_bits", [(lyr.weight_bits, lyr.node) for lyr in quantized]),
        ("activation_bits", [(lyr.activation_bits, lyr.node) for lyr in layers]),
    ):
        claim = claims.get(key)
        if claim is None or claim == "none":
            continue
        if not claim.isdigit():
            raise OnnxVerificationError(
                f"metadata {METADATA_PREFIX}{key}={claim!r} is not a number"
            )
        for bits, node in carried:
            if bits is not None and bits > int(claim):
                raise OnnxVerificationError(
                    f"the file claims {claim}-bit {key.split('_')[0]}s but node {node!r} "
                    f"carries {bits}-bit ones"
                )


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
