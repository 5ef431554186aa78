"""The reconciler's rules on the database (the broker's queues and the send stubbed): lost
queued messages and abandoned or overdue evaluations are re-sent; live ones are left alone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_checkpoints, tiny_tracks

from leaderboard.submissions import pipeline, reconciler, results, stages
from leaderboard.submissions.models import Status, Submission
from leaderboard.submissions.reconciler import QUIET_S, Reconciler

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]


@pytest.fixture
def sent(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(reconciler.tasks, "send", lambda submission: calls.append(submission.pk))
    monkeypatch.setattr(reconciler, "broker_submission_ids", lambda: {on_broker.pk})
    return calls


on_broker = Submission(pk=-1)


def row(track, status, quiet_s: float, **fields) -> Submission:
    now = timezone.now()
    return Submission.objects.create(
        track=track, kind="checkpoint", method=f"{status} quiet {quiet_s}", status=status,
        heartbeat_at=now - timedelta(seconds=quiet_s), validating_at=fields.pop("at", now),
        **fields,
    )  # fmt: skip


def started_long_ago() -> Reconciler:
    return Reconciler(database_back_at=timezone.now() - timedelta(hours=1))


def test_a_queued_submission_without_a_message_is_sent_again(tiny_tracks, sent):
    track = tiny_tracks["w8a8"]
    lost = row(track, Status.QUEUED, 60)
    fresh = row(track, Status.QUEUED, 1)
    report = started_long_ago().reconcile()
    assert sent == [lost.pk] and report == {"queued without a message": 1}
    lost.refresh_from_db()
    assert lost.status == Status.QUEUED and lost.heartbeat_at > fresh.heartbeat_at


def test_a_queued_submission_whose_message_waits_on_the_broker_is_left_alone(
    tiny_tracks, sent, monkeypatch
):
    waiting = row(tiny_tracks["w8a8"], Status.QUEUED, 600)
    monkeypatch.setattr(reconciler, "broker_submission_ids", lambda: {waiting.pk})
    assert started_long_ago().reconcile() == {} and sent == []


def test_an_evaluation_whose_worker_went_quiet_is_queued_and_sent_again(tiny_tracks, sent):
    track = tiny_tracks["w8a8"]
    dead = row(track, Status.RUNNING, QUIET_S + 5, attempts=1)
    alive = row(track, Status.RUNNING, 3, attempts=1)
    report = started_long_ago().reconcile()
    assert sent == [dead.pk] and report == {"abandoned by its worker": 1}
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert (dead.status, dead.attempts, alive.status) == (Status.QUEUED, 1, Status.RUNNING)


def test_after_a_database_outage_workers_get_their_chance_before_anything_is_abandoned(
    tiny_tracks, sent
):
    row(tiny_tracks["w8a8"], Status.RUNNING, QUIET_S * 3)
    just_back = Reconciler()
    just_back.note_database(False)
    just_back.note_database(True)
    assert just_back.reconcile() == {} and sent == []


def test_an_evaluation_past_its_time_limit_is_sent_again(tiny_tracks, sent):
    track = tiny_tracks["w8a8"]
    overdue = row(track, Status.VALIDATING, 1, at=timezone.now() - timedelta(hours=3))
    report = started_long_ago().reconcile()
    assert sent == [overdue.pk] and report == {"over its time limit": 1}


def test_finished_submissions_are_never_touched(tiny_tracks, sent):
    for status in (Status.DONE, Status.FAILED, Status.REJECTED, Status.CANCELLED):
        row(tiny_tracks["w8a8"], status, 3600)
    assert started_long_ago().reconcile() == {} and sent == []


def test_two_live_attempts_after_a_requeue_store_one_result(tiny_tracks, sent, alice_row):
    """The reconciler re-sent an evaluation whose worker was only slow (a database outage):
    the second attempt finishes first; the first one then goes on and tries to run, score and
    finish. The submission stays ``done`` with the one result, its finish time unchanged."""
    submission = alice_row
    first = stages.start(submission.pk)
    assert first.attempts == 1
    assert Reconciler._requeue(submission.pk, timezone.now()) == 1 and sent == [submission.pk]
    assert pipeline.run(submission.pk) == Status.DONE  # the second attempt
    submission.refresh_from_db()
    finished_at, result = submission.finished_at, submission.evaluation.result
    stages.enter_running(submission.pk, ["attempt 1"])  # the first attempt goes on
    stages.advance(submission.pk, Status.SCORING)
    assert results.finish(first, submission.pk, result, ["attempt 1"]) == Status.DONE
    stages.fail(submission.pk, "attempt 1 failed late")
    submission.refresh_from_db()
    assert (submission.status, submission.attempts) == (Status.DONE, 2)
    assert submission.finished_at == finished_at and submission.error == ""
    assert submission.versions.count() == 1


@pytest.fixture
def alice_row(tiny_tracks, tiny_checkpoints, django_user_model) -> Submission:
    """A participant's W8A8 checkpoint upload on the tiny track, queued."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from leaderboard_fixtures import checkpoint_zip

    from leaderboard.submissions.intake import accept

    user = django_user_model.objects.create_user("alice", password="pw-for-alice-1")
    data = checkpoint_zip(tiny_checkpoints["w8a8"], "ckpt")
    return accept(
        user,
        track=tiny_tracks["w8a8"],
        kind="checkpoint",
        method="race",
        archive=SimpleUploadedFile("ckpt.zip", data),
    )
