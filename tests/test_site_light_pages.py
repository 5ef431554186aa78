"""Light pages and a tidy API: static files collected with gzip and Brotli forms and served
compressed, Plotly's cartesian bundle, charts whose legend sits below the plot, no one-cell
heatmap, a JSON API root, meaningful OpenAPI operation ids, a header on an empty board's CSV,
page titles that name what is shown, a favicon, and no "(↓-0.0%)"."""

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_tracks
from rest_framework.test import APIClient

from harness.analysis.study import format_metric
from leaderboard.submissions.models import Kind, Submission
from leaderboard.tracks import charts

__all__ = ["site_storage", "tiny_tracks"]
BUNDLE = "plotly/plotly-cartesian-4.1.1.min.js"


def test_collected_static_files_are_served_compressed(settings, tmp_path, db):
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", "--noinput", verbosity=0)
    bundle = settings.STATIC_ROOT / BUNDLE
    assert {p.name for p in bundle.parent.iterdir()} >= {
        bundle.name, f"{bundle.name}.gz", f"{bundle.name}.br"
    }  # fmt: skip
    settings.WHITENOISE_USE_FINDERS = False  # as a site started after collectstatic
    for encoding, accepted in (("br", "gzip, deflate, br"), ("gzip", "gzip, deflate")):
        response = Client().get(f"/static/{BUNDLE}", HTTP_ACCEPT_ENCODING=accepted)
        body = b"".join(response.streaming_content)
        assert response.status_code == 200 and response["Content-Encoding"] == encoding
        assert len(body) < bundle.stat().st_size / 2  # 1.5 MB → about 0.4–0.5 MB


def test_track_page_loads_the_cartesian_bundle_and_keeps_legends_below_the_plot(
    client, tiny_tracks
):
    page = client.get(reverse("track", args=[tiny_tracks["w8a8"].slug])).content.decode()
    assert f"/static/{BUNDLE}" in page and "plotly.min.js" not in page
    assert charts.LAYOUT["legend"]["orientation"] == "h"  # never a column beside the plot


def test_a_one_cell_granularity_grid_is_not_drawn(tiny_tracks):
    track = tiny_tracks["w8a8"]
    submission = Submission.objects.create(
        track=track, kind=Kind.SCHEME, method="RTN", is_baseline=True, status="done",
        reference_method="rtn", scheme="w8a8-per-channel",
    )  # fmt: skip
    fields = dict.fromkeys(
        ("mean_dsc", "mean_nsd", "dsc_drop_pct", "dsc_ci_low", "dsc_ci_high", "fp32_mean_dsc"), 0.5
    )
    from leaderboard.submissions.models import Evaluation

    Evaluation.objects.create(
        submission=submission, track=track, result={}, gate_passed=True, weight_bits=8,
        activation_bits=8, granularity="per-channel", **fields,
    )  # fmt: skip
    assert charts.baseline_grid(track) is None  # one cell: nothing to compare
    other = tiny_tracks["w4a4"]
    second = Submission.objects.create(
        track=other, kind=Kind.SCHEME, method="RTN", is_baseline=True, status="done",
        reference_method="rtn", scheme="w4a4-per-channel",
    )  # fmt: skip
    Evaluation.objects.create(
        submission=second, track=other, result={}, gate_passed=True, weight_bits=4,
        activation_bits=4, granularity="per-channel", **fields,
    )  # fmt: skip
    assert '"type":"heatmap"' in charts.baseline_grid(track)


@pytest.mark.parametrize("url", ["/api/", "/api/v1/"])
def test_api_root_lists_the_endpoints_as_json(db, url):
    response = APIClient().get(url)
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    endpoints = response.json()["endpoints"]
    assert endpoints["tracks"].endswith("/api/v1/tracks/")
    assert endpoints["cancel"].endswith("/api/v1/submissions/{id}/cancel/")
    assert APIClient().get(endpoints["tracks"]).status_code == 200


def test_openapi_operations_have_meaningful_ids_and_summaries(db):
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()
    operations = {
        op["operationId"]: op
        for path in schema["paths"].values()
        for method, op in path.items()
        if method in ("get", "post")
    }
    assert set(operations) == {
        "tracks_list", "tracks_retrieve", "leaderboard_retrieve", "entries_compare",
        "submissions_list", "submissions_create", "submissions_retrieve",
        "submissions_cancel", "submissions_result",
    }  # fmt: skip
    assert all(op.get("summary") for op in operations.values())
    assert schema["info"]["version"] == "v1"
    assert "schema_version" in operations["submissions_result"]["description"]


def test_an_empty_boards_csv_still_has_its_header(tiny_tracks):
    slug = tiny_tracks["w8a8"].slug
    body = APIClient().get(f"/api/v1/tracks/{slug}/leaderboard/", {"format": "csv"})
    lines = body.content.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rank,") and "mean_dsc" in lines[0]


def test_pages_are_titled_after_what_they_show(client, tiny_tracks, django_user_model):
    track = tiny_tracks["w8a8"]
    user = django_user_model.objects.create_user("ann", password="pw-ann-12345")
    submission = Submission.objects.create(track=track, user=user, kind=Kind.ONNX, method="Mine")
    client.force_login(user)
    titles = {
        reverse("submission", args=[submission.pk]): f"#{submission.pk} Mine · {track.title}",
        reverse("track", args=[track.slug]): track.title,
        reverse("submit"): "Submit",
        reverse("my-submissions"): "My submissions",
        reverse("tokens"): "API tokens",
    }
    for url, title in titles.items():
        page = client.get(url).content.decode()
        assert f"<title>{title} · MedQuant</title>" in page, url


def test_favicon_is_linked_and_served(client, db):
    page = client.get("/").content.decode()
    assert 'rel="icon" href="/static/favicon.svg"' in page
    response = client.get("/favicon.ico", follow=True)
    assert response.status_code == 200
    assert b"<svg" in b"".join(response.streaming_content)


def test_a_drop_that_rounds_to_nothing_is_not_negative_zero():
    assert format_metric(0.9, -0.01) == "0.900 (↓0.0%)"
    assert format_metric(0.9, -0.3) == "0.900 (↑0.3%)"  # a gain over FP32
    assert format_metric(0.9, 1.24) == "0.900 (↓1.2%)"
