"""The evaluate task's body on real artifacts of the tiny phantom track: stages, verification,
rejection reasons, idempotence, baselines."""

import json
import zipfile

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from leaderboard_fixtures import (
    checkpoint_zip,
    site_storage,
    tiny_checkpoints,
    tiny_tracks,
    zip_bytes,
)

from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from leaderboard.submissions import pipeline
from leaderboard.submissions.intake import accept
from leaderboard.submissions.models import Evaluation, Status, Submission
from leaderboard.submissions.tasks import evaluate
from leaderboard.tracks.seeding import queue_baselines
from reference_methods.simulator.scheme import QuantConfig

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def submit_zip(user, track, data: bytes, method="RTN per-channel") -> Submission:
    return accept(
        user,
        track=track,
        kind="checkpoint",
        method=method,
        archive=SimpleUploadedFile("ckpt.zip", data),
    )


def test_checkpoint_goes_through_every_stage_to_a_ranked_evaluation(
    alice, tiny_tracks, tiny_checkpoints
):
    track = tiny_tracks["w8a8"]
    submission = submit_zip(alice, track, checkpoint_zip(tiny_checkpoints["w8a8"], "my_ckpt"))
    assert submission.status == Status.QUEUED

    assert pipeline.run(submission.pk) == Status.DONE

    submission.refresh_from_db()
    stamps = [submission.created_at, submission.validating_at, submission.running_at]
    stamps += [submission.scoring_at, submission.finished_at]
    assert all(stamps) and stamps == sorted(stamps)
    evaluation = submission.evaluation
    summary = evaluation.result["summary"]
    assert evaluation.mean_dsc == summary["mean_dsc"]
    assert evaluation.fp32_mean_dsc == summary["fp32_mean_dsc"]
    assert evaluation.gate_passed == (summary["mean_dsc"] >= 0.99 * summary["fp32_mean_dsc"])
    assert (evaluation.weight_bits, evaluation.activation_bits) == (8, 8)
    assert evaluation.granularity == "per-channel"
    assert evaluation.size_mb > 0 and evaluation.latency_ms is None  # simulated: no latency
    assert "verified: 8-bit weights" in submission.log
    assert submission.error == ""


def test_redelivered_task_never_duplicates_the_result(alice, tiny_tracks, tiny_checkpoints):
    submission = submit_zip(alice, tiny_tracks["w8a8"], checkpoint_zip(tiny_checkpoints["w8a8"]))
    assert evaluate.run(submission_id=submission.pk) == Status.DONE
    first = Evaluation.objects.get(submission=submission)

    assert evaluate.run(submission_id=submission.pk) == Status.DONE

    assert Evaluation.objects.filter(submission=submission).count() == 1
    assert Evaluation.objects.get(submission=submission).pk == first.pk
    submission.refresh_from_db()
    assert submission.attempts == 1


def test_checkpoint_with_more_bits_than_the_track_allows_is_rejected(
    alice, tiny_tracks, tiny_checkpoints
):
    submission = submit_zip(alice, tiny_tracks["w4a4"], checkpoint_zip(tiny_checkpoints["w8a8"]))

    assert pipeline.run(submission.pk) == Status.REJECTED

    submission.refresh_from_db()
    assert submission.finished_at is not None
    assert "at most 4-bit weights" in submission.error
    assert "8-bit" in submission.error
    assert not Evaluation.objects.filter(submission=submission).exists()


def test_checkpoint_that_does_not_fit_the_architecture_is_rejected_with_the_layer_named(
    alice, tiny_tracks, tiny_checkpoints
):
    ckpt = tiny_checkpoints["w8a8"]
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    name = sorted(manifest["layers"])[0]
    manifest["layers"]["no.such.layer"] = manifest["layers"].pop(name)

    data = zip_bytes(
        {
            MANIFEST_NAME: json.dumps(manifest).encode(),
            WEIGHTS_NAME: (ckpt / WEIGHTS_NAME).read_bytes(),
        }
    )
    submission = submit_zip(alice, tiny_tracks["w8a8"], data)

    assert pipeline.run(submission.pk) == Status.REJECTED
    submission.refresh_from_db()
    assert "no.such.layer" in submission.error or name in submission.error


def test_broken_track_ends_the_submission_with_a_message_instead_of_leaving_it_pending(
    alice, tiny_tracks, tiny_checkpoints
):
    track = tiny_tracks["w8a8"]
    submission = submit_zip(alice, track, checkpoint_zip(tiny_checkpoints["w8a8"]))
    track.dataset.root = "/nonexistent/dataset"
    track.dataset.save()

    status = evaluate.run(submission_id=submission.pk)

    submission.refresh_from_db()
    assert status == submission.status == Status.FAILED
    assert submission.error.startswith("the track could not be loaded")
    assert "/nonexistent/dataset" in submission.error
    # the submitter is not blamed: a failed run does not count against the quota
    assert not Submission.objects.counted_for_quota(alice, track).exists()


def test_a_submission_interrupted_again_and_again_ends_failed(alice, tiny_tracks, tiny_checkpoints):
    submission = submit_zip(alice, tiny_tracks["w8a8"], checkpoint_zip(tiny_checkpoints["w8a8"]))
    Submission.objects.filter(pk=submission.pk).update(
        status=Status.RUNNING, attempts=pipeline.MAX_ATTEMPTS
    )

    assert evaluate.run(submission_id=submission.pk) == Status.FAILED

    submission.refresh_from_db()
    assert submission.error == "evaluation failed: it was interrupted 3 times"


