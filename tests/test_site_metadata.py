"""Structured submission metadata (method from the list or free, hyperparameters JSON,
calibration cases used, paper and code URLs) through the web form, the API and the CLI."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from leaderboard_fixtures import checkpoint_zip, site_storage, tiny_checkpoints, tiny_tracks
from rest_framework.test import APIClient

from harness import client as harness_client
from harness.cli import build_parser
from leaderboard.accounts.models import ApiToken
from leaderboard.submissions.models import Submission

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


def test_api_stores_hyperparameters_calibration_cases_and_urls(
    alice, tiny_tracks, tiny_checkpoints
):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(alice, 't')[1]}")
    data = {
        "track": tiny_tracks["w8a8"].slug, "kind": "checkpoint", "method": "My GPTQ",
        "hyperparameters": '{"damp": 0.01, "block_size": 128}', "calibration_cases": 3,
        "paper_url": "https://example.org/paper", "code_url": "https://example.org/code",
        "artifact": SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w8a8"])),
    }  # fmt: skip
    response = api.post("/api/v1/submissions/", data, format="multipart")
    assert response.status_code == 201, response.json()
    stored = Submission.objects.get(pk=response.json()["id"])
    assert stored.hyperparameters == {"damp": 0.01, "block_size": 128}
    assert (stored.calibration_cases, stored.code_url) == (3, "https://example.org/code")
    assert response.json()["hyperparameters"] == {"damp": 0.01, "block_size": 128}

    bad = dict(data, hyperparameters="[1, 2]", artifact=SimpleUploadedFile(
        "c.zip", checkpoint_zip(tiny_checkpoints["w8a8"])))  # fmt: skip
    response = api.post("/api/v1/submissions/", bad, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["hyperparameters"] == [
        'must be a JSON object, e.g. {"damp": 0.01, "block_size": 128}'
    ]
    bad["hyperparameters"], bad["calibration_cases"] = "{", -1
    bad["artifact"] = SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w8a8"]))
    response = api.post("/api/v1/submissions/", bad, format="multipart")
    assert response.status_code == 400 and "calibration_cases" in response.json()["error"]["fields"]
    assert Submission.objects.count() == 1


def test_form_offers_the_reference_methods_and_keeps_the_metadata(
    client, alice, tiny_tracks, tiny_checkpoints
):
    client.force_login(alice)
    page = client.get(reverse("submit")).content.decode()
    assert 'list="method-names"' in page and '<option value="GPTQ">' in page
    upload = SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w8a8"]))
    response = client.post(reverse("submit"), {
        "track": tiny_tracks["w8a8"].slug, "kind": "checkpoint", "method": "Free-form name",
        "hyperparameters": '{"sweeps": 2}', "calibration_cases": "1", "artifact": upload,
    })  # fmt: skip
    assert response.status_code == 302
    stored = Submission.objects.get()
    assert (stored.method, stored.hyperparameters, stored.calibration_cases) == (
        "Free-form name",
        {"sweeps": 2},
        1,
    )
    detail = client.get(reverse("submission", args=[stored.pk])).content.decode()
    assert "sweeps=2" in detail and "calibration cases used" in detail
    upload = SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w8a8"]))
    response = client.post(reverse("submit"), {
        "track": tiny_tracks["w8a8"].slug, "kind": "checkpoint", "method": "x",
        "hyperparameters": "not json", "artifact": upload,
    })  # fmt: skip
    assert response.status_code == 200 and "not valid JSON" in response.content.decode()
    assert Submission.objects.count() == 1


def test_cli_sends_the_metadata_fields(monkeypatch, tmp_path, tiny_checkpoints):
    sent = {}

    def fake_request(url, token, body=None, content_type=None):
        sent["body"] = body.decode("latin-1")
        return {"id": 1, "status": "queued", "track": "t"}

    monkeypatch.setattr(harness_client, "_request", fake_request)
    args = build_parser().parse_args([
        "submit", "--token", "x", "--track", "t", "--method", "GPTQ",
        "--checkpoint", str(tiny_checkpoints["w8a8"]), "--hyperparameters", '{"damp": 0.1}',
        "--calibration-cases", "4", "--paper-url", "https://example.org/p",
    ])  # fmt: skip
    args.func(args)
    body = sent["body"]
    for name, value in (("hyperparameters", '{"damp": 0.1}'), ("calibration_cases", "4"),
                        ("paper_url", "https://example.org/p")):  # fmt: skip
        assert f'name="{name}"\r\n\r\n{value}\r\n' in body
