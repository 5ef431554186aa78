"""An ONNX submission on an ``onnxruntime-cpu`` or ``tensorrt`` track: verified against the track,
opened on the track's backend as a network for the sliding-window inferer, then measured."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from harness.artifacts.onnx.verify import OnnxInterface, PrecisionLimits, verify_onnx
from harness.backends.tensorrt import require_tensorrt
from harness.data.preprocessing import preprocess, read_case
from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.submission import LoadedTrack

ONNX_BACKENDS = ("onnxruntime-cpu", "tensorrt")
LATENCY_WARMUP = 1
LATENCY_RUNS = 5
INTRA_OP_THREADS = 1


def open_onnx_submission(track: LoadedTrack, path: Path) -> tuple[nn.Module, dict]:
    """Verify ``path`` against the track and open it on the track's backend: (network, verified
    precision). A ``tensorrt`` track without TensorRT or a GPU raises BackendUnavailable first."""
    spec = track.spec
    if spec.backend not in ONNX_BACKENDS:
        raise HarnessError(
            f"ONNX submissions are scored on {' or '.join(ONNX_BACKENDS)} tracks; this track's "
            f"backend is {spec.backend}"
        )
    if spec.backend == "tensorrt":
        require_tensorrt()
    limits = PrecisionLimits(
        weight_bits=spec.weight_bits,
        activation_bits=spec.activation_bits,
        max_float_mac_fraction=spec.max_float_mac_fraction,
    )
    precision = verify_onnx(path, OnnxInterface.for_model(track.model_spec), limits)
    if spec.backend == "onnxruntime-cpu":
        from harness.backends.onnxruntime import OrtNetwork, create_session

        return OrtNetwork(create_session(path, INTRA_OP_THREADS)), precision
    from harness.backends.tensorrt import TrtNetwork, build_engine

    engine_dir = Path(tempfile.mkdtemp(prefix="medquant-engine-"))
    engine = build_engine(
        path, engine_dir / "model.engine", track.model_spec.sliding_window.sw_batch_size
    )
    return TrtNetwork(engine), precision


def onnx_efficiency(track: LoadedTrack, network: nn.Module, path: Path) -> dict:
    """Efficiency on the track's backend, measured on the first test volume (see backends)."""
    case = track.test_cases[0]
    volume = preprocess(read_case(case, track.dataset.labels), track.model_spec.preprocessing)
    window = track.model_spec.sliding_window
    if track.spec.backend == "onnxruntime-cpu":
        from harness.backends.onnxruntime import measure_efficiency

        result = measure_efficiency(
            network,
            path,
            volume,
            window,
            warmup=LATENCY_WARMUP,
            runs=LATENCY_RUNS,
            threads=INTRA_OP_THREADS,
        )
    else:
        from harness.backends.onnxruntime import first_patch_batch
        from harness.backends.tensorrt import engine_efficiency

        batch = first_patch_batch(volume, window, network)
        result = engine_efficiency(network, batch, LATENCY_WARMUP, LATENCY_RUNS)
    return result | {"latency_case": case.case_id}