def test_baselines_are_quantized_by_the_worker_and_keep_their_checkpoint(tiny_tracks):
    track = tiny_tracks["w4a4"]
    queued = queue_baselines(track)
    assert [(s.reference_method, s.scheme) for s in queued] == [
        ("rtn", "w4a4-per-tensor"),
        ("rtn", "w4a4-per-channel"),
        ("rtn", "w4a4-adaptive"),
        ("rtn", "w4a4-per-tensor-asym"),
        ("rtn", "w4a4-per-tensor-p99.99"),
        ("rtn", "w4a4-per-tensor-mse"),
        *[(m, "w4a4-per-channel") for m in ("gptq", "comq", "permutation-comq", "smoothquant")],
    ]
    assert queue_baselines(track) == []

    for submission in queued:
        assert pipeline.run(submission.pk) == Status.DONE

    for submission in Submission.objects.filter(track=track):
        assert submission.is_baseline and submission.artifact.name.endswith(".zip")
        evaluation = submission.evaluation
        layout = {"permutation-comq": "column-permuted"}  # its weights' layout, honestly
        scheme = QuantConfig.from_scheme(submission.scheme).granularity.value
        expected = layout.get(submission.reference_method, scheme)
        assert evaluation.granularity == expected
        assert (evaluation.weight_bits, evaluation.activation_bits) == (4, 4)
        recorded = evaluation.result["submission"]
        assert (recorded["method"], recorded["scheme"]) == (
            submission.reference_method,
            submission.scheme,
        )
        with zipfile.ZipFile(submission.artifact.open("rb")) as archive:
            manifest = json.loads(archive.read(MANIFEST_NAME))
        assert manifest["reference"] == {
            "method": submission.reference_method,
            "scheme": submission.scheme,
        }
    rtn = Submission.objects.get(track=track, reference_method="rtn", scheme="w4a4-per-channel")
    comq = Submission.objects.get(track=track, reference_method="comq")
    assert comq.evaluation.result["cases"] != rtn.evaluation.result["cases"]


def test_an_eight_bit_track_gets_smoothquant_per_tensor_besides_rtn(tiny_tracks):
    queued = queue_baselines(tiny_tracks["w8a8"])
    assert [(s.reference_method, s.scheme, s.method) for s in queued][3:] == [
        ("rtn", "w8a8-per-tensor-asym", "RTN per-tensor, asymmetric activations"),
        ("rtn", "w8a8-per-tensor-p99.99", "RTN per-tensor, percentile activation calibration"),
        ("rtn", "w8a8-per-tensor-mse", "RTN per-tensor, mse activation calibration"),
        ("smoothquant", "w8a8-per-tensor", "SmoothQuant per-tensor"),
    ]


def test_intake_refuses_uploads_that_are_not_checkpoints(alice, tiny_tracks):
    with pytest.raises(ValidationError) as error:
        submit_zip(alice, tiny_tracks["w8a8"], b"not a zip at all")
    assert error.value.message_dict == {"artifact": ["the upload is not a zip file"]}
    assert not Submission.objects.exists()


@pytest.fixture
def ort_track(tiny_tracks):
    from leaderboard.tracks.seeding import create_track

    w8a8 = tiny_tracks["w8a8"]
    return create_track(
        w8a8.dataset, w8a8.reference_model, weight_bits=8, activation_bits=8,
        backend="onnxruntime-cpu",
    )  # fmt: skip


def test_onnx_baseline_is_scored_on_onnx_runtime_with_its_measured_latency(ort_track):
    (baseline,) = queue_baselines(ort_track)

    assert pipeline.run(baseline.pk) == Status.DONE

    evaluation = Evaluation.objects.get(submission=baseline)
    efficiency = evaluation.result["efficiency"]
    assert efficiency["backend"] == "onnxruntime-cpu"
    protocol = efficiency["latency_protocol"]  # the paired protocol's entry side, not a 2nd run
    assert evaluation.latency_ms == protocol["entry"]["median_ms"]
    assert evaluation.fp32_latency_ms == protocol["fp32"]["median_ms"]
    assert (evaluation.weight_bits, evaluation.activation_bits) == (8, 8)
    baseline.refresh_from_db()
    assert baseline.artifact.name.endswith(".onnx")


def test_fp32_onnx_on_an_int8_track_is_rejected_with_the_verifiers_reason(
    alice, ort_track, tmp_path
):
    from harness.artifacts.onnx.export import export_fp32
    from harness.models.reference import load_reference_model

    spec, model = load_reference_model(ort_track.reference_model.path)
    path = export_fp32(model, spec, tmp_path / "fp32.onnx")
    submission = accept(
        alice, track=ort_track, kind="onnx", method="float",
        archive=SimpleUploadedFile("fp32.onnx", path.read_bytes()),
    )  # fmt: skip

    assert pipeline.run(submission.pk) == Status.REJECTED

    submission.refresh_from_db()
    assert submission.error and not Evaluation.objects.filter(submission=submission).exists()
