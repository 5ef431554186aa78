"""Production hardening of the site: DEBUG off unless asked, a production start refuses the
built-in secret key, internal errors are logged with their traceback and answered with the API's
error body, and an evaluation's address space is capped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import path
from leaderboard_fixtures import checkpoint_zip, site_storage, tiny_checkpoints, tiny_tracks

from leaderboard.api.errors import INTERNAL_ERROR_MESSAGE
from leaderboard.config import DEVELOPMENT_SECRET_KEY, InsecureSecretKey, secret_key
from leaderboard.submissions.worker import memory_limit_message

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]
ROOT = Path(__file__).resolve().parent.parent


def settings_of(env: dict[str, str], expression: str) -> subprocess.CompletedProcess:
    """Evaluate ``expression`` on a fresh process's settings under ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-c", f"from django.conf import settings; print({expression})"],
        env=clean | {"DJANGO_SETTINGS_MODULE": "leaderboard.settings"} | env,
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip


def test_debug_is_off_unless_asked_for(tmp_path):
    unset = settings_of({"MEDQUANT_VAR_DIR": str(tmp_path)}, "settings.DEBUG")
    asked = settings_of({"MEDQUANT_VAR_DIR": str(tmp_path), "DJANGO_DEBUG": "1"}, "settings.DEBUG")
    assert (unset.stdout.strip(), asked.stdout.strip()) == ("False", "True")


@pytest.mark.parametrize("key", [None, DEVELOPMENT_SECRET_KEY], ids=["unset", "built-in"])
def test_a_production_start_without_its_own_secret_key_refuses_to_run(tmp_path, key):
    env = {"DATABASE_URL": "postgresql://medquant@db:5432/medquant", "DJANGO_DEBUG": "0"}
    if key:
        env["DJANGO_SECRET_KEY"] = key
    done = settings_of(env, "settings.SECRET_KEY")
    assert done.returncode != 0
    assert "InsecureSecretKey: refusing to start: DJANGO_SECRET_KEY is unset" in done.stderr


def test_the_embedded_stack_keeps_one_random_key_per_installation(tmp_path):
    keys = {
        settings_of({"MEDQUANT_VAR_DIR": str(tmp_path)}, "settings.SECRET_KEY").stdout
        for _ in range(2)
    }
    (key,) = keys
    assert len(key.strip()) >= 50 and key.strip() != DEVELOPMENT_SECRET_KEY
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_the_secret_key_rules():
    embedded = lambda: "from-file"  # noqa: E731
    assert secret_key("mine", debug=False, production=True, embedded=embedded) == "mine"
    assert secret_key(None, debug=True, production=True, embedded=embedded) == (
        DEVELOPMENT_SECRET_KEY
    )
    assert secret_key(None, debug=False, production=False, embedded=embedded) == "from-file"
    with pytest.raises(InsecureSecretKey):
        secret_key(DEVELOPMENT_SECRET_KEY, debug=False, production=True, embedded=embedded)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records():
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("leaderboard.api.errors", "django.request")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.records
    for logger in loggers:
        logger.removeHandler(handler)


def test_an_internal_api_error_is_logged_with_its_traceback_and_answered_with_the_error_body(
    client, db, monkeypatch, records, settings
):
    settings.DEBUG = False

    def broken(*args, **kwargs):
        raise RuntimeError("the database driver fell over")

    monkeypatch.setattr("leaderboard.api.views.TrackFilter", broken)
    response = client.get("/api/v1/tracks/")
    assert response.status_code == 500
    assert response.json() == {
        "error": {"status": 500, "code": "server_error", "message": INTERNAL_ERROR_MESSAGE}
    }
    logged = [r for r in records if r.exc_info and "fell over" in str(r.exc_info[1])]
    assert logged and logged[0].levelno == logging.ERROR


def _page_that_crashes(request):
    raise RuntimeError("a template tag fell over")


urlpatterns = [path("crash/", _page_that_crashes)]


