"""Celery tasks of the submissions app and the helper that enqueues them after commit."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError, transaction
from kombu.exceptions import OperationalError as BrokerError

from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Kind, Submission

logger = logging.getLogger(__name__)
INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, BrokerError, ConnectionError)
HARD_LIMIT_MARGIN_S = 60


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=INFRASTRUCTURE_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=5,
)
def evaluate(self, *, submission_id: int) -> str:
    """Evaluate one submission (idempotent: a finished one is left as it is)."""
    try:
        return pipeline.run(submission_id)
    except SoftTimeLimitExceeded:
        limit = Submission.objects.get(pk=submission_id).track.time_limit_s
        pipeline.fail(submission_id, f"evaluation stopped: it exceeded the track's {limit} s limit")
        return "failed"
    except INFRASTRUCTURE_ERRORS:
        if self.request.retries >= self.max_retries:
            pipeline.fail(
                submission_id, "evaluation failed: infrastructure unavailable, retries ran out"
            )
        raise
    except Exception as error:
        logger.exception("evaluation of submission %s crashed", submission_id)
        pipeline.fail(
            submission_id,
            f"evaluation failed with an internal error ({type(error).__name__}); "
            "the maintainers can see the details and will re-run it",
        )
        return "failed"


def queue_for(submission: Submission) -> str:
    """Quantizer containers run on the ``containers`` queue; the rest where the track says."""
    return "containers" if submission.kind == Kind.CONTAINER else submission.track.queue


def enqueue(submission: Submission) -> None:
    """Send the evaluation once the current transaction commits (never for a rolled-back row)."""
    limit = submission.track.time_limit_s
    queue = queue_for(submission)
    submission_id = submission.pk
    transaction.on_commit(
        lambda: evaluate.apply_async(
            kwargs={"submission_id": submission_id},
            queue=queue,
            soft_time_limit=limit,
            time_limit=limit + HARD_LIMIT_MARGIN_S,
        )
    )
