"""The openvino-cpu backend: offered by the registry; a Q/DQ upload is verified like on ONNX
Runtime and runs under the sliding-window inferer with the same probabilities; the INT8 layer
report is read from the compiled runtime graph (a layer kept float shows as float); bf16, which
OpenVINO picks by default on this CPU, is never used; efficiency carries the latency protocol;
NNCF's quantization comes back as a Q/DQ ONNX file that runs as NNCF's own model does and passes
verification, as the track's NNCF baseline."""

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from harness.artifacts.onnx.export import export_fp32
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.placement import OPENVINO_PLACEMENT
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.artifacts.onnx.verify import verify_for_track
from harness.backends import backend_names, get_backend
from harness.cli import build_parser
from harness.entry.baseline import INT8_QDQ, baselines_for, compute_baseline
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import HarnessError, SubmissionError
from harness.inference.sliding_window import predict_probabilities
from harness.onnxruntime_session import OrtNetwork, create_session
from harness.scoring.result import SCHEMA_PATH
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

ov = pytest.importorskip("openvino")
from harness.backends.openvino import (  # noqa: E402
    OpenVinoNetwork,
    compile_onnx,
    nncf_quantize,
    read_onnx,
    runtime_report,
)

SCHEMA = json.loads(SCHEMA_PATH.read_text())
INT8_PROBABILITY_TOLERANCE = 0.01
"""Mean |Δ probability| between OpenVINO and ONNX Runtime on the same Q/DQ graph: they may round a
requantized value to the neighbouring code (OpenVINO folds scales into its kernels). Measured
0.005 on the untrained tiny UNet, 0.0004 on the trained demo UNet (99.9% equal labels)."""
CPU_HAS_BF16 = (
    "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    or "amx_bf16" in Path("/proc/cpuinfo").read_text()
)


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    spec = TrackSpec(
        model_dir=model_dir,
        dataset_dir=dataset,
        backend="openvino-cpu",
        weight_bits=8,
        activation_bits=8,
    )
    return LoadedTrack.open(spec)


