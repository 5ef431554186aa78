"""Is an ONNX file the track's reference network, and (closed division) post-training quantized
from its FP32 weights?

Network identity: the file's weighted ops (Conv, ConvTranspose, Gemm, MatMul with a constant
weight), ordered by their depth in weighted ops from the input (Q/DQ insertion and node order of
parallel branches do not change it), must match the reference export's one for one — op type,
weight shape, strides, dilations, pads and groups — and it must apply the same activation
functions as many times (Gelu in any of its ONNX forms counts as Gelu; a Relu may be dropped
where an activation quantizer clamps at 0 in its place -- zero-point at the integer type's
lowest code --, as ONNX Runtime's ``quantize_static`` removes a Relu before such a quantizer).
Layers of one depth with identical signatures (parallel branches) are paired by their weights.
Q/DQ nodes and pass-through ops are ignored, so Q/DQ files from the harness, ONNX Runtime's
``quantize_static`` and ModelOpt all compare. Then the whole graph must be the reference export
node for node once Q/DQ pairs are removed (``graph_match``: the comparisons above come first as
they name a differing layer more plainly).

Post-training only: each weighted op's dequantized weight ŵ = scale · (code − zero) must lie
within the quantizer's reach of the reference weight w, output channel by output channel, as for
checkpoints (``harness.artifacts.post_training``): no scale's grid (2^b − 1 steps, b the bits its
codes span) wider than ``max_grid_span(b)`` times the 2·max|w| of its channels, and each
channel's RMS((ŵ − w) / step) ≤ ``REACH_STEPS``, the step being the scale of each weight's group
(one per channel along the DequantizeLinear's axis, or one per tensor). A weight stored in floating
point (kept float, or quantized at run time as ModelOpt stores it) must equal the reference at its
stored precision; a magnitude below the storage type's smallest subnormal, which it cannot hold,
may be stored as any value of at most that magnitude (ModelOpt's fp16 storage writes such weights
as +2^-24 ≈ 6e-8, which quantizes to the reference's code).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from harness.artifacts.onnx.graph import GraphIndex, WeightedOp, weighted_ops
from harness.artifacts.onnx.graph_match import check_graph_match
from harness.artifacts.post_training import Reach, channel_reach, check_reach
from harness.errors import SubmissionError

FLOAT_WEIGHT_RTOL = 1e-5
"""A weight kept in floating point must equal the reference up to float rounding."""
ACTIVATION_OPS = {
    "Relu": "Relu",
    "PRelu": "PRelu",
    "LeakyRelu": "LeakyRelu",
    "Elu": "Elu",
    "Selu": "Selu",
    "Sigmoid": "Sigmoid",
    "HardSigmoid": "HardSigmoid",
    "HardSwish": "HardSwish",
    "Tanh": "Tanh",
    "Softmax": "Softmax",
    "Softplus": "Softplus",
    "Mish": "Mish",
    "Erf": "Gelu",
    "Gelu": "Gelu",
    "FastGelu": "Gelu",
    "BiasGelu": "Gelu",
    "QLinearLeakyRelu": "LeakyRelu",
    "QLinearSigmoid": "Sigmoid",
    "QLinearSoftmax": "Softmax",
}
"""Activation op type → the function it applies."""
_CONV_ATTRIBUTES = ("strides", "dilations", "pads", "group", "output_padding")


class NotReferenceNetwork(SubmissionError):
    """The file is not the track's reference network, or not post-training quantized from it."""


@dataclass(frozen=True)
class LayerSignature:
    """What identifies one weighted op: its type, weight shape and convolution attributes."""

    node: str
    op: str
    weight_shape: tuple[int, ...]
    attributes: tuple[tuple[str, tuple[int, ...]], ...]

    def describe(self) -> str:
        attrs = ", ".join(f"{k}={list(v)}" for k, v in self.attributes if v)
        return f"{self.op} with weight {list(self.weight_shape)}" + (f" ({attrs})" if attrs else "")


