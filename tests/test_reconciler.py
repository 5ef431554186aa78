"""The reconciler's rules on the database (the broker's queues and the send stubbed): lost
queued messages and abandoned or overdue evaluations are re-sent; live ones are left alone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_tracks

from leaderboard.submissions import reconciler
from leaderboard.submissions.models import Status, Submission
from leaderboard.submissions.reconciler import QUIET_S, Reconciler

__all__ = ["site_storage", "tiny_tracks"]


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
