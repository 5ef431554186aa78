"""The onnxruntime-cpu backend: an ORT session under MONAI's sliding-window inferer gives the same
probabilities as PyTorch; static-batch graphs are padded; ONNX submissions are evaluated into the
result schema with efficiency figures; peer-made (ORT quantize_static) uploads run integer
kernels."""

import json
from dataclasses import replace

import jsonschema
import numpy as np
import onnx
import pytest
import torch

from harness.artifacts.checks import OnnxInterface
from harness.artifacts.onnx.export import export_fp32
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.verify import measure_onnx
from harness.backends.onnxruntime import measure_efficiency
from harness.cli import main
from harness.data.preprocessing import preprocess, read_case
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import CheckpointError, HarnessError
from harness.inference.efficiency import first_patch_batch
from harness.inference.latency import latency_stats, time_calls
from harness.inference.sliding_window import predict_probabilities
from harness.onnxruntime_session import OrtNetwork, create_session
from harness.scoring.result import SCHEMA_PATH
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

SCHEMA = json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    spec = TrackSpec(
        model_dir=model_dir,
        dataset_dir=dataset,
        backend="onnxruntime-cpu",
        weight_bits=8,
        activation_bits=8,
    )
    return LoadedTrack.open(spec)


@pytest.fixture(scope="module")
def onnx_files(track, tmp_path_factory):
    root = tmp_path_factory.mktemp("ort")
    fp32 = export_fp32(track.model, track.model_spec, root / "fp32.onnx")
    int8 = export_qdq(
        int8_model(track.model, track.calibration),
        track.model_spec,
        track.calibration,
        root / "int8.onnx",
    )
    return fp32, int8


@pytest.fixture(scope="module")
def volume(track):
    case = track.test_cases[0]
    return preprocess(read_case(case, track.dataset.labels), track.model_spec.preprocessing)


def _static_batch_copy(path, batch: int, out):
    model = onnx.load(str(path))
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = batch
    onnx.save(model, str(out))
    return out


def test_sliding_window_through_ort_equals_pytorch(track, onnx_files, volume):
    fp32, _ = onnx_files
    window = replace(track.model_spec.sliding_window, overlap=0.5, sw_batch_size=3)
    expected = predict_probabilities(track.model, volume, window)
    actual = predict_probabilities(OrtNetwork(create_session(fp32)), volume, window)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-4)


def test_static_batch_graph_gets_padded_batches(onnx_files, track, tmp_path):
    fp32, _ = onnx_files
    static = OrtNetwork(create_session(_static_batch_copy(fp32, 2, tmp_path / "b2.onnx")))
    dynamic = OrtNetwork(create_session(fp32))
    assert static.fixed_batch == 2 and dynamic.fixed_batch is None
    torch.manual_seed(0)
    patches = torch.rand(3, 1, *track.model_spec.sliding_window.roi_size)  # 2 + 1 padded
    out = static(patches)
    assert out.shape == (3, len(track.model_spec.labels), *patches.shape[2:])
    assert torch.allclose(out, dynamic(patches), atol=1e-5)


