"""Curation: management commands, Django admin (hide, disqualify, re-evaluate), queue routing."""

import shutil

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_tracks

from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Kind, Status, Submission
from leaderboard.submissions.tasks import queue_for
from leaderboard.tracks import ranking
from leaderboard.tracks.models import Track

__all__ = ["site_storage", "tiny_tracks"]


def test_commands_register_a_dataset_create_a_track_and_queue_its_baselines(
    db, tiny_track, site_storage, django_capture_on_commit_callbacks
):
    dataset_dir, shared_model_dir = tiny_track
    model_dir = shutil.copytree(shared_model_dir, site_storage / "model")  # gets model.onnx
    call_command("import_dataset", str(dataset_dir), "--slug", "phantoms")
    call_command("create_track", "--dataset", "phantoms", "--model", str(model_dir),
                 "--wbits", "4", "--abits", "4", "--quota", "3")  # fmt: skip
    track = Track.objects.get()
    assert (track.weight_bits, track.activation_bits, track.daily_quota) == (4, 4, 3)
    assert set(track.reference_model.files()) == {"model.json", "model.safetensors", "model.onnx"}
    with django_capture_on_commit_callbacks() as callbacks:
        call_command("run_baselines", track.slug)
    assert len(callbacks) == 11  # the FP32 reference row and 10 baselines
    assert sorted(Submission.objects.values_list("reference_method", "scheme")) == [
        ("", "fp32"), ("comq", "w4a4-per-channel"), ("gptq", "w4a4-per-channel"),
        ("permutation-comq", "w4a4-per-channel"), ("rtn", "w4a4-adaptive"),
        ("rtn", "w4a4-per-channel"), ("rtn", "w4a4-per-tensor"),
        ("rtn", "w4a4-per-tensor-asym"), ("rtn", "w4a4-per-tensor-mse"),
        ("rtn", "w4a4-per-tensor-p99.99"), ("smoothquant", "w4a4-per-channel"),
    ]  # fmt: skip
    asymmetric = Submission.objects.get(scheme="w4a4-per-tensor-asym")
    assert asymmetric.method == "RTN per-tensor, asymmetric activations"


@pytest.fixture
def ranked_baselines(tiny_tracks):
    from leaderboard.tracks.seeding import queue_baselines

    track = tiny_tracks["w8a8"]
    for submission in queue_baselines(track):
        pipeline.run(submission.pk)
    return track


def test_admin_disqualification_removes_the_entry_from_the_board_with_a_public_reason(
    admin_client, ranked_baselines
):
    submission = Submission.objects.filter(track=ranked_baselines).first()
    url = reverse("admin:submissions_submission_change", args=[submission.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "artifact"}
    data |= {"track": ranked_baselines.pk, "user": submission.user_id, "team": "",
             "disqualified": "on", "public_reason": "used test labels"}  # fmt: skip
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert submission.pk not in {e.submission_id for e in ranking.board(ranked_baselines)}
    page = admin_client.get(reverse("submission", args=[submission.pk])).content.decode()
    assert "Disqualified: used test labels" in page


def test_admin_reevaluate_requeues_and_the_worker_recomputes_the_same_numbers(
    admin_client, ranked_baselines, django_capture_on_commit_callbacks
):
    before = {
        s.pk: s.evaluation.mean_dsc for s in Submission.objects.filter(track=ranked_baselines)
    }
    with django_capture_on_commit_callbacks() as callbacks:
        admin_client.post(
            reverse("admin:tracks_track_changelist"),
            {"action": "reevaluate_track", "_selected_action": [ranked_baselines.pk]},
        )
    # RTN at 3 granularities, RTN with asymmetric activations, RTN with percentile and MSE
    # activation calibration, SmoothQuant (8-bit)
    assert len(callbacks) == len(before) == 7
    assert set(Submission.objects.values_list("status", flat=True)) == {Status.QUEUED}
    # the results stay, and stay ranked, until the new ones exist
    assert {e.submission_id for e in ranking.board(ranked_baselines, best_per_team=False)} == set(
        before
    )
    assert set(Submission.objects.values_list("attempts", flat=True)) == {0}
    for pk in before:
        pipeline.run(pk)
    after = {s.pk: s.evaluation.mean_dsc for s in Submission.objects.filter(track=ranked_baselines)}
    assert after == before
    assert {s.versions.count() for s in Submission.objects.filter(track=ranked_baselines)} == {2}


def test_tasks_are_routed_to_the_queue_of_the_capability_they_need(tiny_tracks):
    track = tiny_tracks["w8a8"]
    assert queue_for(Submission(track=track, kind=Kind.CHECKPOINT)) == "cpu"
    assert queue_for(Submission(track=track, kind=Kind.CONTAINER)) == "containers"
    # baselines (and the FP32 row) have queues of their own, served by their own workers
    assert queue_for(Submission(track=track, kind=Kind.SCHEME, is_baseline=True)) == (
        "cpu-baselines"
    )
    assert queue_for(Submission(track=track, kind=Kind.FP32, is_baseline=True)) == "cpu-baselines"
    track.backend = "tensorrt"
    assert queue_for(Submission(track=track, kind=Kind.ONNX)) == "gpu"
    assert queue_for(Submission(track=track, kind=Kind.SCHEME, is_baseline=True)) == (
        "gpu-baselines"
    )


def test_a_track_hands_its_nsd_definition_to_the_harness(tiny_tracks):
    track = tiny_tracks["w8a8"]
    assert track.nsd_definition == "subvoxel" and track.to_spec().nsd_definition == "subvoxel"
    track.nsd_definition = "voxel"
    track.full_clean()
    assert track.to_spec().nsd_definition == "voxel"


def test_a_track_hands_its_latency_pairs_and_burst_to_the_harness(tiny_tracks):
    track = tiny_tracks["w8a8"]
    protocol = track.to_spec().latency_protocol
    assert (protocol.pairs, protocol.burst) == (15, 3)
    track.latency_pairs, track.latency_burst = 10, 1
    track.full_clean()
    assert (track.to_spec().latency_protocol.pairs, track.to_spec().latency_protocol.burst) == (
        10,
        1,
    )
    track.latency_pairs = 9
    with pytest.raises(ValidationError, match="at least 10 pairs"):
        track.full_clean()
