"""The ``onnxruntime-cpu`` backend: an ONNX Runtime session as a network for the sliding-window
inferer, which kernels ORT really runs (read from its optimised graph), and efficiency figures.

Sessions use ORT's full graph optimisation with ``session.qdqisint8allowed`` on, so Q/DQ groups
with int8 activations (as ORT's own ``quantize_static`` writes them) are fused into integer
kernels on x86 too, not only uint8 ones.
"""

from __future__ import annotations

import resource
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from torch import nn

from harness.artifacts.kinds import ONNX
from harness.artifacts.onnx.graph import GraphIndex, infer_shapes, macs_per_sample, weighted_ops
from harness.artifacts.onnx.verify import verify_for_track
from harness.backends.base import Backend, OpenedArtifact
from harness.errors import HarnessError, SubmissionError
from harness.inference.latency import latency_stats, time_calls
from harness.inference.sliding_window import SlidingWindowSpec, predict_labels
from harness.models.reference import ModelSpec
from harness.track.spec import TrackSpec

LATENCY_WARMUP = 1
LATENCY_RUNS = 5
INTRA_OP_THREADS = 1

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
ORT_ERRORS = tuple(
    getattr(_ort_state, name)
    for name in (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
    )
    if hasattr(_ort_state, name)
)


def create_session(
    path: str | Path, threads: int = 1, optimized_path: str | Path | None = None
) -> ort.InferenceSession:
    """CPU session with full graph optimisation, ``threads`` intra-op threads, 1 inter-op thread;
    the optimised graph is written to ``optimized_path`` when given."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as error:
        raise SubmissionError(f"ONNX Runtime cannot load the model: {error}") from error


class OrtNetwork(nn.Module):
    """An ORT session as a network: (B, C, *roi) float tensor → (B, K, *roi) logits.

    A graph with a fixed batch size b gets the patches in chunks of b, the last one zero-padded
    (padding rows are dropped from the output), so the inferer's semantics are unchanged.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        super().__init__()
        self.session = session
        (graph_input,) = session.get_inputs()
        (graph_output,) = session.get_outputs()
        self.input_name, self.output_name = graph_input.name, graph_output.name
        batch = graph_input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        step = self.fixed_batch or len(array)
        outputs = []
        for start in range(0, len(array), step):
            chunk = array[start : start + step]
            rows = len(chunk)
            if rows < step:
                pad = np.zeros((step - rows, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            try:
                out = self.session.run([self.output_name], {self.input_name: chunk})[0]
            except ORT_ERRORS as error:
                raise SubmissionError(f"ONNX Runtime failed to run the model: {error}") from error
            outputs.append(out[:rows])
        return torch.from_numpy(np.concatenate(outputs).astype(np.float32, copy=False))


def kernel_report(model_path: str | Path, threads: int = 1) -> dict:
    """Which weighted ops ORT runs as integer kernels after graph optimisation.

    Each Conv/ConvTranspose/Gemm/MatMul of the submitted graph counts as integer when an integer
    op of the optimised graph consumes its weight (the integer initializer or its dequantized
    tensor); ``int8_mac_fraction`` weighs that by MACs per sample. ``float_ops`` lists the
    floating-point compute ops left in the optimised graph (Q/DQ and layout ops excluded).
    """
    model = onnx.load(str(model_path), load_external_data=False)
    index = GraphIndex(model, infer_shapes(model))
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        create_session(model_path, threads, optimized_path)
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
        source, _ = index.follow(op.weight)
        macs = macs_per_sample(op, index, index.shapes.get(source) or [1]) or 0
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


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (getrusage, Linux KiB units)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_efficiency(
    network: OrtNetwork,
    model_path: str | Path,
    volume: torch.Tensor,
    window: SlidingWindowSpec,
    *,
    warmup: int = 1,
    runs: int = 5,
    threads: int = 1,
) -> dict:
    """Latency per patch batch and per volume (warm-up, then ``runs`` timed runs: median, p95),
    throughput, serialized size, peak RSS and the kernel report of ``model_path``.

    The patch batch is the inferer's first batch of ``volume`` (sw_batch_size patches); per-patch
    latency is the batch latency divided by its size.
    """
    if runs < 1 or warmup < 0:
        raise HarnessError("latency needs runs >= 1 and warmup >= 0")
    batch = first_patch_batch(volume, window, network)
    with torch.no_grad():
        batch_times = time_calls(lambda: network(batch), warmup, runs)
        volume_times = time_calls(lambda: predict_labels(network, volume, window), warmup, runs)
    patch = latency_stats([t / len(batch) for t in batch_times])
    size = Path(model_path).stat().st_size
    return {
        "backend": "onnxruntime-cpu",
        "provider": "CPUExecutionProvider",
        "intra_op_threads": threads,
        "latency_ms": {
            "per_patch": patch,
            "per_batch": latency_stats(batch_times) | {"batch_size": len(batch)},
            "per_volume": latency_stats(volume_times)
            | {"volume_shape": [int(d) for d in volume.shape]},
        },
        "throughput_patches_per_s": len(batch) / float(np.median(batch_times)),
        "size_bytes": size,
        "size_mb": size / 1e6,
        "peak_rss_mb": peak_rss_mb(),
        "kernels": kernel_report(model_path, threads),
    }


def first_patch_batch(
    volume: torch.Tensor, window: SlidingWindowSpec, network: nn.Module
) -> torch.Tensor:
    """The first batch of patches the inferer cuts from ``volume`` (C, x, y, z)."""
    captured: list[torch.Tensor] = []

    def capture(batch: torch.Tensor) -> torch.Tensor:
        if not captured:
            captured.append(torch.as_tensor(batch).clone())
            captured.append(network(captured[0]))
        return torch.zeros((len(batch), *captured[1].shape[1:]))

    with torch.no_grad():
        window.inferer()(torch.as_tensor(volume)[None].float(), capture)
    return captured[0]


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

    def open(
        self, artifact: Path, *, spec: TrackSpec, model_spec: ModelSpec, reference: nn.Module
    ) -> OpenedArtifact:
        precision = verify_for_track(artifact, spec, model_spec, reference)
        return OpenedArtifact(OrtNetwork(create_session(artifact, INTRA_OP_THREADS)), precision)

    def measure_efficiency(
        self,
        opened: OpenedArtifact,
        artifact: Path,
        *,
        volume: torch.Tensor,
        window: SlidingWindowSpec,
    ) -> dict:
        return measure_efficiency(
            opened.network,
            artifact,
            volume,
            window,
            warmup=LATENCY_WARMUP,
            runs=LATENCY_RUNS,
            threads=INTRA_OP_THREADS,
        )


BACKEND = OnnxRuntimeBackend()