def test_unloadable_model_is_a_harness_error(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model")
    with pytest.raises(HarnessError, match="ONNX Runtime cannot load the model"):
        create_session(garbage)


def test_latency_stats_are_median_and_p95_in_ms():
    stats = latency_stats([i / 1000 for i in range(1, 101)])
    assert stats == {"median_ms": pytest.approx(50.5), "p95_ms": pytest.approx(95.05), "runs": 100}
    calls = []
    seconds = time_calls(lambda: calls.append(1), warmup=2, runs=3)
    assert len(calls) == 5 and len(seconds) == 3 and min(seconds) >= 0


def test_efficiency_measures_latency_size_memory_and_kernels(track, onnx_files, volume):
    _, int8 = onnx_files
    network = OrtNetwork(create_session(int8))
    window = track.model_spec.sliding_window
    verified = measure_onnx(int8, OnnxInterface.for_model(track.model_spec))
    stats = measure_efficiency(network, verified, volume, window, warmup=1, runs=3)
    latency = stats["latency_ms"]
    for key in ("per_patch", "per_batch", "per_volume"):
        assert 0 < latency[key]["median_ms"] <= latency[key]["p95_ms"]
        assert latency[key]["runs"] == 3
    batch = first_patch_batch(volume, window)
    assert latency["per_batch"]["batch_size"] == len(batch) <= window.sw_batch_size
    assert stats["size_bytes"] == int8.stat().st_size
    assert stats["peak_rss_mb"] > 0
    assert stats["kernels"]["integer_ops"]["QLinearConv"] > 0


def test_onnx_submission_scores_like_the_fp32_reference(track, onnx_files):
    fp32_onnx, _ = onnx_files
    open_track = LoadedTrack(
        replace(track.spec, weight_bits=None, activation_bits=None),
        track.dataset,
        track.model_spec,
        track.model,
    )
    reference = open_track.run(track.model, False, "fp32")
    evaluated = evaluate_submission(open_track, Submission("onnx", onnx=fp32_onnx), fp32=reference)
    result, run = evaluated.result, evaluated.run
    jsonschema.validate(result, SCHEMA)
    for ours, theirs in zip(run.cases, reference.cases, strict=True):
        assert ours.mean_dsc == pytest.approx(theirs.mean_dsc, abs=1e-3)
    assert result["submission"]["precision"]["weight_bits"] == 32
    assert result["efficiency"]["kernels"]["int8_mac_fraction"] == 0.0


def test_wrong_submission_kind_for_the_backend_is_refused(track, onnx_files):
    _, int8 = onnx_files
    simulated = LoadedTrack(
        replace(track.spec, backend="simulated"), track.dataset, track.model_spec, track.model
    )
    with pytest.raises(HarnessError, match="ONNX submissions are scored on onnxruntime-cpu"):
        evaluate_submission(simulated, Submission("onnx", onnx=int8))
    with pytest.raises(CheckpointError, match="onnxruntime-cpu track scores ONNX files"):
        evaluate_submission(track, Submission("scheme", scheme="w8a8-per-tensor"))


def test_peer_quantize_static_upload_runs_integer_kernels(track, onnx_files, tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32, _ = onnx_files
    batches = iter([b.numpy() for b in track.calibration])

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"image": batch}

    peer = tmp_path / "peer.onnx"
    quantize_static(
        str(fp32),
        str(peer),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,  # S8S8: fused only with session.qdqisint8allowed
        weight_type=QuantType.QInt8,
    )
    result = evaluate_submission(track, Submission("onnx", onnx=peer)).result
    jsonschema.validate(result, SCHEMA)
    assert result["submission"]["precision"]["activation_bits"] == 8
    kernels = result["efficiency"]["kernels"]
    assert kernels["integer_ops"]["QLinearConv"] >= 1
    assert kernels["int8_mac_fraction"] > 0.5


def test_cli_quantize_export_and_evaluate_on_onnxruntime(tiny_track, tmp_path, capsys):
    dataset, model_dir = tiny_track
    common = ["--quiet", "--dataset", str(dataset), "--model", str(model_dir)]
    ckpt, onnx_path, result_path = tmp_path / "ckpt", tmp_path / "q.onnx", tmp_path / "r.json"
    quantize_args = ["--method", "rtn", "--wbits", "8", "--abits", "8"]
    assert (
        main(
            ["quantize", *common, *quantize_args, "--granularity", "per-tensor", "--out", str(ckpt)]
        )
        == 0
    )
    assert main(["export-onnx", *common, "--checkpoint", str(ckpt), "--out", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert "the simulated model's quantizers exactly" in printed and "(tolerance 0.05)" in printed
    args = ["--backend", "onnxruntime-cpu", "--onnx", str(onnx_path), "--out", str(result_path)]
    limits = ["--weight-bits", "8", "--activation-bits", "8"]
    protocol = ["--latency-pairs", "10", "--latency-burst", "1"]
    assert main(["evaluate", *common, *args, *limits, *protocol]) == 0
    result = json.loads(result_path.read_text())
    assert result["efficiency"]["latency_protocol"]["pairs"] == 10
    jsonschema.validate(result, SCHEMA)
    assert result["submission"]["kind"] == "onnx"
    assert result["track"]["backend"] == "onnxruntime-cpu"
    assert result["submission"]["precision"]["granularity"] == "per-tensor"
    assert result["efficiency"]["latency_ms"]["per_volume"]["median_ms"] > 0
    assert "of conv/linear MACs in integer kernels" in capsys.readouterr().out
    assert main(["evaluate", *common, *args, "--weight-bits", "4"]) == 2
    assert "at most 4-bit weights" in capsys.readouterr().err
    assert np.isfinite(result["summary"]["mean_dsc"])


def test_profiling_finds_layers_whose_integer_kernel_is_slower(track, onnx_files):
    from harness.backends.onnxruntime import SLOWER_MARGIN, slower_integer_layers

    fp32, int8 = onnx_files
    batch = torch.cat(track.calibration)[:1]
    slower = slower_integer_layers(fp32, int8, batch, threads=1, runs=2)
    weights = {f"{name}.weight" for name, _ in track.model.named_modules()}
    assert set(slower) <= weights
    for times in slower.values():
        assert times["integer_ms"] > SLOWER_MARGIN * times["float_ms"] > 0


def test_the_profiled_baseline_keeps_slower_layers_float_within_the_allowance(track, tmp_path):
    from harness.entry.baseline import INT8_QDQ, INT8_QDQ_PROFILED, baselines_for, compute_baseline

    assert [b.scheme for b in baselines_for(track.spec)] == [INT8_QDQ]
    allowed = replace(track.spec, max_float_mac_fraction=0.5)
    assert [b.scheme for b in baselines_for(allowed)] == [INT8_QDQ, INT8_QDQ_PROFILED]
    loaded = LoadedTrack(allowed, track.dataset, track.model_spec, track.model)
    baseline = compute_baseline(loaded, method="rtn", scheme=INT8_QDQ_PROFILED, workdir=tmp_path)
    jsonschema.validate(baseline.result, SCHEMA)
    chosen = baseline.result["submission"]["float_layers_profiled"]
    assert "model.0.conv.unit0.conv" in chosen  # 1 input channel: ORT's QLinearConv is ~8x slower
    assert sum(layer["mac_fraction"] for layer in chosen.values()) <= 0.5
    for layer in chosen.values():
        assert layer["integer_ms"] > layer["float_ms"]
    precision = baseline.result["submission"]["precision"]
    assert len(precision["float_weight_layers"]) == len(chosen)
    assert precision["weight_quantized_mac_fraction"] >= 0.5


def test_the_tracks_latency_protocol_takes_its_pair_count_and_burst(tiny_track, tmp_path):
    dataset, model_dir = tiny_track
    spec = TrackSpec(model_dir=model_dir, dataset_dir=dataset, latency_pairs=10, latency_burst=1)
    assert (spec.latency_protocol.pairs, spec.latency_protocol.burst) == (10, 1)
    (tmp_path / "track.json").write_text(json.dumps(spec.to_dict()))
    assert TrackSpec.from_json(tmp_path / "track.json") == spec
    with pytest.raises(HarnessError, match="at least 10 pairs of at least one call per side"):
        TrackSpec(model_dir=model_dir, dataset_dir=dataset, latency_pairs=9)