def check_reference_network(index: GraphIndex, reference: onnx.ModelProto, *, closed: bool) -> None:
    """NotReferenceNetwork naming the first layer or node that differs (see module docstring);
    ``index``: the upload, shape-inferred."""
    submitted, ref_index = index.model, GraphIndex(reference)
    ops, layers = _ordered(index)
    ref_ops, ref_layers = _ordered(ref_index)
    if len(layers) != len(ref_layers):
        raise NotReferenceNetwork(
            f"the network is not the track's reference: it has {len(layers)} weighted layers "
            f"(Conv/ConvTranspose/Gemm/MatMul), the reference network {len(ref_layers)}"
        )
    pairs = zip(layers, ref_layers, strict=True)
    for position, ((level, layer), (ref_level, ref)) in enumerate(pairs, start=1):
        if (level, _key(layer)) != (ref_level, _key(ref)):
            raise NotReferenceNetwork(
                f"the network is not the track's reference: weighted layer {position} (node "
                f"{layer.node!r}, depth {level}) is {layer.describe()}, the reference's (depth "
                f"{ref_level}) is {ref.describe()}"
            )
    activations, ref_activations = _activations(submitted), _activations(reference)
    absorbed = min(
        _clamping_quantizers(index), max(ref_activations["Relu"] - activations["Relu"], 0)
    )
    if absorbed:  # Relus a quantizer's clamp at 0 applies (ONNX Runtime's Relu removal)
        activations["Relu"] += absorbed
    if activations != ref_activations:
        differing = sorted(set(activations) ^ set(ref_activations)) or sorted(
            k for k in activations if activations[k] != ref_activations[k]
        )
        name = differing[0]
        raise NotReferenceNetwork(
            f"the network is not the track's reference: it applies {name} "
            f"{activations.get(name, 0)} times, the reference network "
            f"{ref_activations.get(name, 0)}"
        )
    check_graph_match(index, reference)
    if closed:
        for group in _tied_groups(layers):
            candidates = [ref_index.array(ref_index.follow(ref_ops[i].weight)[0]) for i in group]
            for position in group:
                held = _held(ops[position], index)
                # parallel branches with one signature: the nearest reference weight not yet taken
                nearest = int(np.argmin([_rms(held.weight - c) for c in candidates]))
                _check_reach(ops[position], held, candidates.pop(nearest))


def _ordered(index: GraphIndex) -> tuple[list[WeightedOp], list[LayerSignature]]:
    """Weighted ops and their signatures sorted by (weighted depth, signature); ONNX graphs list
    nodes in topological order, so one pass gives every tensor's depth."""
    depth: dict[str, int] = {}
    op_depth: dict[int, int] = {}
    ops = weighted_ops(index)
    weighted = {id(op.node) for op in ops}
    for node in index.model.graph.node:
        level = max((depth.get(name, 0) for name in node.input), default=0)
        if id(node) in weighted:
            level += 1
            op_depth[id(node)] = level
        for name in node.output:
            depth[name] = level
    keyed = [(op_depth[id(op.node)], _signature(op, index), op) for op in ops]
    keyed.sort(key=lambda item: (item[0], _key(item[1])))
    return [op for _, _, op in keyed], [(level, sig) for level, sig, _ in keyed]


def _key(signature: LayerSignature) -> tuple:
    return (signature.op, signature.weight_shape, signature.attributes)


def _tied_groups(layers: list) -> list[list[int]]:
    """Positions of layers sharing (depth, signature), in order."""
    groups: dict[tuple, list[int]] = {}
    for position, (level, signature) in enumerate(layers):
        groups.setdefault((level, _key(signature)), []).append(position)
    return list(groups.values())


def _signature(op: WeightedOp, index: GraphIndex) -> LayerSignature:
    source, producer = index.follow(op.weight)
    if producer is not None and producer.op_type == "DequantizeLinear":
        source, quantizer = index.follow(producer.input[0])
        if quantizer is not None and quantizer.op_type == "QuantizeLinear":
            source, _ = index.follow(quantizer.input[0])
    shape = tuple(int(d) for d in index.shapes.get(source) or ())
    attributes = []
    if op.node.op_type in ("Conv", "ConvTranspose"):
        spatial = max(len(shape) - 2, 0)
        defaults = {
            "strides": (1,) * spatial,
            "dilations": (1,) * spatial,
            "pads": (0,) * (2 * spatial),
            "group": (1,),
            "output_padding": (0,) * spatial,
        }
        given = {a.name: tuple(a.ints) or (a.i,) for a in op.node.attribute}
        attributes = [(name, given.get(name, defaults[name])) for name in _CONV_ATTRIBUTES]
        attributes = [(n, v) for n, v in attributes if v != defaults[n] or n == "group"]
    return LayerSignature(op.name, op.node.op_type, shape, tuple(attributes))


def _clamping_quantizers(index: GraphIndex) -> int:
    """How many activation QuantizeLinear nodes clamp at 0 -- zero-point at their integer type's
    lowest code, so every dequantized value is ≥ 0 and negative inputs become 0, as a Relu
    does -- without reading a Relu's output: those that can stand for a Relu the quantizer
    removed."""
    count = 0
    for node in index.model.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or not node.input[2]:
            continue
        zero_name, _ = index.follow(node.input[2])
        if zero_name not in index.constants or index.is_constant(node.input[0]):
            continue
        zero = index.array(zero_name)
        lowest = np.iinfo(zero.dtype).min if np.issubdtype(zero.dtype, np.integer) else None
        _, producer = index.follow(node.input[0])
        reads_relu = producer is not None and producer.op_type == "Relu"
        if lowest is not None and zero.size == 1 and int(zero.reshape(())) == lowest:
            count += not reads_relu
    return count


def _activations(model: onnx.ModelProto) -> Counter[str]:
    return Counter(
        ACTIVATION_OPS[node.op_type] for node in model.graph.node if node.op_type in ACTIVATION_OPS
    )


