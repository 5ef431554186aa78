"""The ``onnxruntime-cpu`` backend: an ONNX Runtime session as a network for the sliding-window
inferer, which kernels ORT really runs (read from its optimised graph), efficiency figures with
the FP32 reference timed interleaved on ORT too, and a per-layer profile (which integer kernels
ORT runs slower than float ones).

Sessions use ORT's full graph optimisation with ``session.qdqisint8allowed`` on, so Q/DQ groups
with int8 activations (as ORT's own ``quantize_static`` writes them) are fused into integer
kernels on x86 too, not only uint8 ones. ORT's 3D QLinearConv is several times slower than its
float Conv on thin layers (few input or output channels), and it has no integer ConvTranspose:
a graph quantized throughout can be slower than FP32, which the speed-up then says.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from harness.artifacts.checks import TrackChecks, VerifiedArtifact
from harness.artifacts.kinds import ONNX
from harness.artifacts.onnx.graph import GraphIndex, infer_shapes, weighted_ops
from harness.backends.base import Backend, OpenedArtifact
from harness.inference.efficiency import (
    DEFAULT_RUNS,
    DEFAULT_WARMUP,
    measure_network,
)
from harness.inference.latency import LatencyProtocol
from harness.inference.sliding_window import SlidingWindowSpec
from harness.onnxruntime_session import OrtNetwork, create_session

PROFILE_RUNS = 3
"""Profiled runs per graph when choosing layers (after one warm-up run): per-layer times of a
slower integer kernel differ from float by factors, not percent."""
SLOWER_MARGIN = 1.25
"""A layer counts as slower in integer only when its integer time exceeds its float time by a
quarter: differences within that are profiling noise on a shared machine (a ConvTranspose, which
ORT runs in float either way, measured 9.6 vs 8.3 ms)."""

# ORT ops that compute in integer arithmetic (default and com.microsoft domains)
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearConvTranspose",
        "QLinearMatMul",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearSigmoid",
        "QLinearSoftmax",
    }
)
# floating-point ops that carry a weight (ORT's fused and NCHWc forms included)
FLOAT_WEIGHTED_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def kernel_report(verified: VerifiedArtifact, threads: int = 1) -> dict:
    """Which weighted ops ORT runs as integer kernels after graph optimisation.

    Each Conv/ConvTranspose/Gemm/MatMul of the verified graph counts as integer when an integer
    op of the optimised graph consumes its weight (the integer initializer or its dequantized
    tensor); ``int8_mac_fraction`` weighs that by MACs per sample (the verifier's per-layer
    count). ``float_ops`` lists the floating-point compute ops left in the optimised graph (Q/DQ
    and layout ops excluded).
    """
    index = verified.graph
    layer_macs = {layer["node"]: layer["macs"] or 0 for layer in verified.precision["layers"]}
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        create_session(verified.path, threads, optimized_path)
        optimized = onnx.load(str(optimized_path), load_external_data=False)
    integer_inputs = set()
    op_counts: Counter[str] = Counter()
    for node in optimized.graph.node:
        op_counts[node.op_type] += 1
        if node.op_type in INTEGER_OPS:
            integer_inputs.update(node.input)
    layers, total, integer = [], 0, 0
    for op in weighted_ops(index):
        names = {op.weight}
        _, producer = index.follow(op.weight)
        if producer is not None and producer.op_type == "DequantizeLinear":
            names.update((producer.input[0], producer.output[0]))
        macs = layer_macs.get(op.name, 0)
        runs_integer = bool(names & integer_inputs)
        total += macs
        integer += macs if runs_integer else 0
        layers.append(
            {"node": op.name, "op": op.node.op_type, "macs": macs, "integer": runs_integer}
        )
    float_ops = {
        op: n
        for op, n in sorted(op_counts.items())
        if op not in INTEGER_OPS and op not in QDQ_OPS and op not in ("Transpose", "Reshape")
    }
    return {
        "integer_ops": {op: n for op, n in sorted(op_counts.items()) if op in INTEGER_OPS},
        "float_ops": float_ops,
        "float_weighted_ops": {op: n for op, n in float_ops.items() if op in FLOAT_WEIGHTED_OPS},
        "layout_transposes": op_counts.get("Transpose", 0),
        "macs_per_sample": total,
        "int8_mac_fraction": integer / total if total else 0.0,
        "layers": layers,
    }


def measure_efficiency(
    network: OrtNetwork,
    verified: VerifiedArtifact,
    volume: torch.Tensor,
    window: SlidingWindowSpec,
    *,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    threads: int = 1,
    fp32: OrtNetwork | None = None,
    protocol: LatencyProtocol | None = None,
) -> dict:
    """Latency per patch, per patch batch and per volume (``measure_network``), the latency
    protocol against ``fp32`` when given, serialized size, peak RSS and the kernel report of the
    verified file."""
    measured = measure_network(
        network, volume, window, fp32=fp32, protocol=protocol, warmup=warmup, runs=runs
    )
    size = verified.precision["size_bytes"]
    return {
        "backend": "onnxruntime-cpu",
        "provider": "CPUExecutionProvider",
        "intra_op_threads": threads,
        **measured,
        "size_bytes": size,
        "size_mb": size / 1e6,
        "kernels": kernel_report(verified, threads),
    }


def node_profile(path: str | Path, batch: np.ndarray, threads: int, runs: int) -> dict[str, float]:
    """Mean milliseconds per run that ORT's profiler attributes to each node of the optimised
    graph, by the source node's name (ORT names a fused node after the node it replaced)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    options.enable_profiling = True
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        (graph_input,) = session.get_inputs()
        for _ in range(runs + 1):  # the first run is the warm-up, dropped below
            session.run(None, {graph_input.name: batch})
        events = json.loads(Path(session.end_profiling()).read_text())
    node_events = [
        e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
    ]
    per_run = len(node_events) // (runs + 1)
    times: dict[str, float] = defaultdict(float)
    for event in node_events[per_run:]:
        node = event["name"].removesuffix("_kernel_time").split("_token_")[0]
        times[node] += event["dur"] / 1000 / runs
    return dict(times)


