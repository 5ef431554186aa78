"""Untrusted artifacts run in a child process (``harness.entry.isolation``): a file that makes
OpenVINO die of SIGSEGV (the tiny UNet's INT8 export plus a GatherND whose index lies past its
data, summed, × 0 and added to the logits) is the artifact's fault, naming the engine and the
signal, and the process that asked goes on serving; on the site the file is rejected and counted
in the quota; an honest file's result is the same as in-process, with its steps and stages
forwarded."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from leaderboard_fixtures import site_storage
from onnx import helper, numpy_helper

from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.placement import OPENVINO_PLACEMENT
from harness.artifacts.onnx.qdq_export import export_qdq
from harness.entry.isolation import run_isolated
from harness.entry.upload import Submission, evaluate_submission, evaluate_untrusted
from harness.errors import SubmissionError
from harness.progress import reporting
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

__all__ = ["site_storage"]
pytestmark = pytest.mark.slow
OUT_OF_RANGE = 2**31
"""A GatherND index far past any logits tensor of the tiny track."""


@pytest.fixture(scope="module")
def track(tiny_track) -> LoadedTrack:
    dataset, model_dir = tiny_track
    spec = TrackSpec(model_dir=model_dir, dataset_dir=dataset, backend="openvino-cpu",
                     weight_bits=8, activation_bits=8)  # fmt: skip
    return LoadedTrack.open(spec)


@pytest.fixture(scope="module")
def files(track, tmp_path_factory) -> dict[str, Path]:
    """The honest INT8 export and the one that crashes OpenVINO."""
    root = tmp_path_factory.mktemp("isolation")
    model = int8_model(track.model, track.calibration)
    honest = export_qdq(
        model, track.model_spec, track.calibration, root / "int8.onnx",
        placement=OPENVINO_PLACEMENT,
    )  # fmt: skip
    graph = onnx.load(honest)
    logits = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = ["logits_orig" if o == logits else o for o in node.output]
    graph.graph.initializer.extend([
        numpy_helper.from_array(np.array([[OUT_OF_RANGE]], dtype=np.int64), "past_the_end"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ])  # fmt: skip
    graph.graph.node.extend([
        helper.make_node("GatherND", ["logits_orig", "past_the_end"], ["gathered"]),
        helper.make_node("ReduceSum", ["gathered"], ["summed"], keepdims=0),
        helper.make_node("Mul", ["summed", "zero"], ["nothing"]),
        helper.make_node("Add", ["logits_orig", "nothing"], [logits]),
    ])  # fmt: skip
    crash = root / "crash.onnx"
    onnx.save(graph, crash)
    return {"honest": honest, "crash": crash}


def _openvino_runs(path: Path, batch) -> dict:
    """Compile ``path`` on OpenVINO's CPU plugin and run it on ``batch`` (nothing else)."""
    import openvino

    openvino.Core().compile_model(str(path), "CPU")(batch.numpy())
    return {}


def test_an_engine_crash_is_the_artifacts_fault_and_the_caller_serves_on(track, files):
    """OpenVINO itself on the crash file, in the child: the upload path never gets that far any
    more (the verifier refuses the GatherND as a node the reference graph does not have), so the
    engine is called directly here."""
    batch = track.calibration[0]
    with pytest.raises(SubmissionError) as rejected:
        run_isolated(lambda stage: _openvino_runs(files["crash"], batch), engine="openvino-cpu")
    assert str(rejected.value).startswith(
        "the openvino-cpu engine crashed running this artifact (SIGSEGV)"
    )
    assert run_isolated(lambda stage: _openvino_runs(files["honest"], batch), engine="ov") == {}
    # this process is alive and evaluates the next file
    result = evaluate_untrusted(track, Submission("onnx", onnx=files["honest"]))
    assert result["summary"]["mean_dsc"] >= 0


def test_an_honest_file_scores_as_in_process_with_steps_and_stages_forwarded(track, files):
    steps, stages = [], []
    with reporting(lambda stage, done, total: steps.append((stage, done, total))):
        isolated = evaluate_untrusted(
            track, Submission("onnx", onnx=files["honest"]), on_stage=stages.append
        )
    direct = evaluate_submission(track, Submission("onnx", onnx=files["honest"])).result
    assert isolated["cases"] == direct["cases"] and isolated["summary"] == direct["summary"]
    assert stages == ["running"]
    assert steps and steps[-1][1:] == (len(track.test_cases), len(track.test_cases))


