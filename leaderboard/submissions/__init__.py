"""Submissions, their evaluation by Celery workers, and the result rows that are ranked."""
