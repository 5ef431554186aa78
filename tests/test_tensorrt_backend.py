"""The tensorrt backend: ModelOpt ONNX PTQ (runs on CPU here, for real), the `backend unavailable`
path, and engine build / latency (need TensorRT and a CUDA GPU: skipped with the reason here)."""

import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from harness.artifacts.onnx.verify import (
    OnnxInterface,
    PrecisionLimits,
    verify_onnx,
)
from harness.backends.tensorrt import (
    BackendUnavailable,
    modelopt_baseline,
    require_tensorrt,
    unavailable_reason,
)
from harness.cli import main
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import SubmissionError
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

TRT_REASON = unavailable_reason()
needs_tensorrt = pytest.mark.skipif(TRT_REASON is not None, reason=str(TRT_REASON))


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    spec = TrackSpec(
        model_dir=model_dir,
        dataset_dir=dataset,
        backend="onnxruntime-cpu",
        weight_bits=8,
        activation_bits=8,
        max_float_mac_fraction=0.9,  # the tiny UNet's full-resolution output conv: 82%
        # ModelOpt stores weights in float16 and quantizes them at run time: 16 bits per weight
        # as stored, so a ModelOpt track's budget is raised from the default 8 + 0.5
        bits_per_weight_budget=16.5,
    )
    return LoadedTrack.open(spec)


@pytest.fixture(scope="module")
def modelopt_onnx(track, tmp_path_factory):
    """What a participant following the TensorRT recipe uploads: ModelOpt INT8 defaults,
    calibrated on the track's calibration cases."""
    return modelopt_baseline(
        track.model, track.model_spec, track.calibration, tmp_path_factory.mktemp("modelopt")
    )


@pytest.fixture
def without_tensorrt(monkeypatch):
    """Make `import tensorrt` fail, as on a CPU worker, whatever this machine has installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_modelopt_int8_upload_is_tensorrt_style_qdq(modelopt_onnx):
    model = onnx.load(str(modelopt_onnx))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    weight_quantizers = [
        n
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0].endswith(".weight")
    ]
    assert weight_quantizers, "ModelOpt quantizes float weights with QuantizeLinear in the graph"


def test_modelopt_upload_is_verified_with_its_float_layers_named(track, modelopt_onnx):
    interface = OnnxInterface.for_model(track.model_spec)
    report = verify_onnx(modelopt_onnx, interface, PrecisionLimits(8, 8, max_float_mac_fraction=1))
    assert report["weight_bits"] == 8 and report["activation_bits"] == 8
    assert 0 < report["weight_quantized_mac_fraction"] <= 1
    # ModelOpt stores float16 weights that QuantizeLinear turns into int8 codes at run time: they
    # are reported so, and their 16 stored bits are what counts in bits per weight
    quantized = [layer for layer in report["layers"] if layer["weight_granularity"] != "none"]
    assert {layer["weight_storage"] for layer in quantized} == {"float16, quantized at run time"}
    assert report["run_time_quantized_weight_layers"] == [layer["node"] for layer in quantized]
    assert 16 < report["bits_per_weight"] < 17
    if report["float_weight_layers"]:  # ModelOpt 0.47 keeps the output conv in float
        with pytest.raises(SubmissionError, match=report["float_weight_layers"][0]):
            verify_onnx(modelopt_onnx, interface, PrecisionLimits(8, 8))


def test_modelopt_upload_is_evaluated_on_onnxruntime(track, modelopt_onnx):
    fp32 = track.run(track.model, False, "fp32")
    evaluated = evaluate_submission(track, Submission("onnx", onnx=modelopt_onnx), fp32=fp32)
    result, run = evaluated.result, evaluated.run
    assert result["submission"]["precision"]["weight_bits"] == 8
    assert 16 < result["submission"]["precision"]["bits_per_weight"] <= 16.5
    assert result["efficiency"]["size_bytes"] == modelopt_onnx.stat().st_size
    assert len(run.cases) == len(track.test_cases)


def test_tensorrt_track_reports_backend_unavailable(track, modelopt_onnx, without_tensorrt):
    assert unavailable_reason().startswith("TensorRT is not installed")
    trt_track = LoadedTrack(
        replace(track.spec, backend="tensorrt"), track.dataset, track.model_spec, track.model
    )
    with pytest.raises(BackendUnavailable, match=r"^backend unavailable: TensorRT is not"):
        evaluate_submission(trt_track, Submission("onnx", onnx=modelopt_onnx))
    with pytest.raises(BackendUnavailable, match="backend unavailable: "):
        require_tensorrt()


def test_cli_prints_backend_unavailable(
    tiny_track, modelopt_onnx, tmp_path, capsys, without_tensorrt
):
    dataset, model_dir = tiny_track
    code = main(
        [
            "evaluate",
            "--quiet",
            "--dataset",
            str(dataset),
            "--model",
            str(model_dir),
            "--backend",
            "tensorrt",
            "--onnx",
            str(modelopt_onnx),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2
    assert "error: backend unavailable: TensorRT is not installed" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.tensorrt
@needs_tensorrt
def test_engine_builds_and_matches_onnxruntime(track, modelopt_onnx, tmp_path):
    from harness.backends.tensorrt import TrtNetwork, build_engine, engine_efficiency
    from harness.onnxruntime_session import OrtNetwork, create_session

    engine = build_engine(modelopt_onnx, tmp_path / "model.engine", max_batch=2)
    network = TrtNetwork(engine)
    batch = track.calibration[0]
    reference = OrtNetwork(create_session(modelopt_onnx))(batch)
    assert torch.allclose(network(batch), reference, atol=0.5)
    stats = engine_efficiency(network, batch, warmup=2, runs=5)
    assert stats["size_bytes"] == engine.stat().st_size
    assert stats["latency_ms"]["per_batch"]["median_ms"] > 0
    assert np.isfinite(stats["throughput_patches_per_s"])
