"""The site's pytest-django tests again, against a real PostgreSQL started from Debian's
package (the rest of the suite runs them on SQLite)."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from leaderboard_services import postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.services]
TESTS = Path(__file__).parent
SITE_TESTS = [
    "test_site_pipeline.py",
    "test_site_artifacts.py",
    "test_site_ranking.py",
    "test_site_pages.py",
    "test_site_curation.py",
    "test_api_submissions.py",
]


def test_site_suite_passes_on_postgresql():
    with postgres_server() as url:
        env = os.environ | {
            "DATABASE_URL": url,
            "OMP_NUM_THREADS": "1",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        }
        vendor = subprocess.run(
            [sys.executable, "-c", "import django; django.setup(); "
             "from django.db import connection; print(connection.vendor)"],
            env=env | {"DJANGO_SETTINGS_MODULE": "leaderboard.settings"}, capture_output=True,
            text=True, check=True, cwd=TESTS.parent,
        ).stdout.strip()  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             *(str(TESTS / name) for name in SITE_TESTS)],
            env=env, capture_output=True, text=True, cwd=TESTS.parent,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    assert vendor == "postgresql"
