"""The reconciler: nothing is ever stuck. Each pass re-sends, idempotently, the evaluation of
every pending submission whose message is gone:

- *queued* with no message for it on the broker's queues (lost to a broker restart, or never
  sent because the broker was down when the submission was accepted), once ``QUEUED_GRACE_S``
  has passed since it was last sent;
- *in flight* (validating, running, scoring) whose worker has gone quiet — no heartbeat for
  ``QUIET_S`` (the worker was killed) and no task of it waiting on the broker (the chunks of a
  fanned-out evaluation, ``fan_out``, wait there between workers) — or that has outrun its
  time limit plus the hard-limit margin. It goes back to ``queued``; ``stages.start`` counts
  the interrupted attempt and ends it ``failed`` ("interrupted N times") once it cannot be run.

Re-sending is idempotent: ``stages.start`` skips a finished submission, so a duplicate message
never duplicates a result. Quiet time is counted only while the reconciler itself reaches the
database (``Reconciler.database_back_at``): after a database outage, workers' retries get their
chance before anything is declared abandoned.

Each pass also publishes the final ranking of tracks whose phase has ended
(``leaderboard.tracks.phases``).

It runs on its own (``manage.py reconcile``), started by ``manage.py serve`` on the embedded
stack and as the ``reconciler`` service of ``containers/compose.yaml``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from leaderboard.config import HARD_LIMIT_MARGIN_S
from leaderboard.submissions import tasks
from leaderboard.submissions.models import IN_FLIGHT, Status, Submission
from leaderboard.tracks.phases import publish_due

logger = logging.getLogger(__name__)
EVERY_S = 10
"""Seconds between passes."""
QUEUED_GRACE_S = 20
"""A message just sent may not be visible on the broker yet; a queued submission is judged only
this long after it was last sent."""
QUIET_S = 45
"""Four and a half heartbeats (``worker.HEARTBEAT_S``) without one: the worker evaluating it
is gone."""
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's Redis priority lists


def broker_submission_ids() -> set[int] | None:
    """Submissions with a message waiting on the broker's queues (Redis lists, or the SQLAlchemy
    transport's visible rows); None for a broker that cannot be read this way."""
    url = settings.CELERY_BROKER_URL
    queues = [queue.name for queue in tasks.evaluate.app.conf.task_queues]
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        try:
            payloads = [
                raw
                for queue in queues
                for suffix in _PRIORITY_SUFFIXES
                for raw in client.lrange(queue + suffix, 0, -1)
            ]
        finally:
            client.close()
    elif url.startswith("sqla+"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url.removeprefix("sqla+"))
        try:
            with engine.connect() as db:
                if not sqlalchemy.inspect(db).has_table("kombu_message"):
                    return set()
                payloads = [
                    row[0]
                    for row in db.execute(
                        sqlalchemy.text("SELECT payload FROM kombu_message WHERE visible")
                    )
                ]
        finally:
            engine.dispose()
    else:
        return None
    return {sid for raw in payloads if (sid := _submission_of(raw)) is not None}


def _submission_of(raw: bytes | str) -> int | None:
    try:
        headers = json.loads(raw).get("headers") or {}
    except (ValueError, AttributeError):
        return None
    value = headers.get(tasks.SUBMISSION_HEADER)
    return value if isinstance(value, int) else None


@dataclass
class Reconciler:
    """One reconciler process: its passes and when it last saw the database come back."""

    database_back_at: datetime = field(default_factory=timezone.now)
    database_ok: bool = True

    def reconcile(self, now: datetime | None = None) -> Counter:
        """One pass; counts of submissions re-sent by reason, and of tracks whose phase ended
        and whose final ranking on the private split was published (``tracks.phases``)."""
        now = now or timezone.now()
        report: Counter = Counter()
        if published := publish_due(now):
            report["final ranking published"] += len(published)
        quiet_since = now - timedelta(seconds=QUIET_S)
        abandoned = Submission.objects.filter(status__in=IN_FLIGHT).filter(
            Q(heartbeat_at__lt=quiet_since) | Q(heartbeat_at__isnull=True)
        )
        if self.database_back_at <= quiet_since and abandoned.exists():
            waiting_work = broker_submission_ids() or set()  # chunks of a fanned-out one
            for submission in abandoned.exclude(pk__in=waiting_work).select_related("track"):
                report["abandoned by its worker"] += self._requeue(submission.pk, now)
        for submission in Submission.objects.filter(status__in=IN_FLIGHT).select_related("track"):
            limit = tasks.time_limit_s(submission) + HARD_LIMIT_MARGIN_S + QUIET_S
            started = submission.validating_at or submission.created_at
            if started < now - timedelta(seconds=limit):
                report["over its time limit"] += self._requeue(submission.pk, now)
        waiting = Submission.objects.filter(status=Status.QUEUED).filter(
            Q(heartbeat_at__lt=now - timedelta(seconds=QUEUED_GRACE_S))
            | Q(heartbeat_at__isnull=True)
        )
        if waiting.exists():
            on_broker = broker_submission_ids()
            if on_broker is None:
                logger.warning("the broker's queues cannot be read: queued rows are not checked")
            else:
                for submission in waiting.exclude(pk__in=on_broker).select_related("track"):
                    report["queued without a message"] += self._requeue(submission.pk, now)
        return report

    @staticmethod
    def _requeue(submission_id: int, now: datetime) -> int:
        """Back to ``queued`` (if still pending) and re-sent; 1 when it was."""
        with transaction.atomic():
            submission = (
                Submission.objects.select_for_update().select_related("track").get(pk=submission_id)
            )
            if submission.status not in (Status.QUEUED, *IN_FLIGHT):
                return 0
            submission.status = Status.QUEUED
            submission.heartbeat_at = now
            submission.save(update_fields=["status", "heartbeat_at"])
        tasks.send(submission)
        logger.info("re-sent the evaluation of submission %s", submission_id)
        return 1

    def note_database(self, ok: bool, now: datetime | None = None) -> None:
        """Record whether the last pass reached the database (quiet time restarts on return)."""
        if ok and not self.database_ok:
            self.database_back_at = now or timezone.now()
        self.database_ok = ok
