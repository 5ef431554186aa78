"""What an ONNX file's layers use, measured (the decisions against a track's limits are
``harness.artifacts.precision``'s).

Every weighted op (Conv, ConvTranspose, Gemm, MatMul with a constant operand) is one
``LayerPrecision``: its weight taken through DequantizeLinear from integer codes (an integer
initializer, or QuantizeLinear of a float initializer as TensorRT-style tools write it), or a float
weight; the bits, storage and grid of its input quantizer. A weight produced otherwise (computed at
run time) is refused here: it is no artifact the harness can measure.

Bits of a weight = min(storage bits, fewest bits spanning its code range max - min), so int8
storage holding codes in [-7, 7] counts as 4-bit; activation bits = storage bits of the quantizer
whose grid the input lies on, through ops that keep values on it (Reshape, Transpose, Slice,
Split, MaxPool, nearest Resize, Pad with zero, a Concat of inputs sharing one per-tensor grid:
``GraphIndex.grid_sources``).
A weight stored as a float initializer and quantized at run time (QuantizeLinear → DequantizeLinear,
as ModelOpt writes it) counts at its code bits and is reported as stored (``weight_storage``,
``run_time_quantized_weight_layers``). Float weights and activations count at their float width.
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
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto

from harness.artifacts.onnx.graph import (
    FLOAT_BITS,
    INTEGER_BITS,
    OTHER_BITS,
    QUANTIZERS,
    GraphIndex,
    WeightedOp,
    dtype_name,
    macs_per_sample,
)
from harness.artifacts.onnx.safety import OnnxVerificationError


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
class LayerPrecision:
    """What one weighted op uses: its node, op type, weight tensor, weight bits (codes: the span
    of ``code_min``..``code_max`` within their storage; a float weight: its float width), storage
    dtype, granularity (``none`` for a float weight), the bits of its input's quantizer (None:
    float input, the tensor ``input``), MACs per sample, number of weights and ``stored_bits``."""

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
    input: str = ""
    code_min: int | None = None
    code_max: int | None = None

    @property
    def is_float(self) -> bool:
        return self.weight_granularity == "none"


@dataclass(frozen=True)
class ActivationQuantizer:
    """A quantizer of an activation (not of a constant weight or bias): node, op, bits, dtype."""

    node: str
    op: str
    bits: int
    dtype: str


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


def measure_layer(op: WeightedOp, index: GraphIndex) -> LayerPrecision:
    """What ``op`` uses (see module docstring); ``OnnxVerificationError`` when its weight is not
    a float initializer nor integer codes through DequantizeLinear."""
    what = f"{op.node.op_type} node {op.name!r}"
    source, producer = index.follow(op.weight)
    if producer is None or producer.op_type != "DequantizeLinear":
        if source in index.constants and index.constants[source].data_type in FLOAT_BITS:
            return _float_layer(op, index, index.constants[source])
        if source in index.constants:
            dtype = dtype_name(index.constants[source].data_type)
            raise OnnxVerificationError(
                f"{what}: weight {op.weight!r} is a {dtype} initializer, neither a float weight "
                "nor DequantizeLinear of an integer initializer"
            )
        maker = "nothing" if producer is None else f"{producer.op_type} node {producer.name!r}"
        raise OnnxVerificationError(
            f"{what}: weight {op.weight!r} is produced by {maker}, not by DequantizeLinear of an "
            "integer initializer"
        )
    codes_name, elem, codes, runtime_quantized = _weight_codes(producer, index, what)
    storage = INTEGER_BITS[elem]
    span = int(codes.max() - codes.min()) if codes.size else 0
    bits = min(storage, max(1, span.bit_length()))
    dtype = dtype_name(elem)
    scale = index.array(index.follow(producer.input[1])[0])
    block = next((a.i for a in producer.attribute if a.name == "block_size"), 0)
    granularity = "blockwise" if block else "per-channel" if scale.size > 1 else "per-tensor"
    if runtime_quantized is None:  # the codes as stored: at their dtype's width
        code_bits = codes.size * storage
    else:  # stored as float, quantized at run time: the float is what is stored
        code_bits = codes.size * FLOAT_BITS[runtime_quantized.data_type]
    zero = producer.input[2] if len(producer.input) > 2 else None
    stored = code_bits + _tensor_bits(index, producer.input[1]) + _tensor_bits(index, zero)
    return LayerPrecision(
        op.name,
        op.node.op_type,
        codes_name,
        bits,
        dtype,
        granularity,
        _activation_bits(op, index),
        macs_per_sample(op, index, list(codes.shape)),
        int(codes.size),
        int(stored),
        dtype if runtime_quantized is None else _runtime_storage(runtime_quantized.data_type),
        _activation_grid(op, index),
        op.activation,
        int(codes.min()) if codes.size else 0,
        int(codes.max()) if codes.size else 0,
    )


def _float_layer(op: WeightedOp, index: GraphIndex, tensor: onnx.TensorProto) -> LayerPrecision:
    """A weighted op whose weight is a float initializer, counted at its float width."""
    dtype = dtype_name(tensor.data_type)
    return LayerPrecision(
        op.name,
        op.node.op_type,
        tensor.name,
        FLOAT_BITS[tensor.data_type],
        dtype,
        "none",
        _activation_bits(op, index),
        macs_per_sample(op, index, list(tensor.dims)),
        weight_storage=dtype,
        input=op.activation,
    )


def _weight_codes(
    producer: onnx.NodeProto, index: GraphIndex, what: str
) -> tuple[str, int, np.ndarray, onnx.TensorProto | None]:
    """The integer codes a weight DequantizeLinear dequantizes: their tensor's name, integer
    type and values, and the float initializer they are computed from at run time (None when
    stored as integers)."""
    codes_name, codes_producer = index.follow(producer.input[0])
    if codes_name in index.constants:
        elem = index.constants[codes_name].data_type
        if elem not in INTEGER_BITS:
            raise OnnxVerificationError(
                f"{what}: its weight DequantizeLinear {producer.name!r} dequantizes "
                f"{dtype_name(elem)} {codes_name!r}, not an integer initializer"
            )
        return codes_name, elem, index.array(codes_name).astype(np.int64), None
    if codes_producer is not None and codes_producer.op_type == "QuantizeLinear":
        elem, codes = _constant_quantize(codes_producer, index, what)
        float_weight = index.constants[index.follow(codes_producer.input[0])[0]]
        return codes_name, elem, codes, float_weight
    raise OnnxVerificationError(
        f"{what}: its weight DequantizeLinear {producer.name!r} reads {codes_name!r}, which "
        "is computed at run time, not an integer initializer"
    )


def _runtime_storage(elem_type: int) -> str:
    return f"{dtype_name(elem_type)}, quantized at run time"


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


def _input_quantizer(op: WeightedOp, index: GraphIndex) -> onnx.NodeProto | None:
    """The DequantizeLinear whose integer grid ``op``'s activation input lies on, through
    grid-preserving ops (``GraphIndex.grid_sources``): the one it copies, or the first of several
    (a Concat's inputs) that share one per-tensor grid -- the same scale, zero-point and integer
    type --; None when the input is float or its sources lie on different grids."""
    sources = index.grid_sources(op.activation)
    if not sources:
        return None
    grids = {_per_tensor_grid(node, index) for node in sources} if len(sources) > 1 else set()
    if len(grids) > 1 or None in grids:
        return None
    return sources[0]


def _per_tensor_grid(node: onnx.NodeProto, index: GraphIndex) -> tuple | None:
    """(scale, zero-point, integer type) of a per-tensor DequantizeLinear with constant
    parameters, None for any other."""
    bits = _quantizer_bits(node, index)
    scale_name, _ = index.follow(node.input[1])
    if bits is None or scale_name not in index.constants or index.array(scale_name).size != 1:
        return None
    zero = 0
    if len(node.input) > 2 and node.input[2]:
        zero_name, _ = index.follow(node.input[2])
        if zero_name not in index.constants or index.array(zero_name).size != 1:
            return None
        zero = int(index.array(zero_name).reshape(()))
    return float(index.array(scale_name).reshape(())), zero, bits[1]


def _activation_bits(op: WeightedOp, index: GraphIndex) -> int | None:
    """Bits of the quantizer feeding ``op``'s activation input, None when it is float."""
    producer = _input_quantizer(op, index)
    if producer is None:
        return None
    found = _quantizer_bits(producer, index)
    return None if found is None else found[0]


def _activation_grid(op: WeightedOp, index: GraphIndex) -> str | None:
    """``symmetric`` or ``asymmetric`` grid of the quantizer feeding ``op``'s activation input
    (None when it is float): read from its zero-point and integer type."""
    producer = _input_quantizer(op, index)
    if producer is None:
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


def activation_quantizers(index: GraphIndex) -> list[ActivationQuantizer]:
    """Every quantizer of an activation (weight and bias dequantizers excluded), with its bits;
    ``OnnxVerificationError`` for one that does not quantize to an integer type."""
    found = []
    for node in index.model.graph.node:
        if node.op_type not in QUANTIZERS:
            continue
        if node.op_type == "DequantizeLinear" and index.is_constant(node.input[0]):
            continue  # a weight or bias dequantizer
        bits = _quantizer_bits(node, index)
        if bits is None:
            raise OnnxVerificationError(
                f"{node.op_type} node {node.name!r} does not quantize to an integer type"
            )
        found.append(ActivationQuantizer(node.name, node.op_type, *bits))
    return found


def report(
    layers: list[LayerPrecision], quantizers: list[ActivationQuantizer], size: int, opset: int
) -> dict:
    """The precision report of a verified file (the result document's ``precision``)."""
    activation_bits = max((q.bits for q in quantizers), default=None)
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
        "layers": [asdict(layer) for layer in layers],
        "activation_quantizer_nodes": [asdict(quantizer) for quantizer in quantizers],
        "size_bytes": size,
        "opset": opset,
    }
