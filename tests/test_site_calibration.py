"""± calibration on the site: a baseline the platform quantized is re-run on calibration sets
resampled from the track's pool (``Track.calibration_resamples``), and its board row, entry page
and API row show the spread of mean DSC."""

import json
import shutil

import pytest
from django.urls import reverse
from leaderboard_fixtures import site_storage

from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Submission
from leaderboard.tracks import ranking
from leaderboard.tracks.seeding import create_track, import_dataset, import_model, queue_baselines

__all__ = ["site_storage"]


@pytest.fixture
def pooled_track(db, tiny_track, site_storage, tmp_path):
    """A W8A8 track of the tiny model whose calibration pool holds three cases, two re-runs."""
    dataset, model = tiny_track
    copy = tmp_path / "pooled"
    shutil.copytree(dataset, copy)
    splits = json.loads((copy / "splits.json").read_text())
    splits["calibration"] += splits["train"]
    (copy / "splits.json").write_text(json.dumps(splits))
    return create_track(
        import_dataset(copy, slug="pooled"), import_model(model), weight_bits=8,
        activation_bits=8, bits_per_weight_budget=9, calibration_resamples=2,
    )  # fmt: skip


def test_a_baseline_shows_its_calibration_spread_on_the_board_its_page_and_the_api(
    client, pooled_track
):
    queue_baselines(pooled_track, methods=("rtn",))
    baseline = Submission.objects.get(track=pooled_track, scheme="w8a8-per-tensor")
    pipeline.run(baseline.pk)
    baseline.refresh_from_db()
    assert baseline.status == "done", baseline.error
    spread = baseline.evaluation.result["summary"]["calibration"]
    assert spread["resamples"] == 2 and len(spread["mean_dsc"]) == 2
    assert baseline.evaluation.calibration_sd == spread["sd"] is not None
    page = client.get(reverse("submission", args=[baseline.pk])).content.decode()
    assert 'id="calibration-spread"' in page and f"± {spread['sd']:.4f}" in page
    assert "PTQ verified by construction" in page
    ranking.refresh(pooled_track)
    board = client.get(reverse("track", args=[pooled_track.slug])).content.decode()
    assert f"± {spread['sd']:.4f} cal." in board
    rows = client.get(reverse("api-leaderboard", args=[pooled_track.slug])).json()["results"]
    assert [r["calibration_sd"] for r in rows] == [spread["sd"]]
