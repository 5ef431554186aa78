"""Is an uploaded ONNX graph the reference export node for node?

Both graphs are put in one canonical form, then compared by content:

- **Transparent nodes** are removed: QuantizeLinear/DequantizeLinear (their data input passes
  through: stripping a Q/DQ pair ignores the rounding to its grid), Identity, Dropout (inference),
  and Cast from one floating-point type to another. A Cast to or from an integer type rounds or
  truncates and is a node like any other.
- **Constants are folded**: a tensor computed from initializers and Constant nodes only (a
  DequantizeLinear of integer codes, ModelOpt's Cast of an fp16 weight, a Reshape of a constant)
  is one constant. A constant in a **weight** role (``WEIGHT_INPUTS``: the weight and bias of
  Conv, ConvTranspose, Gemm, MatMul, the parameters of the normalisations and PRelu, the
  non-scalar operand of an elementwise Add/Sub/Mul/Div -- a bias, a position embedding) is
  compared by shape only: its values are the quantizer's to choose, and on a closed track the
  post-training reach check judges them. Every other constant (shapes, axes, pads, indices,
  scalars such as the ``1/√d`` of attention or the ``0.5`` of Gelu) is compared by value:
  integers exactly, floating point at float16 precision (ModelOpt stores some constants in
  fp16).
- **The Relu a quantizer clamps in its place** (ONNX Runtime's ``quantize_static`` removes a
  Relu before an activation quantizer whose zero-point is its integer type's lowest code) counts
  as that Relu where the reference applies one there.

Every remaining node gets a content signature -- op type, domain, attributes, which output, and
its inputs' signatures (sorted for commutative ops) -- computed in graph order, so a signature
names the whole computation a tensor comes from back to the graph input. The upload matches
when every node of it has a signature the reference graph has (each reference node used at most
as often as the reference has it) and its output's signature is the reference output's: the
output comes from the matched network. The first node in the upload's order whose signature the
reference lacks is the first foreign node (its inputs all match): extra float compute, an output
that ignores the network, a weight computed from the image, a shape built at run time from data
are all refused naming it.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness.artifacts.onnx.graph import FLOAT_BITS, QUANTIZERS, GraphIndex, infer_shapes
from harness.errors import SubmissionError

WEIGHT_INPUTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2, 3, 4),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "PRelu": (1,),
}
"""Inputs whose constant is a weight (compared by shape), by op type."""
ELEMENTWISE_WEIGHT_OPS = frozenset({"Add", "Sub", "Mul", "Div"})
"""Ops whose non-scalar constant operand is a weight (a bias, a scale, a position embedding)."""
BROADCASTING_OPS = frozenset({"Add", "Sub", "Mul", "Div"})
"""Folded ops whose result may be larger than their operands (numpy broadcasting)."""
MAX_FOLDED_ELEMENTS = 1 << 24
"""Largest constant folded by value (64 MiB of float32): a broadcast of two long constant vectors
is compared by the nodes computing it instead of being materialised."""
COMMUTATIVE_OPS = frozenset({"Add", "Mul", "Sum", "Max", "Min", "Mean", "Equal", "And", "Or"})
"""Ops whose inputs may be listed in any order."""
DROPPED_ATTRIBUTES = frozenset({"kernel_shape"})
"""Attributes implied by a weight's shape (compared through it), not compared themselves."""
DEFAULT_ATTRIBUTES = {"auto_pad": b"NOTSET", "group": 1}
"""Attribute values equal to the ONNX default, treated as absent (a value of all 1s for
strides/dilations and all 0s for pads are defaults too)."""


class ForeignNode(SubmissionError):
    """The upload's graph holds a node the reference graph does not, or its output does not come
    from the reference network."""


@dataclass
class _Canonical:
    """Signatures of one graph: per tensor, and the node signatures it holds (a multiset)."""

    tensor: dict[str, bytes] = field(default_factory=dict)
    nodes: Counter = field(default_factory=Counter)
    output: bytes = b""


