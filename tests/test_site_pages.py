"""Server-rendered pages: browsing, downloads, sign-up, tokens, the submit form and its errors."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from leaderboard_fixtures import checkpoint_zip, site_storage, tiny_checkpoints, tiny_tracks

from leaderboard.accounts.models import ApiToken, Team, token_digest
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Status, Submission
from leaderboard.tracks.seeding import baseline_schemes, queue_baselines

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]


@pytest.fixture
def alice(client, django_user_model):
    user = django_user_model.objects.create_user("alice", password="pw-alice-123")
    client.force_login(user)
    return user


@pytest.fixture
def evaluated_baselines(tiny_tracks):
    track = tiny_tracks["w4a4"]
    for submission in queue_baselines(track):
        pipeline.run(submission.pk)
    return track


def test_home_groups_tracks_and_filters_them_by_weight_bits(client, tiny_tracks):
    page = client.get(reverse("home")).content.decode()
    assert tiny_tracks["w8a8"].title in page and tiny_tracks["w4a4"].title in page
    page = client.get(reverse("home"), {"bits": 4}).content.decode()
    assert tiny_tracks["w4a4"].title in page and tiny_tracks["w8a8"].title not in page


def test_track_page_ranks_baselines_and_embeds_the_charts(client, evaluated_baselines):
    response = client.get(reverse("track", args=[evaluated_baselines.slug]))
    page = response.content.decode()
    assert page.count('class="baseline"') == len(baseline_schemes(evaluated_baselines)) == 10
    for name in ("size", "per_class", "grid"):
        assert f'id="figure-{name}"' in page
    assert 'id="figure-latency"' not in page  # a simulator's timings are not a deployment's
    start = page.index('id="figure-grid">') + len('id="figure-grid">')
    grid = json.loads(page[start : page.index("</script>", start)])
    assert grid["data"][0]["type"] == "heatmap"
    rtn = {  # the study's grid: symmetric activations
        s.evaluation.granularity: s.evaluation.mean_dsc
        for s in evaluated_baselines.submissions.filter(reference_method="rtn")
        .exclude(scheme__endswith="-asym")
        .exclude(scheme__endswith="-mse")  # the activation-calibration rows
        .exclude(scheme__endswith="-p99.99")
    }
    assert dict(zip(grid["data"][0]["x"], grid["data"][0]["z"][0], strict=True)) == rtn
    assert client.get("/static/plotly/plotly-cartesian-4.1.1.min.js").status_code == 200


def test_the_baseline_grid_follows_a_sibling_track_finishing_after_the_page_was_cached(
    client, tiny_tracks, evaluated_baselines
):
    def grid_rows() -> list[str]:
        page = client.get(reverse("track", args=[evaluated_baselines.slug])).content.decode()
        start = page.index('id="figure-grid">') + len('id="figure-grid">')
        return json.loads(page[start : page.index("</script>", start)])["data"][0]["y"]

    assert grid_rows() == ["W4A4"]  # rendered and cached
    for submission in queue_baselines(tiny_tracks["w8a8"]):
        pipeline.run(submission.pk)
    assert grid_rows() == ["W8A8", "W4A4"]


def test_track_offers_the_fp32_model_and_calibration_images_but_never_test_cases_or_labels(
    client, tiny_tracks
):
    track = tiny_tracks["w8a8"]
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert "model.safetensors" in page and "manifest.json" in page
    response = client.get(reverse("model-file", args=[track.slug, "model.safetensors"]))
    assert response.status_code == 200
    from harness.data.dataset import load_dataset

    dataset = load_dataset(track.dataset.path)
    (calibration,) = dataset.split("calibration")
    (test,) = dataset.split("test")
    url = reverse("calibration-case", args=[track.slug, calibration.case_id])
    assert b"".join(client.get(url).streaming_content) == calibration.images[0].read_bytes()
    assert (
        client.get(reverse("calibration-case", args=[track.slug, test.case_id])).status_code == 404
    )
    assert client.get(f"/tracks/{track.slug}/model/..%2Fdataset.json").status_code == 404


def test_signup_logs_in_and_founds_the_team(client, db):
    response = client.post(
        reverse("signup"),
        {
            "username": "bob",
            "password1": "Sup3r-secret-pw",
            "password2": "Sup3r-secret-pw",
            "team": "Quant Lab",
        },  # fmt: skip
    )
    assert response.status_code == 302
    assert Team.objects.get(name="Quant Lab").members.get().username == "bob"
    assert client.get(reverse("tokens")).status_code == 200


def test_token_is_shown_once_stored_as_digest_and_revocable(client, alice):
    page = client.post(reverse("tokens"), {"name": "laptop"}).content.decode()
    token = ApiToken.objects.get(user=alice)
    start = page.index('id="new-token">') + len('id="new-token">')
    raw = page[start : page.index("</pre>", start)]
    assert raw.startswith("mq_") and token.digest == token_digest(raw) and raw not in token.digest
    assert raw not in client.get(reverse("tokens")).content.decode()
    client.post(reverse("revoke-token", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_submit_form_reports_field_errors(client, alice, tiny_tracks):
    response = client.post(
        reverse("submit"), {"track": tiny_tracks["w8a8"].slug, "kind": "checkpoint"}
    )
    assert response.status_code == 200
    form = response.context["form"]
    assert "method" in form.errors
    response = client.post(
        reverse("submit"),
        {
            "track": tiny_tracks["w8a8"].slug,
            "kind": "checkpoint",
            "method": "mine",
            "artifact": SimpleUploadedFile("x.zip", b"garbage"),
        },  # fmt: skip
    )
    assert response.context["form"].errors["artifact"] == ["the upload is not a zip file"]
    assert not Submission.objects.exists()


def test_submit_form_queues_the_checkpoint_and_my_submissions_refreshes_while_pending(
    client, alice, tiny_tracks, tiny_checkpoints
):
    upload = SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w8a8"]))
    response = client.post(
        reverse("submit"),
        {
            "track": tiny_tracks["w8a8"].slug,
            "kind": "checkpoint",
            "method": "RTN mine",
            "artifact": upload,
        },  # fmt: skip
    )
    submission = Submission.objects.get()
    assert response.status_code == 302 and response.url == reverse(
        "submission", args=[submission.pk]
    )
    mine = client.get(reverse("my-submissions")).content.decode()
    assert 'http-equiv="refresh"' in mine and "RTN mine" in mine

    pipeline.run(submission.pk)

    mine = client.get(reverse("my-submissions")).content.decode()
    assert 'http-equiv="refresh"' not in mine and "status-done" in mine
    status = client.get(reverse("submission-status", args=[submission.pk])).json()
    assert status == {"id": submission.pk, "status": "done", "error": "", "pending": False,
                      "queue": None}  # fmt: skip


def test_submission_page_shows_logs_to_its_owner_only(client, alice, tiny_tracks, tiny_checkpoints):
    upload = SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w8a8"]))
    client.post(
        reverse("submit"),
        {
            "track": tiny_tracks["w8a8"].slug,
            "kind": "checkpoint",
            "method": "m",
            "artifact": upload,
        },
    )
    submission = Submission.objects.get()
    url = reverse("submission", args=[submission.pk])
    client.logout()
    assert client.get(url).status_code == 404
    pipeline.run(submission.pk)
    assert Submission.objects.get().status == Status.DONE
    page = client.get(url).content.decode()
    assert "per-class" not in page and "Per case" in page and "visible to you only" not in page
    client.force_login(alice)
    assert "visible to you only" in client.get(url).content.decode()


def test_onnx_track_page_explains_the_onnx_format(client, tiny_tracks):
    from leaderboard.tracks.seeding import create_track

    w8a8 = tiny_tracks["w8a8"]
    track = create_track(
        w8a8.dataset, w8a8.reference_model, weight_bits=8, activation_bits=8,
        backend="onnxruntime-cpu",
    )  # fmt: skip
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert "This track accepts: ONNX model with Q/DQ nodes." in page
    assert "harness export-onnx" in page and "manifest.json" not in page


def test_onnx_track_page_states_what_peer_toolkits_int8_files_need(client, tiny_tracks):
    from leaderboard.tracks.seeding import create_track

    w8a8 = tiny_tracks["w8a8"]
    track = create_track(
        w8a8.dataset, w8a8.reference_model, weight_bits=8, activation_bits=8,
        backend="onnxruntime-cpu", max_float_mac_fraction=0.25,
    )  # fmt: skip
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert "quant_pre_process" in page and 'quantize_mode="int8"' in page
    assert "budget\n8.50 bits per weight, float-MAC allowance\n0.25" in page
    assert 'id="peer-int8"' not in client.get(reverse("track", args=[w8a8.slug])).content.decode()
