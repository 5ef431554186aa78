"""The ``tensorrt`` backend: ModelOpt ONNX PTQ → TensorRT engine (Python API) → engine size,
latency and a network for the sliding-window inferer. Behind the ``[gpu]`` extra; TensorRT,
ModelOpt and CUDA are imported lazily, and where one is missing ``BackendUnavailable`` says
``backend unavailable: <reason>`` so the site can route the job to a ``gpu`` worker.

ModelOpt's ONNX quantizer itself runs on CPU (``calibration_eps=["cpu"]``); its Q/DQ placement is
TensorRT-style (weights stored in float, quantized by QuantizeLinear), which ORT does not fuse.
It is the backend's engine PTQ baseline (as NNCF is OpenVINO's), the route of the real-INT8
study: ``engine_quantize`` runs it in a child interpreter (``python -m harness.backends.tensorrt``),
because importing ModelOpt patches ONNX Runtime's quantization module for the rest of the process
(ORT's own ``quantize_static``, the graph-PTQ baseline, then fails in it). Without TensorRT the
baseline stops before quantizing, with ``backend unavailable: <reason>``: its file could not be
scored here.
The latency protocol times the entry's engine against a plain FP32 engine of the reference, per
patch batch, interleaved on the same GPU.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from harness.artifacts.checks import TrackChecks, VerifiedArtifact
from harness.artifacts.kinds import ONNX
from harness.backends.base import Backend, EnginePtq, OpenedArtifact
from harness.errors import BackendUnavailable, HarnessError
from harness.inference.latency import latency_stats, time_calls

if TYPE_CHECKING:
    from harness.inference.latency import LatencyProtocol
    from harness.inference.sliding_window import SlidingWindowSpec

LATENCY_WARMUP = 1
LATENCY_RUNS = 5
MODELOPT_PTQ = EnginePtq(
    scheme="modelopt-int8",
    method="modelopt",
    label="ModelOpt INT8",
    description=(
        "NVIDIA ModelOpt ONNX post-training quantization for TensorRT (quantize_mode int8, run "
        "on CPU: per-channel int8 weights, per-tensor int8 activations on the layers ModelOpt "
        "quantizes for TensorRT's INT8 kernels (convs of too few channels stay float), max "
        "calibration on the track's calibration patches; weights stored as int8 codes, float "
        "layers in float32), built into a TensorRT INT8 + FP16 engine"
    ),
)
"""The ModelOpt → TensorRT route of the real-INT8 study, as the TensorRT backend's engine PTQ."""
MODELOPT_BASELINE_OPTIONS = {"dq_only": True, "high_precision_dtype": "fp32"}
"""ModelOpt's INT8 defaults but for storage: weights as int8 codes under DequantizeLinear (its
default stores them in float16 behind a QuantizeLinear, 16 bits per weight as stored, over a W8A8
track's budget) and the layers it leaves unquantized in float32 (not float16: the closed
division's reach check compares them with the FP32 weights). TensorRT builds the same engine from
either form: it folds the weight quantizer and runs float layers in FP16 under its FP16 flag."""


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here (None when it can): missing package or CUDA GPU."""
    try:
        importlib.import_module("tensorrt")
    except ImportError as error:
        return f"TensorRT is not installed ({error}); install the [gpu] extra on a GPU worker"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to this worker"
    return None


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or BackendUnavailable with the reason."""
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(reason)
    return importlib.import_module("tensorrt")


def modelopt_quantize(
    fp32_onnx: str | Path,
    calibration: np.ndarray,
    out: str | Path,
    *,
    input_name: str,
    nodes_to_quantize: list[str] | None = None,
    high_precision_dtype: str = "fp16",
    dq_only: bool = False,
) -> Path:
    """ModelOpt ONNX PTQ, INT8 mode, max calibration on ``calibration`` (N, C, *roi) float32
    patches, run on CPU; writes the Q/DQ ONNX to ``out``."""
    try:
        quantization = importlib.import_module("modelopt.onnx.quantization")
    except ImportError as error:
        raise BackendUnavailable(f"nvidia-modelopt is not installed ({error})") from error
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantization.quantize(
        str(fp32_onnx),
        quantize_mode="int8",
        calibration_data={input_name: np.ascontiguousarray(calibration, dtype=np.float32)},
        calibration_method="max",
        calibration_eps=["cpu"],
        nodes_to_quantize=nodes_to_quantize,
        high_precision_dtype=high_precision_dtype,
        dq_only=dq_only,
        output_path=str(out),
        log_level="WARNING",
    )
    return out


def modelopt_quantize_in_child(
    fp32_onnx: str | Path, calibration: list[torch.Tensor], out: str | Path
) -> Path:
    """``modelopt_quantize`` of ``fp32_onnx`` with ``MODELOPT_BASELINE_OPTIONS`` on the
    ``calibration`` patch batches, run in a child interpreter (module docstring) whose working
    folder is ``out``'s (ModelOpt and ORT's tools leave intermediate files beside their input and
    in the working folder: a copy of the FP32 file goes there). ``HarnessError`` with ModelOpt's
    last error lines when it fails."""
    if not calibration:
        raise HarnessError("ModelOpt quantization needs calibration patches")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.with_suffix(".fp32.onnx")
    source.write_bytes(Path(fp32_onnx).read_bytes())
    patches = out.with_suffix(".calibration.npy")
    np.save(patches, torch.cat(calibration).numpy().astype(np.float32), allow_pickle=False)
    input_name = onnx_input_name(source)
    command = [sys.executable, "-m", __name__, str(source), str(patches), input_name, str(out)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=out.parent)
    finally:
        source.unlink()
        patches.unlink()
    if done.returncode != 0 or not out.is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise HarnessError(
            f"ModelOpt INT8 quantization failed (exit {done.returncode}): " + " | ".join(lines[-3:])
        )
    return out