def check_graph_match(submitted: GraphIndex, reference: onnx.ModelProto) -> None:
    """``ForeignNode`` naming the first node of ``submitted`` (a shape-inferred index of the
    upload) that the reference graph does not hold, or the node whose output is not the
    reference's output (see module docstring)."""
    _canonical(submitted, _reference_form(reference))


_REFERENCE_FORMS: OrderedDict[int, tuple[onnx.ModelProto, _Canonical]] = OrderedDict()
CACHED_REFERENCES = 4
"""Reference graphs whose canonical form is kept (a worker serves a few tracks; each entry
holds its graph, so an id is never reused while cached)."""


def _reference_form(reference: onnx.ModelProto) -> _Canonical:
    """The canonical form of a track's reference graph, computed once per graph object."""
    key = id(reference)
    cached = _REFERENCE_FORMS.get(key)
    if cached is None or cached[0] is not reference:
        form = _canonical(GraphIndex(reference, infer_shapes(reference)), None)
        _REFERENCE_FORMS[key] = cached = (reference, form)
        while len(_REFERENCE_FORMS) > CACHED_REFERENCES:
            _REFERENCE_FORMS.popitem(last=False)
    _REFERENCE_FORMS.move_to_end(key)
    return cached[1]


def _digest(*parts) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


def _describe(node: onnx.NodeProto) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def _canonical(index: GraphIndex, reference: _Canonical | None) -> _Canonical:
    """The signatures of ``index``'s graph; with ``reference``, raise ``ForeignNode`` at the
    first node whose signature the reference lacks (see module docstring)."""
    graph = index.model.graph
    constant = {name for name in index.constants}
    folding = _ConstantFolder(index)
    out = _Canonical()
    available = Counter(reference.nodes) if reference is not None else None
    initializers = {t.name for t in graph.initializer}
    transposes: dict[bytes, tuple[list[int] | None, bytes]] = {}  # output → (perm, input)
    for value in graph.input:
        if value.name not in initializers:
            out.tensor[value.name] = _digest("input")
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(n in constant for n in inputs)):
            constant.update(name for name in node.output if name)
            continue
        if not inputs:  # a source node that is not a Constant (ConstantOfShape needs an input)
            constant.update(name for name in node.output if name)
            continue
        passed = _transparent(node, index)
        if passed is not None:
            signature = out.tensor.get(passed)
            if signature is None:  # a constant passed through: folded above
                continue
            if available is not None and _clamps_at_zero(node, index):
                relu = _digest("Relu", "", (), (signature,))
                if available[relu] > 0:  # the reference applies a Relu here: the clamp is it
                    available[relu] -= 1
                    out.nodes[relu] += 1
                    signature = _digest(relu, 0)
            out.tensor[node.output[0]] = signature
            continue
        operands = []
        for position, name in enumerate(node.input):
            if not name:
                operands.append(b"")
            elif name in constant:
                operands.append(folding.signature(node, position, name))
            else:
                operands.append(out.tensor[name])
        if node.op_type in COMMUTATIVE_OPS:
            operands.sort()
        attributes = _attributes(node)
        signatures = [_digest(node.op_type, _domain(node), attributes, tuple(operands))]
        pushed = _gather_before_transpose(node, operands, transposes, folding)
        if pushed is not None:
            signatures = pushed
        if available is not None:
            if any(available[s] <= 0 for s in signatures):
                raise ForeignNode(
                    f"the network is not the track's reference: {_describe(node)} computes "
                    "something the reference graph does not (the first such node in the file's "
                    "order, Q/DQ pairs, Identity and float Casts aside); only the reference "
                    "network, quantized, may be submitted"
                )
            available.subtract(signatures)
        out.nodes.update(signatures)
        signature = signatures[-1]
        if node.op_type == "Transpose" and not _domain(node):
            transposes[_digest(signature, 0)] = (_attribute(node, "perm", None), operands[0])
        for position, name in enumerate(node.output):
            if name:
                out.tensor[name] = _digest(signature, position)
    (graph_output,) = graph.output
    out.output = out.tensor.get(graph_output.name, b"")
    if reference is not None and out.output != reference.output:
        producer = index.producer.get(graph_output.name)
        where = _describe(producer) if producer is not None else "a constant"
        raise ForeignNode(
            f"the network is not the track's reference: its output {graph_output.name!r} comes "
            f"from {where}, which is not the reference network's output"
        )
    return out