@pytest.fixture(scope="module")
def files(track, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openvino")
    model = int8_model(track.model, track.calibration)
    first = next(n for n, m in track.model.named_modules() if isinstance(m, torch.nn.Conv3d))
    mixed = int8_model(track.model, track.calibration, skip=(first,))
    spec = track.model_spec
    return {
        "fp32": export_fp32(track.model, spec, root / "fp32.onnx"),
        "int8": export_qdq(
            model, spec, track.calibration, root / "int8.onnx", placement=OPENVINO_PLACEMENT
        ),
        "mixed": export_qdq(
            mixed, spec, track.calibration, root / "mixed.onnx", placement=OPENVINO_PLACEMENT
        ),
        "first_layer": first,
    }


@pytest.fixture(scope="module")
def volume(track):
    from harness.data.preprocessing import preprocess, read_case

    case = track.test_cases[0]
    return preprocess(read_case(case, track.dataset.labels), track.model_spec.preprocessing)


def test_the_registry_offers_openvino_to_trackspec_and_the_cli(capsys):
    assert "openvino-cpu" in backend_names()
    backend = get_backend("openvino-cpu")
    assert backend.unavailable_reason() is None
    assert [k.name for k in backend.artifact_kinds] == ["onnx"]
    TrackSpec(model_dir=Path("m"), dataset_dir=Path("d"), backend="openvino-cpu")
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--help"])
    assert "openvino-cpu" in capsys.readouterr().out


def test_an_upload_is_verified_then_runs_under_the_inferer_as_its_graph_says(track, files, volume):
    backend = get_backend("openvino-cpu")
    opened = backend.open(files["int8"], track.checks())
    assert opened.precision["weight_bits"] == 8 and opened.precision["activation_bits"] == 8
    window = replace(track.model_spec.sliding_window, overlap=0.5, sw_batch_size=3)
    on_ort = predict_probabilities(OrtNetwork(create_session(files["int8"])), volume, window)
    actual = predict_probabilities(opened.network, volume, window)
    assert actual.shape == on_ort.shape
    assert (actual - on_ort).abs().mean() < INT8_PROBABILITY_TOLERANCE
    torch.manual_seed(0)
    patches = torch.rand(3, 1, *track.model_spec.sliding_window.roi_size)
    three, two = opened.network(patches), opened.network(patches[:2])  # compiled per batch size
    assert three.shape == (3, len(track.model_spec.labels), *patches.shape[2:])
    assert torch.allclose(three[:2], two, atol=1e-5)
    fp32 = predict_probabilities(OpenVinoNetwork(files["fp32"]), volume, window)
    assert torch.allclose(fp32, predict_probabilities(track.model, volume, window), atol=1e-4)


def test_an_upload_carries_openvinos_deviation_from_ort_and_is_refused_beyond_the_bound(
    track, files, monkeypatch
):
    """The engine check on an upload: OpenVINO's logits on the first calibration patch against
    ONNX Runtime's on the same file, recorded; beyond ``ENGINE_DEVIATION`` the upload is refused
    naming it (the real files OpenVINO runs off ORT: ``test_peer_toolkits``)."""
    from harness.entry import engine_agreement

    result = evaluate_submission(track, Submission("onnx", onnx=files["int8"])).result
    deviation = result["submission"]["precision"]["engine_deviation"]
    assert 0 < deviation <= engine_agreement.ENGINE_DEVIATION
    monkeypatch.setattr(engine_agreement, "ENGINE_DEVIATION", deviation / 2)
    with pytest.raises(SubmissionError, match=rf"by {deviation:.3f} \(mean \|Δ logit\|"):
        evaluate_submission(track, Submission("onnx", onnx=files["int8"]))


def test_fp32_upload_on_an_int8_track_is_refused_by_the_verifier(track, files):
    with pytest.raises(SubmissionError, match="DequantizeLinear"):
        get_backend("openvino-cpu").open(files["fp32"], track.checks())


def test_unreadable_file_is_the_submitters_fault(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model")
    with pytest.raises(SubmissionError, match="OpenVINO cannot read the model"):
        read_onnx(garbage)


def test_int8_report_reads_the_runtime_precision_of_each_layer(files):
    int8 = runtime_report(compile_onnx(files["int8"], threads=1, batch=1))
    assert int8["int8_mac_fraction"] == 1.0 and not int8["float_layers"]
    assert all(layer["runtime_precision"] in ("u8", "i8") for layer in int8["layers"])
    assert any("I8" in kernel or "i8" in kernel for kernel in int8["kernels"])
    assert int8["integer_ops"]["Convolution"] >= 1
    fp32 = runtime_report(compile_onnx(files["fp32"], threads=1, batch=1))
    assert fp32["int8_mac_fraction"] == 0.0 and fp32["integer_ops"] == {}
    assert {layer["runtime_precision"] for layer in fp32["layers"]} == {"f32"}
    mixed = runtime_report(compile_onnx(files["mixed"], threads=1, batch=1))
    (float_layer,) = [layer for layer in mixed["layers"] if not layer["integer"]]
    assert float_layer["runtime_precision"] == "f32" and float_layer["macs"] > 0
    assert 0 < mixed["int8_mac_fraction"] < 1
    assert mixed["macs_per_sample"] == fp32["macs_per_sample"] == int8["macs_per_sample"]


def test_inference_precision_is_pinned_to_f32_and_no_node_runs_bf16(files):
    compiled = compile_onnx(files["fp32"], threads=1, batch=1)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    precisions = {
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
    }
    assert not precisions & {"bf16", "f16"}
    if not CPU_HAS_BF16:
        pytest.skip("this CPU has no bf16: OpenVINO's default would be f32 anyway")
    default = ov.Core().compile_model(read_onnx(files["fp32"]), "CPU")
    assert default.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    with pytest.raises(HarnessError, match="half precision"):
        runtime_report(default)


def test_evaluation_reports_efficiency_with_the_latency_protocol(track, files):
    result = evaluate_submission(track, Submission("onnx", onnx=files["int8"])).result
    jsonschema.validate(result, SCHEMA)
    efficiency = result["efficiency"]
    assert efficiency["backend"] == "openvino-cpu"
    assert efficiency["size_bytes"] == files["int8"].stat().st_size
    assert efficiency["size_mb"] == pytest.approx(efficiency["size_bytes"] / 1e6)
    assert efficiency["peak_rss_mb"] > 0
    for key in ("per_patch", "per_volume"):
        assert efficiency["latency_ms"][key]["median_ms"] > 0
    assert efficiency["kernels"]["int8_mac_fraction"] == 1.0
    protocol = efficiency["latency_protocol"]
    assert protocol["threads"] == track.spec.latency_threads == 1
    assert protocol["pairs"] >= 10 and protocol["unit"] == "per_volume"
    assert (
        set(protocol["entry"])
        == set(protocol["fp32"])
        == {
            "median_ms",
            "iqr_ms",
            "p25_ms",
            "p75_ms",
        }
    )
    low, high = protocol["speedup"]["ci95"]
    assert 0 < low <= protocol["speedup"]["median"] <= high


def test_nncf_result_comes_back_as_qdq_onnx_that_runs_like_nncfs_model(track, files, tmp_path):
    import nncf

    out = nncf_quantize(files["fp32"], track.calibration, tmp_path / "nncf.onnx")
    report = verify_for_track(out, track.checks()).precision
    assert report["weight_bits"] == 8 and report["activation_bits"] == 8
    assert report["quantized_mac_fraction"] == 1.0
    batches = [np.ascontiguousarray(b.numpy()) for b in track.calibration]
    theirs = nncf.quantize(
        read_onnx(files["fp32"]),
        nncf.Dataset(batches),
        subset_size=len(batches),
        target_device=nncf.TargetDevice.CPU,
    )
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    nncf_model = ov.Core().compile_model(theirs, "CPU", config)
    # The codes NNCF would store signed (where OpenVINO miscomputes them) put back as int8: then
    # OpenVINO computes exactly what it computes for NNCF's model, so the file holds its integers.
    as_int8 = OpenVinoNetwork(_signed_activations(out, tmp_path / "signed.onnx"))
    for batch in batches:
        expected = nncf_model(batch)[0]
        actual = as_int8(torch.from_numpy(batch)).numpy()
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
    # As written, OpenVINO runs the file as ONNX Runtime does, closer than NNCF's own model.
    ort = OrtNetwork(create_session(out))
    ours = OpenVinoNetwork(out)
    for batch in batches:
        reference = ort(torch.from_numpy(batch)).numpy()
        deviation = np.abs(ours(torch.from_numpy(batch)).numpy() - reference).mean()
        assert deviation <= np.abs(nncf_model(batch)[0] - reference).mean()


def _signed_activations(path: Path, out: Path) -> Path:
    """The file with each activation quantizer stored as uint8 with zero-point 128 stored as
    int8 with zero-point 0 instead (the same codes)."""
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    zero_points = {node.input[2] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    for tensor in model.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if tensor.name in zero_points and value.dtype == np.uint8 and value == 128:
            tensor.CopyFrom(numpy_helper.from_array(np.array(0, np.int8), tensor.name))
    onnx.save(model, str(out))
    return out


def test_openvino_tracks_get_the_int8_export_and_the_nncf_baseline(track, tmp_path):
    assert [(b.method, b.scheme) for b in baselines_for(track.spec)] == [
        ("rtn", INT8_QDQ),
        ("nncf", "nncf-int8"),
    ]
    baseline = compute_baseline(track, method="nncf", scheme="nncf-int8", workdir=tmp_path)
    jsonschema.validate(baseline.result, SCHEMA)
    assert baseline.result["submission"]["method"] == "nncf"
    assert baseline.result["submission"]["precision"]["activation_bits"] == 8
    assert baseline.result["efficiency"]["kernels"]["int8_mac_fraction"] == 1.0
    assert baseline.artifact.suffix == ".onnx"


def test_the_result_schema_names_every_registered_backend():
    track_backends = SCHEMA["properties"]["track"]["properties"]["backend"]["enum"]
    assert sorted(track_backends) == sorted(backend_names())
    measured = [n for n in backend_names() if get_backend(n).measures_latency]
    assert sorted(SCHEMA["properties"]["efficiency"]["properties"]["backend"]["enum"]) == sorted(
        measured
    )


def test_the_standard_export_takes_the_first_placement_openvino_runs_faithfully(
    track, tmp_path, monkeypatch
):
    from harness.artifacts.onnx.placement import ORT_PLACEMENT
    from harness.entry import engine_export

    result = compute_baseline(track, method="rtn", scheme=INT8_QDQ, workdir=tmp_path / "a").result
    export = result["submission"]["export"]
    preferred = OPENVINO_PLACEMENT.name
    assert export["engine_deviation"][preferred] <= engine_export.ENGINE_DEVIATION
    assert export["placement"] == preferred and list(export["engine_deviation"]) == [preferred]

    monkeypatch.setattr(engine_export, "ENGINE_DEVIATION", 0.0)  # no placement is good enough
    done = compute_baseline(track, method="rtn", scheme=INT8_QDQ, workdir=tmp_path / "b")
    export = done.result["submission"]["export"]
    assert set(export["engine_deviation"]) == {preferred, ORT_PLACEMENT.name}
    closest = min(export["engine_deviation"], key=export["engine_deviation"].get)
    assert export["placement"] == closest
    assert sorted(p.name for p in done.artifact.parent.glob("*.onnx")) == ["model.onnx"]