def test_a_page_error_is_logged_with_its_traceback_when_debug_is_off(client, records, settings):
    settings.DEBUG = False
    settings.ROOT_URLCONF = __name__
    client.raise_request_exception = False
    assert client.get("/crash/").status_code == 500
    logged = [r for r in records if r.name == "django.request" and r.exc_info]
    assert logged and "fell over" in str(logged[0].exc_info[1])
    handlers = logging.getLogger("django.request").handlers
    assert any(isinstance(h, logging.StreamHandler) and h.level <= logging.ERROR for h in handlers)


def test_an_allocation_beyond_the_evaluation_memory_limit_is_a_memory_limit_rejection():
    """In a child process capped like a worker's pool child: a 4 GiB allocation fails with the
    error the pipeline turns into ``rejected: exceeds the memory limit``."""
    script = (
        "import django, re; django.setup()\n"
        "from leaderboard.submissions.tasks import limit_memory\n"
        "from leaderboard.submissions.pipeline import is_out_of_memory\n"
        "mapped = int(re.search(r'VmSize:\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
        "limit_memory(mapped * 1024 + 512 * 2**20)\n"
        "try:\n"
        "    bytearray(4 * 2**30)\n"
        "except MemoryError as error:\n"
        "    print('out of memory', is_out_of_memory(error))\n"
        "print('still serving', len(bytearray(2**20)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "leaderboard.settings"},
    )  # fmt: skip
    assert done.stdout.split("\n")[:2] == ["out of memory True", "still serving 1048576"], (
        done.stderr
    )


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (MemoryError(), "rejected"),
        (RuntimeError("onnxruntime: Failed to allocate memory for requested buffer"), "rejected"),
        (RuntimeError("an ordinary bug of ours"), "failed"),
    ],
    ids=["MemoryError", "native allocation failure", "other RuntimeError"],
)
def test_an_evaluation_over_the_memory_limit_ends_rejected_and_our_bugs_failed(
    django_user_model, tiny_tracks, tiny_checkpoints, monkeypatch, raised, status
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from leaderboard.submissions import pipeline
    from leaderboard.submissions.intake import accept
    from leaderboard.submissions.models import Evaluation
    from leaderboard.submissions.tasks import evaluate

    user = django_user_model.objects.create_user("oom", password="pw-oom-12345")
    submission = accept(
        user, track=tiny_tracks["w8a8"], kind="checkpoint", method="big",
        archive=SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w8a8"])),
    )  # fmt: skip

    def allocate(*args, **kwargs):
        raise raised

    monkeypatch.setattr(pipeline, "_evaluate", allocate)
    evaluate.apply(kwargs={"submission_id": submission.pk})

    submission.refresh_from_db()
    assert submission.status == status
    if status == "rejected":
        assert submission.error == memory_limit_message()
        assert submission.error.startswith("exceeds the memory limit of 16384 MiB")
    else:
        assert "internal error (RuntimeError)" in submission.error
    assert not Evaluation.objects.filter(submission=submission).exists()


@pytest.mark.parametrize("containers", [False, True], ids=["containers off", "containers on"])
def test_the_submit_form_offers_a_container_only_where_the_site_runs_them(
    client, django_user_model, tiny_tracks, settings, containers
):
    from django.urls import reverse

    settings.MEDQUANT_CONTAINERS = containers
    user = django_user_model.objects.create_user("form", password="pw-form-123456")
    client.force_login(user)
    page = client.get(reverse("submit")).content.decode()
    assert 'value="checkpoint"' in page
    assert ('value="container"' in page) is containers


def test_the_admin_shows_a_submissions_state_read_only(admin_client, tiny_tracks):
    from leaderboard.submissions.models import Submission

    submission = Submission.objects.create(
        track=tiny_tracks["w8a8"], kind="checkpoint", method="m", status="running", error="e"
    )
    page = admin_client.get(f"/admin/submissions/submission/{submission.pk}/change/")
    html = page.content.decode()
    assert page.status_code == 200
    for field in ("status", "track", "user", "artifact", "error", "is_baseline"):
        assert f'name="{field}"' not in html, field
    assert 'name="hidden"' in html and 'name="public_reason"' in html
    admin_client.post(
        f"/admin/submissions/submission/{submission.pk}/change/",
        {"status": "done", "error": "", "method": "m", "public_reason": ""},
    )
    submission.refresh_from_db()
    assert (submission.status, submission.error) == ("running", "e")