def _gather_before_transpose(
    node: onnx.NodeProto,
    operands: list[bytes],
    transposes: dict[bytes, tuple[list[int] | None, bytes]],
    folding: _ConstantFolder,
) -> list[bytes] | None:
    """A Gather of one index (a scalar) from a Transpose's output, as the equal Gather from the
    Transpose's input followed by the Transpose of the remaining axes (ONNX Runtime's transpose
    optimizer, run by ``quant_pre_process``, writes it so): the two canonical node signatures,
    or None for another node."""
    if node.op_type != "Gather" or _domain(node) or len(node.input) != 2:
        return None
    source = transposes.get(operands[0])
    index = folding.value_of(node.input[1])
    if source is None or source[0] is None or index is None or index.ndim != 0:
        return None
    perm, data = source
    axis = _attribute(node, "axis", 0) % len(perm)
    taken = perm[axis]
    gather = _digest("Gather", "", (("axis", taken),), (data, operands[1]))
    remaining = [p - (p > taken) for position, p in enumerate(perm) if position != axis]
    transpose = _digest("Transpose", "", (("perm", tuple(remaining)),), (_digest(gather, 0),))
    return [gather, transpose]


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _transparent(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """The input whose value ``node`` passes on unchanged (up to rounding to a grid or to
    another float width), None for a node that computes. A DequantizeLinear is transparent
    only as the second half of a pair: reading a QuantizeLinear with the same scale, zero-point
    and axis (one with other parameters would scale and shift the values: a computation)."""
    kind = node.op_type
    if not node.input or not node.input[0]:
        return None
    if kind in QUANTIZERS and node.domain in ("", "ai.onnx", "com.microsoft"):
        if kind == "DequantizeLinear" and not _paired(node, index):
            return None
        return node.input[0]
    if _domain(node):
        return None
    if kind in ("Identity", "Dropout"):
        return node.input[0]
    if kind == "Cast":
        target = next((a.i for a in node.attribute if a.name == "to"), None)
        if target in FLOAT_BITS and index.types.get(node.input[0]) in FLOAT_BITS:
            return node.input[0]
    return None


def _paired(dequantize: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether ``dequantize`` reads a QuantizeLinear with its scale, zero-point and attributes."""
    quantize = index.producer.get(dequantize.input[0])
    if quantize is None or quantize.op_type != "QuantizeLinear":
        return False
    for position in (1, 2):
        values = []
        for node in (quantize, dequantize):
            name = node.input[position] if len(node.input) > position else ""
            source = index.follow(name)[0] if name else ""
            if name and source not in index.constants:
                return False
            values.append(index.array(source) if name else None)
        first, second = values
        if (first is None) != (second is None):
            if position == 1 or np.any(first if first is not None else second):
                return False
        elif first is not None and (
            first.shape != second.shape or not np.array_equal(first, second)
        ):
            return False
    return all(
        _attribute(quantize, name, default) == _attribute(dequantize, name, default)
        for name, default in (("axis", 1), ("block_size", 0))
    )


def _clamps_at_zero(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """A QuantizeLinear whose scalar zero-point is its integer type's lowest code: every value
    it passes on is ≥ 0, as after a Relu."""
    if node.op_type != "QuantizeLinear" or len(node.input) < 3 or not node.input[2]:
        return False
    source, _ = index.follow(node.input[2])
    if source not in index.constants:
        return False
    zero = index.array(source)
    if not np.issubdtype(zero.dtype, np.integer) or zero.size != 1:
        return False
    return int(zero.reshape(())) == int(np.iinfo(zero.dtype).min)


def _attributes(node: onnx.NodeProto) -> tuple:
    """``node``'s attributes as comparable values, defaults and implied ones left out."""
    items = []
    for attribute in sorted(node.attribute, key=lambda a: a.name):
        if attribute.name in DROPPED_ATTRIBUTES:
            continue
        value = helper.get_attribute_value(attribute)
        if isinstance(value, TensorProto):
            value = _value_key(numpy_helper.to_array(value))
        elif isinstance(value, list):
            value = tuple(value)
        if DEFAULT_ATTRIBUTES.get(attribute.name, object()) == value:
            continue
        if attribute.name in ("strides", "dilations") and set(value) == {1}:
            continue
        if attribute.name == "pads" and set(value) == {0}:
            continue
        if isinstance(value, float):
            value = float(np.float16(value))
        items.append((attribute.name, value))
    return tuple(items)


def _value_key(array: np.ndarray) -> tuple:
    """A constant by value: integers and booleans exactly, floating point at float16 precision."""
    if np.issubdtype(array.dtype, np.floating):
        kind, data = "f", array.astype(np.float16).tobytes()
    else:
        kind, data = array.dtype.kind, array.astype(np.int64).tobytes()
    return (kind, array.shape, hashlib.blake2b(data, digest_size=16).digest())


class _ConstantFolder:
    """Signatures of constant operands: weights by shape, other constants by value."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.values: dict[str, np.ndarray | None] = {}
        self.structures: dict[str, bytes] = {}
        self.order: dict[str, int] | None = None  # tensor → its producer's position

    def signature(self, node: onnx.NodeProto, position: int, name: str) -> bytes:
        shape = self._shape(name)
        if self._is_weight(node, position, shape):
            return _digest("weight", shape)
        value = self._value(name)
        if value is None:
            return self._structure(name)
        return _digest("constant", _value_key(value))

    def _structure(self, name: str) -> bytes:
        """A constant that cannot be folded, by the nodes that compute it, stored constants
        by value (so its value is still the reference's where the reference computes it
        alike)."""
        for tensor in self._computed_before(name, self.structures):
            producer = self.index.producer[tensor]
            operands = tuple(self._stored_or(i, self.structures) for i in producer.input)
            node = _digest(producer.op_type, _domain(producer), _attributes(producer), operands)
            self.structures[tensor] = _digest(node, list(producer.output).index(tensor))
        return self._stored_or(name, self.structures)

    def _stored_or(self, name: str, memo: dict) -> bytes:
        if not name:
            return b""
        if name in self.index.constants:
            return _digest("constant", _value_key(self.index.array(name)))
        return memo[name]

    def _computed_before(self, name: str, memo: dict) -> list[str]:
        """The computed constants ``name`` depends on (itself included) not yet in ``memo``, in
        graph order (walked without recursion: a constant chain may be thousands deep)."""
        found, pending = set(), [name]
        while pending:
            current = pending.pop()
            if not current or current in found or current in memo:
                continue
            if current in self.index.constants:
                continue
            found.add(current)
            pending.extend(self.index.producer[current].input)
        if self.order is None:
            nodes = self.index.model.graph.node
            self.order = {out: i for i, node in enumerate(nodes) for out in node.output}
        return sorted(found, key=self.order.__getitem__)

    def value_of(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, None for a tensor computed at run time or a constant
        that cannot be folded."""
        if name in self.index.constants or name in self.index.producer:
            return self._value(name) if self.index.is_constant(name) else None
        return None

    def _is_weight(self, node: onnx.NodeProto, position: int, shape: tuple | None) -> bool:
        if _domain(node):
            return False
        if position in WEIGHT_INPUTS.get(node.op_type, ()):
            return True
        if node.op_type in ELEMENTWISE_WEIGHT_OPS:
            return shape is None or int(np.prod(shape)) > 1
        return False

    def _shape(self, name: str) -> tuple | None:
        shape = self.index.shapes.get(name)
        if shape is not None and all(d is not None for d in shape):
            return tuple(int(d) for d in shape)
        value = self._value(name)
        return None if value is None else tuple(value.shape)

    def _value(self, name: str) -> np.ndarray | None:
        """The constant's value: stored, or folded from the constant nodes it comes from
        (``_FOLDED_OPS``; None where one of them is another op or its inputs do not fit it)."""
        if name in self.index.constants:
            return self.index.array(name)
        for tensor in self._computed_before(name, self.values):
            self.values[tensor] = self._fold(tensor)
        return self.values[name]

    def _fold(self, name: str) -> np.ndarray | None:
        """The value of the computed constant ``name`` from its producer's inputs' (folded)."""
        producer = self.index.producer[name]
        if _domain(producer) or producer.op_type not in _FOLDED_OPS or producer.output[0] != name:
            return None
        operands = []
        for operand in producer.input:
            value = None
            if operand:
                stored = operand in self.index.constants
                value = self.index.array(operand) if stored else self.values[operand]
                if value is None:
                    return None
            operands.append(value)
        if producer.op_type in BROADCASTING_OPS:
            try:
                grown = math.prod(np.broadcast_shapes(*(v.shape for v in operands)))
            except ValueError:
                return None
            if grown > MAX_FOLDED_ELEMENTS:
                return None
        try:
            with np.errstate(all="ignore"):
                return np.asarray(_FOLDED_OPS[producer.op_type](producer, *operands))
        except (ValueError, TypeError, IndexError, KeyError):
            return None


def _attribute(node: onnx.NodeProto, name: str, default):
    attribute = next((a for a in node.attribute if a.name == name), None)
    return default if attribute is None else helper.get_attribute_value(attribute)


def _dequantize(node, codes, scale, zero=None):
    scale = scale.astype(np.float32)
    zero = np.zeros_like(scale) if zero is None else zero.astype(np.float32)
    if scale.size > 1:
        shape = [1] * codes.ndim
        shape[_attribute(node, "axis", 1) % codes.ndim] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (codes.astype(np.float32) - zero) * scale


def _cast(node, value):
    return value.astype(helper.tensor_dtype_to_np_dtype(_attribute(node, "to", 1)))


def _reshape(node, value, shape):
    shape = [
        value.shape[i] if d == 0 and not _attribute(node, "allowzero", 0) else d
        for i, d in enumerate(shape.tolist())
    ]
    return value.reshape(shape)


_FOLDED_OPS = {
    "Identity": lambda node, x: x,
    "Cast": _cast,
    "DequantizeLinear": _dequantize,
    "Reshape": _reshape,
    "Transpose": lambda node, x: np.transpose(x, _attribute(node, "perm", None)),
    "Unsqueeze": lambda node, x, axes: np.expand_dims(x, tuple(sorted(int(a) for a in axes))),
    "Squeeze": lambda node, x, axes=None: np.squeeze(
        x, None if axes is None else tuple(int(a) for a in axes)
    ),
    "Concat": lambda node, *xs: np.concatenate(xs, axis=_attribute(node, "axis", 0)),
    "Add": lambda node, a, b: a + b,
    "Sub": lambda node, a, b: a - b,
    "Mul": lambda node, a, b: a * b,
    "Div": lambda node, a, b: a / b,
    "Neg": lambda node, x: -x,
    "Sqrt": lambda node, x: np.sqrt(x),
    "Reciprocal": lambda node, x: 1 / x,
}
"""Ops folded when a non-weight constant is computed from stored ones (a dequantized scalar, a
cast, a reshaped shape), by numpy at the ops' ONNX semantics."""
