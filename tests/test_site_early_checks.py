"""Corrupt files are refused at upload, not after the queue: a truncated ONNX file and a truncated
safetensors file get a 400 with their reason from the API at once, and no row is created."""

import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from leaderboard_fixtures import site_storage, tiny_checkpoints, tiny_tracks
from rest_framework.test import APIClient

from harness.artifacts.checkpoint.storage import MANIFEST_NAME, WEIGHTS_NAME
from harness.artifacts.onnx.export import export_fp32
from leaderboard.accounts.models import ApiToken
from leaderboard.submissions.models import Submission
from leaderboard.tracks.seeding import create_track

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]
IMMEDIATE_S = 2.0
"""The issue's bound on a refusal at upload (the worker's queue is not involved)."""


@pytest.fixture
def client(django_user_model) -> APIClient:
    user = django_user_model.objects.create_user("early", password="pw-early-123")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user, 'test')[1]}")
    return client


def _post(client, data) -> tuple[int, dict, float]:
    start = time.perf_counter()
    response = client.post("/api/v1/submissions/", data, format="multipart")
    return response.status_code, response.json(), time.perf_counter() - start


def test_a_truncated_onnx_file_is_refused_at_upload_with_its_reason(client, tiny_tracks, tmp_path):
    w8a8 = tiny_tracks["w8a8"]
    track = create_track(w8a8.dataset, w8a8.reference_model, weight_bits=8, activation_bits=8,
                         backend="onnxruntime-cpu")  # fmt: skip
    from harness.models.reference import load_reference_model

    spec, network = load_reference_model(track.reference_model.path)
    data = export_fp32(network, spec, tmp_path / "model.onnx").read_bytes()
    upload = SimpleUploadedFile("model.onnx", data[: len(data) // 2])
    data = {"track": track.slug, "kind": "onnx", "method": "RTN", "artifact": upload}
    status, body, seconds = _post(client, data)
    assert status == 400, body
    assert "the protobuf cannot be parsed" in body["error"]["message"]
    assert "truncated or corrupt" in body["error"]["message"]
    assert seconds < IMMEDIATE_S
    assert not Submission.objects.filter(track=track).exists()


def test_a_truncated_safetensors_file_is_refused_at_upload_with_its_reason(
    client, tiny_tracks, tiny_checkpoints
):
    track, ckpt = tiny_tracks["w8a8"], tiny_checkpoints["w8a8"]
    weights = (ckpt / WEIGHTS_NAME).read_bytes()
    data = {
        "track": track.slug,
        "kind": "checkpoint",
        "method": "RTN",
        "manifest": SimpleUploadedFile(MANIFEST_NAME, (ckpt / MANIFEST_NAME).read_bytes()),
        "weights": SimpleUploadedFile(WEIGHTS_NAME, weights[:-100]),
    }
    status, body, seconds = _post(client, data)
    assert status == 400, body
    assert "weights.safetensors is truncated or corrupt" in str(body)
    assert f"the file holds {len(weights) - 100 - 8 - _header_length(weights):,}" in str(body)
    assert seconds < IMMEDIATE_S
    assert not Submission.objects.filter(track=track).exists()


def _header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")
