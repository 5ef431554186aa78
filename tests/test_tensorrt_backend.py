"""The tensorrt backend: ModelOpt ONNX PTQ (runs on CPU here, for real), registered as the
backend's engine PTQ baseline (as NNCF is OpenVINO's), the `backend unavailable` path (also for
that baseline, in the harness and on the site), and engine build / latency (need TensorRT and a
CUDA GPU: skipped with the reason here). Tests named ``…tensorrt_import_blocked…`` make
``import tensorrt`` fail (the GPU boundary, mocked) so that they hold on a GPU machine too."""

import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from leaderboard_fixtures import site_storage
from modelopt_int8 import modelopt_int8

from harness.artifacts.onnx.verify import (
    OnnxInterface,
    PrecisionLimits,
    verify_onnx,
)
from harness.artifacts.precision import check_for_track
from harness.backends import get_backend
from harness.backends.tensorrt import (
    MODELOPT_PTQ,
    BackendUnavailable,
    modelopt_quantize_in_child,
    require_tensorrt,
    unavailable_reason,
)
from harness.cli import main
from harness.entry.baseline import baseline_methods, baselines_for, compute_baseline
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import SubmissionError
from harness.models.interface import ONNX_FILE
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

__all__ = ["site_storage"]
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
    batches = [b.numpy().astype(np.float32) for b in track.calibration]
    out = tmp_path_factory.mktemp("modelopt") / "modelopt_int8.onnx"
    input_name = OnnxInterface.for_model(track.model_spec).input_name
    return modelopt_int8(track.fp32_onnx, batches, input_name, out)


@pytest.fixture
def trt_track(track) -> LoadedTrack:
    """The track on the tensorrt backend (its FP32 model and calibration already loaded)."""
    spec = replace(track.spec, backend="tensorrt")
    return LoadedTrack(spec, track.dataset, track.model_spec, track.model)


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


def test_modelopt_is_the_tensorrt_backends_engine_ptq_baseline(track):
    assert get_backend("tensorrt").engine_ptq == MODELOPT_PTQ
    offered = {(b.method, b.scheme) for b in baselines_for(replace(track.spec, backend="tensorrt"))}
    assert (MODELOPT_PTQ.method, MODELOPT_PTQ.scheme) in offered
    assert MODELOPT_PTQ.method in baseline_methods()
    on_ort = {b.method for b in baselines_for(track.spec)}
    assert MODELOPT_PTQ.method not in on_ort


def test_modelopt_baseline_with_tensorrt_import_blocked_says_backend_unavailable(
    trt_track, tmp_path, without_tensorrt
):
    with pytest.raises(BackendUnavailable, match=r"^backend unavailable: TensorRT is not inst"):
        compute_baseline(
            trt_track, method=MODELOPT_PTQ.method, scheme=MODELOPT_PTQ.scheme, workdir=tmp_path
        )
    assert not (tmp_path / ONNX_FILE).exists()  # stopped before quantizing: nothing to score


def test_modelopt_baselines_cpu_step_runs_for_real_in_a_child(track, trt_track, tmp_path):
    from harness.artifacts.onnx.graph_ptq import quantize_graph_int8

    out = modelopt_quantize_in_child(
        trt_track.fp32_onnx, trt_track.calibration, tmp_path / "m.onnx"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    verified = get_backend("tensorrt").verify(out, trt_track.checks())
    check_for_track(verified.precision, trt_track.checks())
    precision = verified.precision
    assert precision["weight_bits"] == 8 and precision["activation_bits"] == 8
    quantized = [layer for layer in precision["layers"] if layer["weight_granularity"] != "none"]
    assert quantized and not precision["run_time_quantized_weight_layers"]  # stored as int8
    assert precision["bits_per_weight"] < 16  # not ModelOpt's default float16 storage
    # ModelOpt ran in its own interpreter: ORT's quantizer is not patched in this one
    assert quantize_graph_int8(track.fp32_onnx, track.calibration, tmp_path / "ort.onnx").is_file()
    fp32 = track.run(track.model, False, "fp32")
    result = evaluate_submission(track, Submission("onnx", onnx=out), fp32=fp32).result
    assert result["submission"]["precision"]["weight_bits"] == 8


@pytest.mark.django_db
def test_site_modelopt_baseline_with_tensorrt_import_blocked_ends_with_the_reason(
    tiny_track, site_storage, without_tensorrt, caplog
):
    from leaderboard.submissions import pipeline
    from leaderboard.submissions.models import Status
    from leaderboard.tracks.seeding import (
        create_track,
        import_dataset,
        import_model,
        queue_baselines,
    )

    dataset_dir, model_dir = tiny_track
    track = create_track(
        import_dataset(dataset_dir, slug="tiny"), import_model(model_dir),
        weight_bits=8, activation_bits=8, backend="tensorrt", bits_per_weight_budget=9,
        max_float_mac_fraction=0.9,
    )  # fmt: skip
    queued = {s.scheme: s for s in queue_baselines(track)}
    modelopt = queued[MODELOPT_PTQ.scheme]
    assert modelopt.reference_method == MODELOPT_PTQ.method and modelopt.method == "ModelOpt INT8"
    assert pipeline.run(modelopt.pk) == Status.FAILED
    modelopt.refresh_from_db()
    assert modelopt.error.startswith("backend unavailable: TensorRT is not installed")
    assert "'gpu' queue" in modelopt.error and "internal error" not in modelopt.error
    assert not any(record.exc_info for record in caplog.records)  # no traceback logged
