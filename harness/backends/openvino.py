"""The ``openvino-cpu`` backend: a Q/DQ ONNX file (verified like an ONNX Runtime upload) compiled
by OpenVINO for the CPU, run under the same sliding-window inferer; efficiency figures with the
FP32 reference compiled and timed interleaved on OpenVINO too, and which layers really ran in
INT8, read from the compiled model's runtime graph.

OpenVINO turns each QuantizeLinear/DequantizeLinear pair into a FakeQuantize and its
low-precision transformations fuse them into integer kernels (``brgconv_avx512_I8`` with VNNI).
The inference precision is pinned to ``f32``: on CPUs with AVX-512 BF16 or AMX OpenVINO's default
hint is bf16, which would silently run the float layers (and the FP32 reference) in bfloat16; so
INT8 comes only from the file's Q/DQ nodes, and a compiled model that still reports a bf16 or f16
node is refused. The file is read by OpenVINO's ONNX frontend only (no other format is tried).
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.artifacts.checks import TrackChecks, VerifiedArtifact
from harness.artifacts.kinds import ONNX
from harness.artifacts.onnx.placement import OPENVINO_PLACEMENT, ORT_PLACEMENT
from harness.backends.base import Backend, EnginePtq, OpenedArtifact
from harness.errors import HarnessError, SubmissionError, out_of_memory
from harness.inference.efficiency import measure_network
from harness.inference.latency import LatencyProtocol
from harness.inference.sliding_window import SlidingWindowSpec

DEVICE = "CPU"
INFERENCE_PRECISION = "f32"
"""Pinned: INT8 comes from the Q/DQ nodes, everything else (and the FP32 reference) in float32."""
HALF_PRECISIONS = frozenset({"bf16", "f16"})
INTEGER_PRECISIONS = frozenset({"u8", "i8"})
"""Runtime precisions of a layer that computes on 8-bit integer inputs."""
WEIGHTED_LAYER_TYPES = frozenset({"Convolution", "Deconvolution", "FullyConnected"})
TRANSFORMER_PRESET = "MIXED"
"""NNCF's preset for a model with attention: its documented default for
``ModelType.TRANSFORMER``. On the demo UNETR (closed W8A8, 8 test cases) the default
PERFORMANCE preset loses 1.05% of mean DSC on ONNX Runtime and 1.10% on OpenVINO; MIXED 0.41% and
0.43%. (``ModelType.TRANSFORMER`` itself adds SmoothQuant scales, which are not a Q/DQ form.)"""
"""Runtime-graph layer types that carry a weight (OpenVINO's CPU plugin names)."""


def unavailable_reason() -> str | None:
    """Why OpenVINO cannot run here (None when it can): missing package or no CPU device."""
    try:
        ov = importlib.import_module("openvino")
    except ImportError as error:
        return f"OpenVINO is not installed ({error}); pip install openvino"
    if DEVICE not in ov.Core().available_devices:
        return "OpenVINO finds no CPU device on this worker"
    return None


def compile_config(threads: int) -> dict[str, object]:
    """Compile settings: pinned f32 precision, ``threads`` inference threads in one stream,
    latency mode, and no thread pinning (the worker shares its cores with other processes)."""
    return {
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION,
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    }


def read_onnx(path: str | Path):
    """The ONNX file at ``path`` as an ``openvino.Model`` through the ONNX frontend only;
    ``SubmissionError`` when OpenVINO cannot convert it."""
    from openvino import frontend as ov_frontend

    failures = (
        RuntimeError,
        ov_frontend.GeneralFailure,
        ov_frontend.InitializationFailure,
        ov_frontend.NotImplementedFailure,
        ov_frontend.OpConversionFailure,
        ov_frontend.OpValidationFailure,
    )
    onnx_frontend = ov_frontend.FrontEndManager().load_by_framework("onnx")
    try:
        return onnx_frontend.convert(onnx_frontend.load(str(path)))
    except failures as error:
        raise SubmissionError(f"OpenVINO cannot read the model: {_first_line(error)}") from error


def compile_onnx(path: str | Path, threads: int, batch: int | None = None):
    """``path`` compiled for the CPU under ``compile_config`` (input batch fixed to ``batch``
    when given); its effective precision hint is checked to be f32."""
    import openvino as ov

    model = read_onnx(path)
    if batch is not None:
        (graph_input,) = model.inputs
        shape = graph_input.get_partial_shape()
        shape[0] = batch
        model.reshape({graph_input.get_any_name(): shape})
    try:
        compiled = ov.Core().compile_model(model, DEVICE, compile_config(threads))
    except RuntimeError as error:
        raise out_of_memory("OpenVINO", "compiling the model", error) or SubmissionError(
            f"OpenVINO cannot compile the model: {_first_line(error)}"
        ) from error
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    if hint != ov.Type.f32:
        raise HarnessError(f"OpenVINO compiled with inference precision {hint}, not f32")
    return compiled


class OpenVinoNetwork(nn.Module):
    """An ONNX file compiled by OpenVINO as a network: (B, C, *roi) float tensor → (B, K, *roi)
    logits. OpenVINO's CPU kernels are fastest on static shapes, so the file is compiled once per
    batch size it is called with (the inferer's full batches and its last, smaller one)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self._requests: dict[int, object] = {}
        self._compiled: dict[int, object] = {}

    def compiled(self, batch: int):
        """The model compiled for input batch size ``batch`` (compiled on first use)."""
        if batch not in self._compiled:
            self._compiled[batch] = compile_onnx(self.path, self.threads, batch)
            self._requests[batch] = self._compiled[batch].create_infer_request()
        return self._compiled[batch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        self.compiled(len(array))
        request = self._requests[len(array)]
        try:
            request.infer({0: array})
        except RuntimeError as error:
            raise out_of_memory("OpenVINO", "running the model", error) or SubmissionError(
                f"OpenVINO failed to run the model: {error}"
            ) from error
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))

    def any_compiled(self):
        """A compiled model (batch 1 unless one was compiled already), for reading its graph."""
        return next(iter(self._compiled.values()), None) or self.compiled(1)


def _rt(op, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def _macs_per_sample(op, layer_type: str) -> int | None:
    """MACs of one sample through a runtime-graph weighted layer, from its static shapes:
    convolution = output voxels × weight elements, deconvolution = input voxels × weight
    elements, fully connected = output rows × weight elements."""
    shapes = [op.input(i).get_partial_shape() for i in range(min(op.get_input_size(), 2))]
    output = op.get_output_partial_shape(0)
    if len(shapes) < 2 or not all(s.is_static for s in (*shapes, output)):
        return None
    data, weight = ([int(d) for d in s.to_shape()] for s in shapes)
    out = [int(d) for d in output.to_shape()]
    weights = math.prod(weight)
    if layer_type == "Convolution":
        return math.prod(out[2:]) * weights
    if layer_type == "Deconvolution":
        return math.prod(data[2:]) * weights
    return math.prod(out[1:-1]) * weights


def runtime_report(compiled, source_nodes: frozenset[str] = frozenset()) -> dict:
    """Which weighted layers OpenVINO really runs in INT8, read from ``compiled``'s runtime graph:
    per layer its runtime precision, kernel and MACs per sample; ``integer_ops`` / ``float_ops``
    the weighted layer types on integer / float inputs; ``kernels`` the kernels that ran by name;
    ``int8_mac_fraction`` the share of weighted MACs on integer inputs. ``source_nodes`` (the
    ONNX file's weighted node names) names each layer after the ONNX node it was compiled from,
    where OpenVINO records it.

    Raises ``HarnessError`` when any node runs in bf16 or f16 (the precision was not pinned)."""
    layers, half = [], []
    for op in compiled.get_runtime_model().get_ordered_ops():
        precision = _rt(op, "runtimePrecision")
        if precision in HALF_PRECISIONS or _rt(op, "outputPrecisions") in HALF_PRECISIONS:
            half.append(op.get_friendly_name())
        layer_type = _rt(op, "layerType")
        if layer_type not in WEIGHTED_LAYER_TYPES:
            continue
        original = _rt(op, "originalLayersNames").split(",")
        macs = _macs_per_sample(op, layer_type) or 0
        batch = op.input(0).get_partial_shape()
        if batch.is_static and int(batch.to_shape()[0]) > 1:
            macs //= int(batch.to_shape()[0])
        layers.append(
            {
                "node": next((n for n in original if n in source_nodes), op.get_friendly_name()),
                "layer_type": layer_type,
                "runtime_precision": precision,
                "kernel": _rt(op, "primitiveType"),
                "macs": macs,
                "integer": precision in INTEGER_PRECISIONS,
            }
        )
    if half:
        raise HarnessError(
            f"OpenVINO ran {len(half)} node(s) in half precision ({half[0]!r} first) although "
            f"the inference precision was pinned to {INFERENCE_PRECISION}"
        )
    total = sum(layer["macs"] for layer in layers)
    integer = sum(layer["macs"] for layer in layers if layer["integer"])
    return {
        "inference_precision": INFERENCE_PRECISION,
        "integer_ops": dict(Counter(x["layer_type"] for x in layers if x["integer"])),
        "float_ops": dict(Counter(x["layer_type"] for x in layers if not x["integer"])),
        "kernels": dict(sorted(Counter(x["kernel"] for x in layers).items())),
        "float_layers": [layer["node"] for layer in layers if not layer["integer"]],
        "macs_per_sample": total,
        "int8_mac_fraction": integer / total if total else 0.0,
        "layers": layers,
    }


def measure_efficiency(
    network: OpenVinoNetwork,
    verified: VerifiedArtifact,
    volume: torch.Tensor,
    window: SlidingWindowSpec,
    *,
    fp32: OpenVinoNetwork | None = None,
    protocol: LatencyProtocol | None = None,
) -> dict:
    """Latency per patch, per patch batch and per volume, the latency protocol against ``fp32``
    when given, serialized size, peak RSS, and the runtime-graph kernel report."""
    import openvino as ov

    measured = measure_network(network, volume, window, fp32=fp32, protocol=protocol)
    size = verified.precision["size_bytes"]
    weighted = frozenset(layer["node"] for layer in verified.precision["layers"])
    return {
        "backend": "openvino-cpu",
        "device": DEVICE,
        "openvino_version": ov.get_version(),
        "inference_threads": network.threads,
        **measured,
        "size_bytes": size,
        "size_mb": size / 1e6,
        "kernels": runtime_report(network.any_compiled(), weighted),
    }


def has_attention(fp32_onnx: str | Path) -> bool:
    """Whether the ONNX graph multiplies two activations (a MatMul or Einsum with no constant
    input): attention, what makes NNCF's transformer preset apply."""
    import onnx

    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    constants = {t.name for t in graph.initializer} | {
        output for node in graph.node if node.op_type == "Constant" for output in node.output
    }
    return any(
        node.op_type in ("MatMul", "Einsum") and not constants.intersection(node.input)
        for node in graph.node
    )


def nncf_quantize(fp32_onnx: str | Path, calibration: list[torch.Tensor], out: str | Path) -> Path:
    """NNCF's post-training quantization of the FP32 ONNX file for OpenVINO's CPU (symmetric
    per-channel int8 weights, per-tensor int8 activations placed by NNCF's CPU rules, min-max
    ranges, fast bias correction) on the ``calibration`` patch batches, written as Q/DQ ONNX at
    ``out`` (``harness.artifacts.onnx.from_openvino``). The preset is NNCF's own choice: MIXED
    (asymmetric activations) for a transformer (``has_attention``), PERFORMANCE (symmetric)
    otherwise; ``TRANSFORMER_PRESET`` gives the reason in numbers."""
    import logging

    import nncf
    import openvino as ov

    from harness.artifacts.onnx.from_openvino import openvino_to_qdq

    nncf.set_log_level(logging.ERROR)
    batches = [np.ascontiguousarray(b.numpy(), dtype=np.float32) for b in calibration]
    if not batches:
        raise HarnessError("NNCF quantization needs calibration patches")
    quantized = nncf.quantize(
        read_onnx(fp32_onnx),
        nncf.Dataset(batches),
        subset_size=sum(len(b) for b in batches),
        target_device=nncf.TargetDevice.CPU,
        preset=getattr(nncf.QuantizationPreset, TRANSFORMER_PRESET)
        if has_attention(fp32_onnx)
        else None,
    )
    return openvino_to_qdq(
        fp32_onnx,
        quantized,
        out,
        {
            "source": f"nncf {nncf.__version__} post-training quantization (openvino "
            f"{ov.get_version().split('-')[0]})",
            "weight_bits": "8",
            "activation_bits": "8",
        },
    )


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


class OpenVinoBackend(Backend):
    """Q/DQ ONNX compiled by OpenVINO for the CPU (f32 pinned): verified, then run."""

    name = "openvino-cpu"
    label = "OpenVINO CPU INT8"
    artifact_kinds = (ONNX,)
    qdq_placements = (OPENVINO_PLACEMENT, ORT_PLACEMENT)
    engine_ptq = EnginePtq(
        scheme="nncf-int8",
        method="nncf",
        label="NNCF INT8",
        description=(
            "NNCF post-training quantization for OpenVINO CPU (default preset: symmetric "
            "per-channel int8 weights, per-tensor int8 activations where NNCF's CPU rules place "
            "them, min-max ranges, fast bias correction), written as Q/DQ ONNX"
        ),
    )

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def load(self, verified: VerifiedArtifact, checks: TrackChecks) -> nn.Module:
        network = OpenVinoNetwork(verified.path, checks.threads)
        network.compiled(checks.sw_batch_size)  # compile errors surface here
        return network

    def measure_efficiency(
        self,
        opened: OpenedArtifact,
        *,
        volume: torch.Tensor,
        window: SlidingWindowSpec,
        fp32: Path | None = None,
        protocol: LatencyProtocol | None = None,
    ) -> dict:
        threads = protocol.threads if protocol is not None else opened.network.threads
        reference = None if fp32 is None else OpenVinoNetwork(fp32, threads)
        return measure_efficiency(
            opened.network, opened.verified, volume, window, fp32=reference, protocol=protocol
        )

    def engine_quantize(self, fp32: Path, calibration: list[torch.Tensor], out: Path) -> Path:
        self.require_available()
        return nncf_quantize(fp32, calibration, out)


BACKEND = OpenVinoBackend()