def _weight_of_node(path: str | Path) -> dict[str, str]:
    """Weighted node name → the name of the weight tensor it reads, in the graph at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    index = GraphIndex(model, infer_shapes(model))
    return {op.name: op.weight for op in weighted_ops(index)}


def slower_integer_layers(
    fp32: str | Path, int8: str | Path, batch: torch.Tensor, *, threads: int, runs: int
) -> dict[str, dict[str, float]]:
    """Weighted layers ORT runs slower (by more than ``SLOWER_MARGIN``) from ``int8`` (a Q/DQ
    graph whose weights keep the FP32 graph's tensor names, as the harness exporter writes them)
    than from ``fp32``, per ORT's profiler on ``batch``: weight name → integer and float
    milliseconds per run."""
    array = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
    timed = {}
    for name, path in (("integer_ms", int8), ("float_ms", fp32)):
        profile = node_profile(path, array, threads, runs)
        timed[name] = {
            weight: profile[node]
            for node, weight in _weight_of_node(path).items()
            if node in profile
        }
    return {
        weight: {"integer_ms": integer, "float_ms": timed["float_ms"][weight]}
        for weight, integer in timed["integer_ms"].items()
        if weight in timed["float_ms"] and integer > SLOWER_MARGIN * timed["float_ms"][weight]
    }


def relative_difference(model: nn.Module, path: str | Path, batch: torch.Tensor) -> float:
    """max |ONNX Runtime(path)(batch) − model(batch)| / max |model(batch)| over all logits: how
    closely an exported graph, run as this backend runs it, follows its PyTorch model."""
    session = create_session(path)
    (graph_input,) = session.get_inputs()
    (graph_output,) = session.get_outputs()
    inputs = {graph_input.name: batch.numpy().astype(np.float32)}
    ort_out = session.run([graph_output.name], inputs)[0]
    with torch.no_grad():
        reference = model.eval()(batch).numpy()
    return float(np.abs(ort_out - reference).max() / max(np.abs(reference).max(), 1e-12))


class OnnxRuntimeBackend(Backend):
    """Q/DQ ONNX on ONNX Runtime's CPU provider: verified, then run as an ORT session."""

    name = "onnxruntime-cpu"
    label = "ONNX Runtime CPU INT8"
    artifact_kinds = (ONNX,)
    profiles_layers = True

    def load(self, verified: VerifiedArtifact, checks: TrackChecks) -> nn.Module:
        return OrtNetwork(create_session(verified.path, checks.threads))

    def measure_efficiency(
        self,
        opened: OpenedArtifact,
        *,
        volume: torch.Tensor,
        window: SlidingWindowSpec,
        fp32: Path | None = None,
        protocol: LatencyProtocol | None = None,
    ) -> dict:
        threads = protocol.threads if protocol is not None else 1
        reference = None if fp32 is None else OrtNetwork(create_session(fp32, threads))
        return measure_efficiency(
            opened.network, opened.verified, volume, window, threads=threads, fp32=reference,
            protocol=protocol,
        )  # fmt: skip

    def slower_integer_layers(
        self, fp32: Path, int8: Path, batch: torch.Tensor, *, threads: int
    ) -> dict[str, dict[str, float]]:
        return slower_integer_layers(fp32, int8, batch, threads=threads, runs=PROFILE_RUNS)


BACKEND = OnnxRuntimeBackend()
