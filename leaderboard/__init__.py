"""Django project of the MedQuant leaderboard; importing it loads the Celery app.

Depends on: ``harness`` (its entry points and what they return; never the reference PTQ
methods).
"""

from leaderboard.celery import app as celery_app

__all__ = ["celery_app"]