@dataclass(frozen=True)
class HeldWeight:
    """The weight a weighted op computes with (float64), and how it is stored: ``step`` (each
    weight's quantization step), ``groups`` (each weight's scale: 0 per tensor, its channel along
    ``axis`` per channel) and ``bits`` (the bits its codes span) when it comes from integer codes,
    None when it is stored in floating point as ``dtype``."""

    weight: np.ndarray
    dtype: np.dtype
    step: np.ndarray | None = None
    groups: np.ndarray | None = None
    axis: int | None = None
    bits: int | None = None


def _held(op: WeightedOp, index: GraphIndex) -> HeldWeight:
    """The weight ``op`` computes with and its storage (``HeldWeight``)."""
    source, producer = index.follow(op.weight)
    if producer is None or producer.op_type != "DequantizeLinear":
        stored = index.array(source)
        return HeldWeight(stored.astype(np.float64), stored.dtype)
    codes_name, quantizer = index.follow(producer.input[0])
    if quantizer is not None and quantizer.op_type == "QuantizeLinear":
        stored = index.array(index.follow(quantizer.input[0])[0])
        return HeldWeight(stored.astype(np.float64), stored.dtype)
    codes = index.array(codes_name).astype(np.float64)
    scale = index.array(index.follow(producer.input[1])[0]).astype(np.float64)
    zero = np.zeros_like(scale)
    if len(producer.input) > 2 and producer.input[2]:
        zero = index.array(index.follow(producer.input[2])[0]).astype(np.float64)
    axis = None
    groups = np.zeros(codes.shape, dtype=np.int64)
    if scale.size > 1:
        axis = next((a.i for a in producer.attribute if a.name == "axis"), 1) % codes.ndim
        shape = [1] * codes.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
        groups = np.broadcast_to(np.arange(scale.size).reshape(shape), codes.shape)
    step = np.broadcast_to(np.abs(scale), codes.shape)
    span = int(codes.max() - codes.min()) if codes.size else 0
    bits = min(max(span.bit_length(), 1), 8 * index.array(codes_name).dtype.itemsize)
    return HeldWeight((codes - zero) * scale, codes.dtype, step, groups, axis, bits)


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values, dtype=np.float64))))


def _output_axis(op: WeightedOp, ndim: int) -> int:
    """The output-channel axis of ``op``'s weight: Conv 0, ConvTranspose 1, Gemm by its transpose
    flag, MatMul the weight's last axis on the right (its rows on the left)."""
    node = op.node
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        flag = "transB" if op.weight_input == 1 else "transA"
        transposed = next((a.i for a in node.attribute if a.name == flag), 0)
        return (0 if transposed else 1) if op.weight_input == 1 else (1 if transposed else 0)
    if node.op_type == "MatMul":
        return ndim - 1 if op.weight_input == 1 else max(ndim - 2, 0)
    return 0


def _rows(values: np.ndarray, axis: int) -> torch.Tensor:
    """The (channels, rest) rows view of ``values`` along its output-channel ``axis``."""
    moved = np.moveaxis(np.asarray(values), axis, 0)
    return torch.from_numpy(np.array(moved).reshape(moved.shape[0], -1))  # a writable copy


def _check_reach(op: WeightedOp, held: HeldWeight, reference: np.ndarray) -> None:
    """The weight ``op`` holds (``_held``) within a post-training quantizer's reach of
    ``reference``, channel by channel (module docstring); one stored in floating point equal to it
    at the stored precision."""
    weight, dtype = held.weight, held.dtype
    if held.step is None:
        expected = reference.astype(dtype).astype(np.float64)
        tiny = float(np.finfo(dtype).smallest_subnormal)
        unrepresentable = (np.abs(reference) < tiny) & (np.abs(weight) <= tiny)
        equal = np.isclose(weight, expected, rtol=FLOAT_WEIGHT_RTOL, atol=0) | unrepresentable
        if not equal.all():
            worst = float(np.abs(weight - expected)[~equal].max())
            raise NotReferenceNetwork(
                f"{op.node.op_type} node {op.name!r} stores float weights that differ from the "
                f"FP32 reference ({int((~equal).sum())} of {equal.size}, by up to {worst:.3g}); "
                "a closed track admits post-training quantization only"
            )
        return
    problem = check_reach(f"{op.node.op_type} node {op.name!r}", reach(op, held, reference))
    if problem is not None:
        raise NotReferenceNetwork(problem)


def reach(op: WeightedOp, held: HeldWeight, reference: np.ndarray) -> Reach:
    """The ``Reach`` of a weight stored as integer codes against the reference weight, its rows
    the op's output channels (the DequantizeLinear's axis when its scales are per channel)."""
    axis = held.axis if held.axis is not None else _output_axis(op, held.weight.ndim)
    return channel_reach(
        _rows(held.weight, axis),
        _rows(reference.astype(np.float64), axis),
        _rows(held.step, axis),
        _rows(held.groups, axis),
        held.bits,
    )