def test_what_the_child_raises_comes_back_as_what_it_means():
    def rejects(stage):
        raise SubmissionError("4-bit weights on an 8-bit track")

    with pytest.raises(SubmissionError, match="4-bit weights on an 8-bit track"):
        run_isolated(rejects, engine="test")

    def cannot_evaluate(stage):
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(SubmissionError, match="on test failed: ValueError: operands could not"):
        run_isolated(cannot_evaluate, engine="test")

    def host_fault(stage):
        raise OSError(28, "No space left on device")

    with pytest.raises(RuntimeError, match="No space left on device") as failed:
        run_isolated(host_fault, engine="test")
    assert not isinstance(failed.value, SubmissionError)  # the host's fault: failed


def test_the_site_rejects_the_crash_and_counts_it_in_the_quota(
    tiny_track, site_storage, django_user_model, files
):
    from rest_framework.test import APIClient

    from leaderboard.accounts.models import ApiToken
    from leaderboard.submissions import pipeline
    from leaderboard.submissions.models import Status, Submission
    from leaderboard.tracks.seeding import create_track, import_dataset, import_model

    dataset_dir, model_dir = tiny_track
    track = create_track(
        import_dataset(dataset_dir, slug="tiny"), import_model(model_dir), weight_bits=8,
        activation_bits=8, backend="openvino-cpu", bits_per_weight_budget=9,
    )  # fmt: skip
    user = django_user_model.objects.create_user("mallory", password="pw-mallory-123")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user, 'test')[1]}")
    with files["crash"].open("rb") as upload:
        created = client.post(
            "/api/v1/submissions/",
            {"track": track.slug, "kind": "onnx", "method": "crash", "artifact": upload},
            format="multipart",
        )
    assert created.status_code == 201, created.json()
    assert pipeline.run(created.json()["id"]) == Status.REJECTED
    row = Submission.objects.get(pk=created.json()["id"])
    # the verifier refuses it before any engine runs it: the GatherND is not the reference's
    assert "node 'gathered' (GatherND) computes something the reference graph does not" in (
        row.error
    )
    assert Submission.objects.counted_for_quota(user, track).count() == 1


def _weight_dequantizer(graph: onnx.ModelProto) -> onnx.NodeProto:
    """The first DequantizeLinear whose input is a stored (per-channel) weight."""
    stored = {tensor.name: tensor for tensor in graph.graph.initializer}
    for node in graph.graph.node:
        weight = node.op_type == "DequantizeLinear" and node.input[0] in stored
        if weight and numpy_helper.to_array(stored[node.input[1]]).size > 1:
            return node
    raise AssertionError("no per-channel weight DequantizeLinear in the export")


def _scalar_zero_point(graph: onnx.ModelProto) -> None:
    """Per-channel scales with one scalar zero-point (the issue's file that ended ``failed``)."""
    node = _weight_dequantizer(graph)
    graph.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int8), "scalar_zp"))
    node.input[2] = "scalar_zp"


def _blocked_dequantizer(graph: onnx.ModelProto) -> None:
    """An opset-21 blocked DequantizeLinear (``block_size`` 2 along the output channels: one
    scale per pair of channels and per input position) on a weight."""
    node = _weight_dequantizer(graph)
    stored = {tensor.name: tensor for tensor in graph.graph.initializer}
    codes = numpy_helper.to_array(stored[node.input[0]])
    scales = numpy_helper.to_array(stored[node.input[1]])
    blocks = (codes.shape[0] + 1) // 2
    blocked = np.broadcast_to(
        scales[::2].reshape(blocks, *[1] * (codes.ndim - 1)), (blocks, *codes.shape[1:])
    ).copy()
    graph.graph.initializer.extend([
        numpy_helper.from_array(blocked, "blocked_scale"),
        numpy_helper.from_array(np.zeros(blocked.shape, codes.dtype), "blocked_zp"),
    ])  # fmt: skip
    node.input[1:] = ["blocked_scale", "blocked_zp"]
    del node.attribute[:]
    node.attribute.extend(
        [helper.make_attribute("axis", 0), helper.make_attribute("block_size", 2)]
    )
    for opset in graph.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 21)


@pytest.mark.parametrize("make", [_scalar_zero_point, _blocked_dequantizer])
def test_a_file_the_harness_cannot_evaluate_is_rejected_not_failed(track, files, make, tmp_path):
    graph = onnx.load(files["honest"])
    make(graph)
    path = tmp_path / "odd.onnx"
    onnx.save(graph, path)
    with pytest.raises(SubmissionError) as refused:
        evaluate_untrusted(track, Submission("onnx", onnx=path))
    assert str(refused.value)  # the reason reaches the submitter
