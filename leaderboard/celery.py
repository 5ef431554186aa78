"""Celery application: broker and result backend from the environment (see settings), one queue
per worker capability (``cpu``, ``gpu``, ``containers``) and, beside each backend queue, one for
the reference baselines (``cpu-baselines``, ``gpu-baselines``), served by workers of their own so
that a researcher's submission never waits behind a track's baselines."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")

app = Celery("leaderboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
BASELINE_QUEUE_SUFFIX = "-baselines"
BACKEND_QUEUES = ("cpu", "gpu")
app.conf.task_queues = [
    *(Queue(name) for name in BACKEND_QUEUES),
    *(Queue(name + BASELINE_QUEUE_SUFFIX) for name in BACKEND_QUEUES),
    Queue("containers"),
]
app.autodiscover_tasks()
