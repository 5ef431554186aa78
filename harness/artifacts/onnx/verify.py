"""Verification of a submitted ONNX file before it is scored, and its verified precision.

Safety and structure first (``safety``), then what each layer uses is measured (``layers``), then
metadata claims are checked against it; ``verify_onnx`` also applies precision limits, through the
one precision check (``harness.artifacts.precision``). Safety checks, in order, each failure an
``OnnxVerificationError`` naming the tensor or node: file size;
a parsable protobuf; at most ``MAX_NODES`` nodes; no model-local functions, subgraphs or
external data; allowed opset domains and op types (default domain + com.microsoft quantization
ops); sane declared dimensions and initializer sizes; an acyclic graph at most
``MAX_GRAPH_DEPTH`` deep with every input defined; the track's input/output names, element type
and shapes; Q/DQ scale inputs present; ``onnx.checker`` (full check, with shape inference); every
tensor's shape known before the graph runs, its size within ``MAX_ELEMENTS_PER_INPUT_ELEMENT``
times the input's (on a track, after the reference-network match); static,
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
Effective bits per weight over the quantized weighted ops = (codes at their bits, or the float
width of a weight stored as float and quantized at run time, + scales and zero-points at their
storage width) ÷ their number of weights.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from harness.artifacts.checks import (
    DEFAULT_MAX_BYTES,
    OnnxInterface,
    PrecisionLimits,
    TrackChecks,
    VerifiedArtifact,
)
from harness.artifacts.onnx.graph import GraphIndex, weighted_ops
from harness.artifacts.onnx.identity import check_reference_network
from harness.artifacts.onnx.layers import (
    LayerPrecision,
    activation_quantizers,
    measure_layer,
    report,
)
from harness.artifacts.onnx.safety import (
    OnnxVerificationError,
    check_run_time_sizes,
    checked_model,
)
from harness.artifacts.precision import check_precision
from harness.models.interface import METADATA_PREFIX

__all__ = [
    "OnnxInterface",
    "OnnxVerificationError",
    "PrecisionLimits",
    "verify_for_track",
    "verify_onnx",
]


def verify_for_track(path: str | Path, checks: TrackChecks) -> VerifiedArtifact:
    """Verify an ONNX submission against a track: safe, well-formed, its interface, its precision
    measured, then that it is the track's reference network (and, on a closed track,
    post-training quantized from its FP32 weights; see ``identity``). The file is read, parsed
    and hashed once, here; the track's limits are decided by the one precision check."""
    if checks.reference_graph is None:
        raise OnnxVerificationError("this track has no FP32 reference graph to match ONNX against")
    report, index, digest = _measured(
        path, checks.interface, checks.limits.max_bytes, sizes_after_identity=True
    )
    check_reference_network(index, checks.reference_graph, closed=checks.closed)
    check_run_time_sizes(index.model, checks.interface)
    precision = report | {"reference_network": "matched", "division": checks.division}
    return VerifiedArtifact("onnx", Path(path), digest, precision, index)


def verify_onnx(path: str | Path, interface: OnnxInterface, limits: PrecisionLimits) -> dict:
    """Verify the file at ``path`` (see module docstring) and check it against ``limits``; its
    verified precision report."""
    report = _measured(path, interface, limits.max_bytes)[0]
    check_precision(
        report,
        weight_bits=limits.weight_bits,
        activation_bits=limits.activation_bits,
        max_float_mac_fraction=limits.max_float_mac_fraction,
    )
    return report


def measure_onnx(
    path: str | Path, interface: OnnxInterface, max_bytes: int = DEFAULT_MAX_BYTES
) -> VerifiedArtifact:
    """A file checked for safety and measured, with no track limits and no identity check: for
    the harness's own exports and analyses (kernel reports, benchmarks)."""
    report, index, digest = _measured(path, interface, max_bytes)
    return VerifiedArtifact("onnx", Path(path), digest, report, index)


def _measured(
    path: str | Path, interface: OnnxInterface, max_bytes: int, *, sizes_after_identity=False
) -> tuple[dict, GraphIndex, str]:
    """The precision report of the file at ``path`` once it passed the safety checks and its
    claims hold, the shape-inferred index of the model and the file's SHA-256; with
    ``sizes_after_identity`` the run-time size check is the caller's, after the reference
    network's match."""
    checked = checked_model(path, interface, max_bytes, sizes=not sizes_after_identity)
    index = checked.index
    layers = [measure_layer(op, index) for op in weighted_ops(index)]
    measured = report(layers, activation_quantizers(index), checked.size, checked.opset)
    _check_claims(index.model, measured, layers)
    return measured, index, checked.sha256


def _check_claims(model: onnx.ModelProto, report: dict, layers: list[LayerPrecision]) -> None:
    """Metadata ``medquant.weight_bits`` / ``medquant.activation_bits`` may not understate. The
    weight claim is about the quantized weights: float-weight layers are bounded by the track's
    float-MAC allowance instead (``harness.artifacts.precision``)."""
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
