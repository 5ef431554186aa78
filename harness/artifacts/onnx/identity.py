"""Is an ONNX file the track's reference network, and (closed division) post-training quantized
from its FP32 weights?

Network identity: the file's weighted ops (Conv, ConvTranspose, Gemm, MatMul with a constant
weight), in graph order, must match the reference export's one for one — op type, weight shape,
strides, dilations, pads and groups — and it must apply the same activation functions as many
times (Gelu in any of its ONNX forms counts as Gelu). Q/DQ nodes and pass-through ops are ignored,
so Q/DQ files from the harness, ONNX Runtime's ``quantize_static`` and ModelOpt all compare.

Post-training only: each weighted op's dequantized weight ŵ = scale · (code − zero) must lie
within the quantizer's reach of the reference weight w: RMS(ŵ − w) ≤ ``REACH_STEPS`` · RMS(step),
the step being the scale of each weight's group. Round-to-nearest sits at about 0.29 steps;
error-compensating PTQ (GPTQ, COMQ) moves weights by up to a few steps; retraining or fine-tuning
moves them by many. A float weight must equal the reference.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from harness.artifacts.onnx.graph import GraphIndex, WeightedOp, weighted_ops
from harness.artifacts.post_training import REACH_STEPS
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


def check_reference_network(
    submitted: onnx.ModelProto, reference: onnx.ModelProto, *, closed: bool
) -> None:
    """NotReferenceNetwork naming the first layer or node that differs (see module docstring)."""
    index, ref_index = GraphIndex(submitted), GraphIndex(reference)
    ops, ref_ops = weighted_ops(index), weighted_ops(ref_index)
    layers = [_signature(op, index) for op in ops]
    ref_layers = [_signature(op, ref_index) for op in ref_ops]
    if len(layers) != len(ref_layers):
        raise NotReferenceNetwork(
            f"the network is not the track's reference: it has {len(layers)} weighted layers "
            f"(Conv/ConvTranspose/Gemm/MatMul), the reference network {len(ref_layers)}"
        )
    for position, (layer, ref) in enumerate(zip(layers, ref_layers, strict=True), start=1):
        if (layer.op, layer.weight_shape, layer.attributes) != (
            ref.op,
            ref.weight_shape,
            ref.attributes,
        ):
            raise NotReferenceNetwork(
                f"the network is not the track's reference: weighted layer {position} (node "
                f"{layer.node!r}) is {layer.describe()}, the reference's is {ref.describe()}"
            )
    activations, ref_activations = _activations(submitted), _activations(reference)
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
    if closed:
        for op, ref_op in zip(ops, ref_ops, strict=True):
            _check_reach(op, index, ref_index.array(ref_index.follow(ref_op.weight)[0]))


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


def _activations(model: onnx.ModelProto) -> Counter[str]:
    return Counter(
        ACTIVATION_OPS[node.op_type] for node in model.graph.node if node.op_type in ACTIVATION_OPS
    )


def _check_reach(op: WeightedOp, index: GraphIndex, reference: np.ndarray) -> None:
    """The dequantized weight of ``op`` within ``REACH_STEPS`` RMS steps of ``reference``."""
    reference = reference.astype(np.float64)
    source, producer = index.follow(op.weight)
    if producer is None or producer.op_type != "DequantizeLinear":
        weight = index.array(source).astype(np.float64)
        if not np.allclose(weight, reference, rtol=FLOAT_WEIGHT_RTOL, atol=0):
            raise NotReferenceNetwork(
                f"{op.node.op_type} node {op.name!r} keeps float weights that differ from the "
                "FP32 reference; a closed track admits post-training quantization only"
            )
        return
    codes_name, quantizer = index.follow(producer.input[0])
    if quantizer is not None and quantizer.op_type == "QuantizeLinear":
        stored = index.array(index.follow(quantizer.input[0])[0]).astype(np.float64)
        if not np.allclose(stored, reference, rtol=FLOAT_WEIGHT_RTOL, atol=0):
            raise NotReferenceNetwork(
                f"{op.node.op_type} node {op.name!r} stores float weights (quantized at run time) "
                "that differ from the FP32 reference; a closed track admits post-training "
                "quantization only"
            )
        return
    codes = index.array(codes_name).astype(np.float64)
    scale = index.array(index.follow(producer.input[1])[0]).astype(np.float64)
    zero = np.zeros_like(scale)
    if len(producer.input) > 2 and producer.input[2]:
        zero = index.array(index.follow(producer.input[2])[0]).astype(np.float64)
    if scale.size > 1:
        axis = next((a.i for a in producer.attribute if a.name == "axis"), 1) % codes.ndim
        shape = [1] * codes.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    dequantized = (codes - zero) * scale
    step = np.broadcast_to(np.abs(scale), codes.shape)
    distance = float(np.sqrt(np.mean((dequantized - reference) ** 2)))
    reach = REACH_STEPS * float(np.sqrt(np.mean(step**2)))
    if distance > reach:
        raise NotReferenceNetwork(
            f"{op.node.op_type} node {op.name!r}: its weights are "
            f"{distance / (reach / REACH_STEPS):.1f} quantization steps (RMS) from the FP32 "
            f"reference, beyond the {REACH_STEPS:g} a post-training quantizer reaches; a closed "
            "track admits post-training quantization only (retrained or fine-tuned weights belong "
            "on an open track)"
        )
