"""Researchers first: a participant's place in its queue (baselines wait on queues of their own),
the step a worker reports, an estimate from the track's recent evaluations, cancelling a queued
submission (not counted in the quota), and the board's word that baselines are still running."""

import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_checkpoints, tiny_tracks
from rest_framework.test import APIClient
from test_api_submissions import post_checkpoint

from harness.progress import reporting
from harness.scoring.evaluation import SCORING_STAGE
from leaderboard.accounts.models import ApiToken
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Kind, Status, Submission
from leaderboard.submissions.queueing import cancel, queue_state
from leaderboard.submissions.worker import Progress, heartbeat

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user, 'test')[1]}")
    return client


def _queued(track, user=None, *, baseline=False, **fields) -> Submission:
    kind = Kind.SCHEME if baseline else Kind.CHECKPOINT
    return Submission.objects.create(
        track=track, user=user, kind=kind, method="m", is_baseline=baseline, **fields
    )


def test_queue_position_counts_only_earlier_participants_of_the_same_queue(tiny_tracks, alice, bob):
    track = tiny_tracks["w8a8"]
    for _ in range(5):  # five baselines queued first: on their own queue, not ahead of anyone
        _queued(track, baseline=True)
    first = _queued(track, alice)
    second = _queued(track, bob)
    assert queue_state(first).position == 1
    assert queue_state(second).position == 2
    assert queue_state(second).in_flight == 0
    # a baseline's place counts the baselines before it
    last_baseline = Submission.objects.filter(is_baseline=True).order_by("created_at").last()
    assert queue_state(last_baseline).position == 5
    # once a worker holds the first, the second is next and one is in flight
    Submission.objects.filter(pk=first.pk).update(
        status=Status.RUNNING, validating_at=timezone.now()
    )
    second_state = queue_state(second)
    assert (second_state.position, second_state.in_flight) == (1, 1)
    first.refresh_from_db()
    assert queue_state(first).position is None
    assert "queue position 1 (1 being evaluated now)" in second_state.lines()


def test_estimate_is_the_median_of_the_tracks_recent_evaluations(tiny_tracks, alice, bob):
    track = tiny_tracks["w8a8"]
    now = timezone.now()
    assert queue_state(_queued(track, bob)).estimate_s is None  # nothing evaluated yet
    for seconds in (10, 30, 1000):  # median 30 s, whatever the outlier
        _queued(
            track, alice, status=Status.DONE, validating_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )  # fmt: skip
    waiting = _queued(track, alice)
    state = queue_state(waiting)
    assert state.typical_s == pytest.approx(30, abs=0.01)
    assert state.position == 2  # bob's is ahead
    assert state.estimate_s == pytest.approx(2 * 30, abs=0.01)
    assert any("estimated done in about 60 s" in line for line in state.lines())


def test_page_api_and_poll_show_position_and_the_reported_step(tiny_tracks, alice, client):
    track = tiny_tracks["w8a8"]
    submission = _queued(track, alice)
    client.force_login(alice)
    page = client.get(reverse("submission", args=[submission.pk])).content.decode()
    assert 'id="standing"' in page and "queue position 1" in page
    assert 'id="cancel"' in page  # the owner may cancel it while it is queued

    Submission.objects.filter(pk=submission.pk).update(
        status=Status.RUNNING, validating_at=timezone.now(),
        progress_stage=SCORING_STAGE, progress_done=3, progress_total=8,
    )  # fmt: skip
    polled = client.get(reverse("submission-status", args=[submission.pk])).json()
    assert polled["queue"]["position"] is None
    assert polled["queue"]["lines"][0] == f"step: {SCORING_STAGE}: 3 of 8"
    body = api(alice).get(f"/api/v1/submissions/{submission.pk}/").json()
    assert body["queue"]["done"] == 3 and body["queue"]["total"] == 8
    page = client.get(reverse("submission", args=[submission.pk])).content.decode()
    assert f"step: {SCORING_STAGE}: 3 of 8" in page and 'id="cancel"' not in page


@pytest.mark.django_db(transaction=True)
def test_worker_writes_the_harness_progress_to_the_row(tiny_tracks, alice):
    """The heartbeat thread writes what the harness reports (outside a transaction, as in a
    worker); a row's progress is reset when a worker claims it."""
    submission = _queued(tiny_tracks["w8a8"], alice)
    progress = Progress()
    with heartbeat(submission.pk, progress, every_s=0.05), reporting(progress):
        from harness.progress import report

        report("inferring test cases (onnx)", 2, 8)
        deadline = timezone.now() + timedelta(seconds=10)
        while timezone.now() < deadline:
            submission.refresh_from_db()
            if submission.progress_done == 2:
                break
            time.sleep(0.05)  # the heartbeat thread writes meanwhile
    assert (submission.progress_stage, submission.progress_done, submission.progress_total) == (
        "inferring test cases (onnx)", 2, 8
    )  # fmt: skip
    pipeline.start(submission.pk)
    submission.refresh_from_db()
    assert (submission.progress_stage, submission.progress_done) == ("", 0)


def test_cancelled_submission_is_not_evaluated_and_not_counted_in_the_quota(
    tiny_tracks, tiny_checkpoints, alice, bob
):
    track = tiny_tracks["w8a8"]
    track.daily_quota = 1
    track.save()
    client = api(alice)
    created = post_checkpoint(client, track, tiny_checkpoints["w8a8"]).json()
    assert post_checkpoint(client, track, tiny_checkpoints["w8a8"]).status_code == 400  # quota

    assert api(bob).post(f"/api/v1/submissions/{created['id']}/cancel/").status_code == 404
    response = client.post(f"/api/v1/submissions/{created['id']}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    row = Submission.objects.get(pk=created["id"])
    assert row.status == Status.CANCELLED and row.finished_at is not None
    # its message, still on the broker, finds it finished: nothing is evaluated
    assert pipeline.run(row.pk) == Status.CANCELLED
    assert not hasattr(Submission.objects.get(pk=row.pk), "evaluation")
    # the quota has room again
    again = post_checkpoint(client, track, tiny_checkpoints["w8a8"])
    assert again.status_code == 201, again.json()

    pipeline.run(again.json()["id"])  # finished: it cannot be cancelled any more
    refused = client.post(f"/api/v1/submissions/{again.json()['id']}/cancel/")
    assert refused.status_code == 409
    assert refused.json()["error"]["message"].endswith("only a queued submission can be cancelled")
    assert Submission.objects.get(pk=again.json()["id"]).status == Status.DONE


def test_web_cancel_button_is_for_the_owner_only(tiny_tracks, alice, bob, client):
    submission = _queued(tiny_tracks["w8a8"], alice)
    client.force_login(bob)
    assert client.post(reverse("cancel-submission", args=[submission.pk])).status_code == 404
    assert Submission.objects.get(pk=submission.pk).status == Status.QUEUED
    client.force_login(alice)
    response = client.post(reverse("cancel-submission", args=[submission.pk]), follow=True)
    assert "cancelled; it does not count in your quota" in response.content.decode()
    assert Submission.objects.get(pk=submission.pk).status == Status.CANCELLED
    assert not cancel(submission.pk)  # twice: nothing more happens


def test_board_says_how_many_baselines_are_still_being_computed(tiny_tracks, client):
    track = tiny_tracks["w8a8"]
    pending = [_queued(track, baseline=True) for _ in range(3)]
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert "3 reference baselines\n  still being computed" in page
    Submission.objects.filter(pk__in=[s.pk for s in pending]).update(status=Status.FAILED)
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert 'id="baselines-pending"' not in page  # the anonymous page cache follows the count
