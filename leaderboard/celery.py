"""Celery application: broker and result backend from the environment (see settings), one queue
per worker capability (``cpu``, ``gpu``, ``containers``)."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")

app = Celery("leaderboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue("cpu"), Queue("gpu"), Queue("containers")]
app.autodiscover_tasks()
