"""Safety and structure checks of an uploaded ONNX file, before anything is measured or run.

In order, each failure an ``OnnxVerificationError`` naming the tensor or node: file size; a
parsable protobuf; at most ``MAX_NODES`` nodes; no model-local functions, subgraphs or external
data; allowed opset domains and op types (default domain + com.microsoft quantization ops); sane
declared dimensions and initializer sizes; an acyclic graph at most ``MAX_GRAPH_DEPTH`` deep with
every input defined; the track's input/output names, element type and shapes; Q/DQ scale inputs
present; ``onnx.checker`` (full check, with shape inference); every tensor's shape known before
the graph runs (inferred afresh at a fixed batch, not from the file's declarations) and its size
within ``MAX_ELEMENTS_PER_INPUT_ELEMENT`` times the input's (``check_run_time_sizes``); static,
positive, finite Q/DQ scales.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from harness.artifacts.checks import OnnxInterface
from harness.artifacts.onnx.graph import (
    INTEGER_BITS,
    OTHER_BITS,
    QUANTIZERS,
    GraphIndex,
    dtype_name,
    infer_shapes,
)
from harness.errors import SubmissionError

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


class OnnxVerificationError(SubmissionError):
    """A submitted ONNX file that is malformed, unsafe or not what it claims to be."""


@dataclass(frozen=True)
class CheckedModel:
    """An ONNX file that passed the safety checks: parsed and shape-inferred (``index``), with
    its size in bytes, default-domain opset and SHA-256 (of the bytes read, once)."""

    index: GraphIndex
    size: int
    opset: int
    sha256: str


def checked_model(
    path: str | Path, interface: OnnxInterface, max_bytes: int, *, sizes: bool = True
) -> CheckedModel:
    """Read ``path`` once and run every safety check on it (see module docstring); with
    ``sizes=False`` all but ``check_run_time_sizes``, which the caller runs later (after the
    reference-network match, which names a foreign node more plainly)."""
    path = Path(path)
    size = _check_size(path, max_bytes)
    data = path.read_bytes()
    model = parse_model(data)
    check_node_count(model.graph)
    check_containers(model)
    check_external_data(model)
    opset = _check_domains_and_ops(model)
    _check_declared_dims(model)
    _check_graph_structure(model.graph)
    _check_interface(model.graph, interface)
    _check_quantizer_inputs(model.graph)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise OnnxVerificationError(
            f"onnx.checker rejects the model: {first_line(error)}"
        ) from None
    index = GraphIndex(model, infer_shapes(model))
    if sizes:
        check_run_time_sizes(model, interface)
    _check_quantizer_scales(index)
    return CheckedModel(index, size, opset, hashlib.sha256(data).hexdigest())


def _check_size(path: Path, max_bytes: int) -> int:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise OnnxVerificationError(f"ONNX file {path.name} does not exist") from None
    if size > max_bytes:
        raise OnnxVerificationError(
            f"ONNX file is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB"
        )
    return size


def parse_model(data: bytes) -> onnx.ModelProto:
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


def check_node_count(graph: onnx.GraphProto) -> None:
    if len(graph.node) > MAX_NODES:
        raise OnnxVerificationError(
            f"the graph has {len(graph.node)} nodes; the limit is {MAX_NODES}"
        )


def check_run_time_sizes(model: onnx.ModelProto, interface: OnnxInterface) -> None:
    """Every tensor the graph computes has a shape known before it runs and at most
    ``MAX_ELEMENTS_PER_INPUT_ELEMENT`` times the track's input elements per sample. Shapes are
    inferred afresh -- the file's declared ``value_info`` dropped, the input's batch fixed (to
    its declared size, else 1) -- so they are the shapes the engine computes at run time: a
    tensor whose size depends on the values it reads (a Tile or Reshape fed from the data) has
    no inferred shape and is refused, not counted as size 1."""
    static, batch = _fixed_batch(model)
    inferred = infer_shapes(static)
    known = {
        info.name: info.type.tensor_type
        for info in (*inferred.graph.value_info, *inferred.graph.output)
    }
    constants = {t.name for t in model.graph.initializer}
    limit = MAX_ELEMENTS_PER_INPUT_ELEMENT * math.prod(interface.input_shape)
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        for name in node.output:
            if not name or name in constants:
                continue
            tensor = known.get(name)
            dims = None
            if tensor is not None and tensor.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            if dims is None or None in dims:
                raise OnnxVerificationError(
                    f"tensor {name!r} (output of node {node.name!r}, {node.op_type}) has no "
                    f"shape known before the graph runs (inferred {dims}): its size would depend "
                    "on the values it reads; every tensor's size must be fixed by the track's "
                    "input shape"
                )
            if math.prod(dims) > limit * batch:
                raise OnnxVerificationError(
                    f"tensor {name!r} would hold {math.prod(dims) // batch} elements per sample "
                    f"(inferred shape {dims} at batch {batch}); at most {limit} "
                    f"({MAX_ELEMENTS_PER_INPUT_ELEMENT}x the track's input) are allowed"
                )


def _fixed_batch(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` without declared ``value_info`` whose input and output batch is a
    fixed size (the input's declared one, else 1), and that size."""
    static = onnx.ModelProto()
    static.CopyFrom(model)
    del static.graph.value_info[:]
    initializers = {t.name for t in static.graph.initializer}
    values = [v for v in static.graph.input if v.name not in initializers]
    first = values[0].type.tensor_type.shape.dim[0]
    batch = first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else 1
    for value in (*values, *static.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    return static, batch


def _all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and its subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _all_nodes(sub)


def check_containers(model: onnx.ModelProto) -> None:
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
    """Every TensorProto anywhere in ``model`` — initializers, sparse values and indices, node
    attributes (dense and sparse), training-info graphs, … — found by walking every message
    field the protobuf holds, so no place a tensor can sit is left out."""
    stack: list = [model]
    while stack:
        message = stack.pop()
        if isinstance(message, TensorProto):
            yield message
            continue
        for field, value in message.ListFields():
            if field.message_type is None:  # a scalar, string or bytes field
                continue
            if hasattr(value, "ListFields"):  # one message
                stack.append(value)
            else:  # a repeated field of messages
                stack.extend(value)


def check_external_data(model: onnx.ModelProto) -> None:
    """Refuse any tensor that keeps its data outside the file (weights must be inside the
    upload): checked before anything resolves a location, so no path on the worker is read."""
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


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
