"""REST API in-process (DRF test client): one-call submit with a token, status, results, token
refusals, quota, leaderboard JSON/CSV, error bodies, OpenAPI schema."""

import csv
import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from leaderboard_fixtures import checkpoint_zip, site_storage, tiny_checkpoints, tiny_tracks
from rest_framework.test import APIClient

from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from leaderboard.accounts.models import ApiToken
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Status, Submission

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def token(alice) -> str:
    return ApiToken.issue(alice, "test")[1]


def api(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def post_checkpoint(client, track, ckpt, method="RTN per-channel", pair=False):
    data = {"track": track.slug, "kind": "checkpoint", "method": method}
    if pair:
        data["manifest"] = SimpleUploadedFile(MANIFEST_NAME, (ckpt / MANIFEST_NAME).read_bytes())
        data["weights"] = SimpleUploadedFile(WEIGHTS_NAME, (ckpt / WEIGHTS_NAME).read_bytes())
    else:
        data["artifact"] = SimpleUploadedFile("ckpt.zip", checkpoint_zip(ckpt))
    return client.post("/api/v1/submissions/", data, format="multipart")


def test_one_call_submit_then_status_and_result(token, tiny_tracks, tiny_checkpoints):
    track = tiny_tracks["w8a8"]
    response = post_checkpoint(api(token), track, tiny_checkpoints["w8a8"], pair=True)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "queued" and body["track"] == track.slug

    pipeline.run(body["id"])

    status = api(token).get(f"/api/v1/submissions/{body['id']}/").json()
    assert status["status"] == "done" and status["error"] == ""
    result = api().get(f"/api/v1/submissions/{body['id']}/result/").json()
    assert (
        result["schema"] == "medquant-result"
        and result["summary"]["mean_dsc"] == status["mean_dsc"]
    )
    mine = api(token).get("/api/v1/submissions/").json()
    assert mine["count"] == 1 and mine["results"][0]["id"] == body["id"]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authentication credentials were not provided."),
        ("Token mq_wrong", "invalid token: no such token"),
        ("Token", "Invalid token header. No credentials provided."),
    ],
)
def test_submit_without_a_valid_token_is_refused_with_an_error_body(
    tiny_tracks, tiny_checkpoints, header, message
):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = post_checkpoint(client, tiny_tracks["w8a8"], tiny_checkpoints["w8a8"])
    assert response.status_code in (401, 403)
    assert response.json()["error"]["message"] == message
    assert not Submission.objects.exists()


def test_revoked_token_is_refused(alice, tiny_tracks, tiny_checkpoints):
    row, raw = ApiToken.issue(alice, "old")
    row.revoke()
    response = post_checkpoint(api(raw), tiny_tracks["w8a8"], tiny_checkpoints["w8a8"])
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid token: this token was revoked"


def test_over_quota_is_refused_and_failed_runs_do_not_count(token, tiny_tracks, tiny_checkpoints):
    track = tiny_tracks["w8a8"]
    track.daily_quota = 1
    track.save()
    assert post_checkpoint(api(token), track, tiny_checkpoints["w8a8"]).status_code == 201

    refused = post_checkpoint(api(token), track, tiny_checkpoints["w8a8"])
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert "daily quota reached: 1 of 1" in error["message"]
    assert list(error["fields"]) == ["track"]

    Submission.objects.update(status=Status.FAILED)
    assert post_checkpoint(api(token), track, tiny_checkpoints["w8a8"]).status_code == 201


def test_bad_fields_get_a_consistent_error_body(token, tiny_tracks):
    response = api(token).post(
        "/api/v1/submissions/", {"track": "no-such-track", "method": ""}, format="multipart"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == 400 and set(error["fields"]) == {"track", "method"}
    response = api(token).post(
        "/api/v1/submissions/",
        {
            "track": tiny_tracks["w8a8"].slug,
            "method": "x",
            "kind": "onnx",
            "artifact": SimpleUploadedFile("m.onnx", b"x"),
        },  # fmt: skip
        format="multipart",
    )
    assert response.json()["error"]["fields"] == {
        "kind": ["this track accepts: quantized checkpoint (manifest.json + weights.safetensors)"]
    }


def test_leaderboard_as_paginated_json_and_csv(token, tiny_tracks, tiny_checkpoints):
    track = tiny_tracks["w8a8"]
    ids = [post_checkpoint(api(token), track, tiny_checkpoints["w8a8"]).json()["id"]]
    pipeline.run(ids[0])
    body = api().get(f"/api/v1/tracks/{track.slug}/leaderboard/").json()
    assert body["count"] == 1
    row = body["results"][0]
    assert row["rank"] == 1 and row["submission"] == ids[0] and row["entrant"] == "alice"
    text = api().get(f"/api/v1/tracks/{track.slug}/leaderboard/?format=csv").content.decode()
    (csv_row,) = list(csv.DictReader(io.StringIO(text)))
    assert float(csv_row["mean_dsc"]) == row["mean_dsc"] and csv_row["rank"] == "1"
    tracks = api().get("/api/v1/tracks/", {"weight_bits": 4}).json()
    assert [t["slug"] for t in tracks["results"]] == [tiny_tracks["w4a4"].slug]


def test_openapi_schema_describes_the_submit_call(db):
    response = api().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    post = schema["paths"]["/api/v1/submissions/"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]


def test_api_docs_page_serves_its_javascript_locally_not_from_a_cdn(client, db):
    page = client.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    (script,) = re.findall(r'<script src="([^"]+redoc[^"]*)"', html)
    assert script.startswith("/static/"), f"docs page loads {script} from outside the site"
    assert b"".join(client.get(script).streaming_content).startswith(b"/*")


def test_submissions_beyond_the_rate_limit_get_429_with_an_error_body(
    token, tiny_tracks, tiny_checkpoints, monkeypatch
):
    from django.core.cache import cache

    from leaderboard.api.views import SubmitThrottle

    cache.clear()
    monkeypatch.setattr(SubmitThrottle, "rate", "1/hour", raising=False)
    track = tiny_tracks["w8a8"]
    assert post_checkpoint(api(token), track, tiny_checkpoints["w8a8"]).status_code == 201
    response = post_checkpoint(api(token), track, tiny_checkpoints["w8a8"])
    assert response.status_code == 429
    assert response.json()["error"]["message"].startswith("Request was throttled.")
    assert Submission.objects.count() == 1
