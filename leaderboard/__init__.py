"""Django project of the MedQuant leaderboard; importing it loads the Celery app."""

from leaderboard.celery import app as celery_app

__all__ = ["celery_app"]