def onnx_input_name(path: str | Path) -> str:
    """The name of the ONNX graph's first input (what ModelOpt's calibration data is keyed by)."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def build_engine(
    onnx_path: str | Path, engine_path: str | Path, max_batch: int, *, int8: bool = True
) -> Path:
    """Parse the Q/DQ ONNX and build a serialized INT8 (+FP16) engine for batch 1..max_batch;
    with ``int8=False`` a plain FP32 engine (TF32 off), the reference the entry is timed
    against."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HarnessError(f"TensorRT cannot parse the ONNX file: {errors}")
    config = builder.create_builder_config()
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    shape = tuple(tensor.shape)[1:]
    profile.set_shape(tensor.name, (1, *shape), (max_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HarnessError("TensorRT failed to build an engine from the ONNX file")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


class TrtNetwork(nn.Module):
    """A TensorRT engine as a network: (B, C, *roi) tensor → (B, K, *roi) logits on the CPU.
    The serialized engine is read once (its file may be removed afterwards); ``size_bytes`` is
    its size."""

    def __init__(self, engine_path: str | Path) -> None:
        super().__init__()
        trt = require_tensorrt()
        serialized = Path(engine_path).read_bytes()
        self.size_bytes = len(serialized)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise HarnessError(f"TensorRT cannot deserialize {engine_path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name = inputs[0]
        self.output_name = next(n for n in names if n not in inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().to("cuda", torch.float32).contiguous()
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, batch.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise HarnessError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu()


def engine_efficiency(network: TrtNetwork, batch: torch.Tensor, warmup: int, runs: int) -> dict:
    """Engine size and per-batch / per-patch latency (median, p95) of one patch batch."""
    seconds = time_calls(lambda: network(batch), warmup, runs)
    size = network.size_bytes
    return {
        "backend": "tensorrt",
        "device": torch.cuda.get_device_name(),
        "latency_ms": {
            "per_patch": latency_stats([t / len(batch) for t in seconds]),
            "per_batch": latency_stats(seconds) | {"batch_size": len(batch)},
        },
        "throughput_patches_per_s": len(batch) / float(np.median(seconds)),
        "size_bytes": size,
        "size_mb": size / 1e6,
    }


class TensorRTBackend(Backend):
    """Q/DQ ONNX built into a TensorRT INT8 (+FP16) engine on a GPU worker."""

    name = "tensorrt"
    label = "TensorRT INT8 (GPU)"
    artifact_kinds = (ONNX,)
    queue = "gpu"
    engine_ptq = MODELOPT_PTQ

    def unavailable_reason(self) -> str | None:
        return unavailable_reason()

    def engine_quantize(self, fp32: Path, calibration: list[torch.Tensor], out: Path) -> Path:
        self.require_available()
        return modelopt_quantize_in_child(fp32, calibration, out)

    def load(self, verified: VerifiedArtifact, checks: TrackChecks) -> nn.Module:
        with tempfile.TemporaryDirectory(prefix="medquant-engine-") as engine_dir:
            engine = build_engine(
                verified.path, Path(engine_dir) / "model.engine", checks.sw_batch_size
            )
            return TrtNetwork(engine)

    def measure_efficiency(
        self,
        opened: OpenedArtifact,
        *,
        volume: torch.Tensor,
        window: SlidingWindowSpec,
        fp32: Path | None = None,
        protocol: LatencyProtocol | None = None,
    ) -> dict:
        from harness.inference.efficiency import first_patch_batch

        batch = first_patch_batch(volume, window)
        report = engine_efficiency(opened.network, batch, LATENCY_WARMUP, LATENCY_RUNS)
        if fp32 is not None and protocol is not None:
            with tempfile.TemporaryDirectory(prefix="medquant-engine-fp32-") as engine_dir:
                engine_path = Path(engine_dir) / "fp32.engine"
                reference = TrtNetwork(build_engine(fp32, engine_path, len(batch), int8=False))
            paired = replace(protocol, unit="per_patch_batch")
            report["latency_protocol"] = paired.measure(
                lambda: reference(batch), lambda: opened.network(batch)
            )
        return report


BACKEND = TensorRTBackend()


def _modelopt_child(argv: list[str]) -> None:
    """The child of ``modelopt_quantize_in_child``: FP32 file, calibration ``.npy``, input
    name, output file."""
    fp32, patches, input_name, out = argv
    calibration = np.load(patches, allow_pickle=False)
    modelopt_quantize(fp32, calibration, out, input_name=input_name, **MODELOPT_BASELINE_OPTIONS)


if __name__ == "__main__":
    _modelopt_child(sys.argv[1:])
