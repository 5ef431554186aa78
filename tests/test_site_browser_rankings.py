"""Headless Chromium against Django's live test server: a board whose rows carry their 95%
bootstrap rank interval, P(best) and the tied-within-noise mark under the ranking's stability
(Kendall's τ), and the study page of the shipped UNet with its activation-calibration rows (max,
percentile, MSE), each with its ± calibration spread and HD95, from results ``harness study
--calibration-resamples`` computed and the pipeline stored. Screenshots go to
``test-artifacts/browser/`` (``board-rank-intervals.png``, ``study-calibration.png``)."""

import json

import numpy as np
import pytest
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_tracks
from selenium.webdriver.common.by import By
from test_site_browser import ARTIFACTS, browser
from test_site_rank_uncertainty import BASE, NOISE, entry

from harness.analysis.study import run_study, study_schemes
from harness.data.demo import make_phantoms
from harness.demo import DEMO_MODELS_DIR
from harness.track.loaded import LoadedTrack
from leaderboard.submissions.models import Kind, Status, Submission
from leaderboard.submissions.pipeline import store_evaluation
from leaderboard.tracks import ranking
from leaderboard.tracks.seeding import baseline_user, create_track, import_dataset, import_model

__all__ = ["browser", "site_storage", "tiny_tracks"]
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]
RESAMPLES = 2


def test_board_shows_rank_intervals_and_ties_within_noise(
    browser, live_server, tiny_tracks, django_user_model
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    track = tiny_tracks["w8a8"]
    users = [django_user_model.objects.create_user(f"lab{i}") for i in range(4)]
    entry(track, users[0], "noise twin A", BASE + NOISE + 0.05, BASE * 0 + 4.0)
    entry(track, users[1], "noise twin B", BASE + 0.05, BASE * 0 + 4.1)
    entry(track, users[2], "close third", BASE + 0.035, BASE * 0 + 5.0)
    entry(track, None, "RTN per-tensor", BASE - 0.06, BASE * 0 + 9.5, kind=Kind.SCHEME,
          baseline=True)  # fmt: skip
    entry(track, users[3], "far behind", BASE - 0.2, BASE * 0 + 20.0)
    ranking.refresh(track)
    browser.get(live_server.url + reverse("track", args=[track.slug]))
    table = browser.find_element(By.ID, "leaderboard")
    stability = browser.find_element(By.ID, "rank-stability").text
    assert "median Kendall's τ" in stability
    rows = [r.text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    twins = rows[:2]
    assert all("noise twin" in r and "[1–2]" in r and "tied within noise" in r for r in twins)
    assert "tied within noise" not in "".join(rows[2:])
    assert rows[4].startswith("5\n[5–5] P(best) 0.00") and "far behind" in rows[4]
    assert "PTQ verified by construction" in rows[3] and "PTQ checked by reach" in rows[0]
    browser.find_element(By.ID, "leaderboard").screenshot(
        str(ARTIFACTS / "board-rank-intervals-table.png")
    )
    browser.save_screenshot(str(ARTIFACTS / "board-rank-intervals.png"))


@pytest.fixture
def unet_study_track(db, site_storage, tmp_path):
    """The shipped UNet at W4A4 on a small phantom dataset whose calibration pool holds the
    train cases too (so that resampling it means something)."""
    dataset = make_phantoms(tmp_path / "phantoms", cases=8, seed=0)
    splits = json.loads((dataset / "splits.json").read_text())
    splits["calibration"] += splits["train"]
    (dataset / "splits.json").write_text(json.dumps(splits))
    return create_track(
        import_dataset(dataset, slug="phantoms"), import_model(DEMO_MODELS_DIR / "unet"),
        weight_bits=4, activation_bits=4, calibration_resamples=RESAMPLES,
    )  # fmt: skip


def store(track, result: dict) -> None:
    """A study row's result stored as the track's RTN baseline (or FP32 row) of its scheme."""
    scheme = result["submission"]["scheme"]
    fp32 = scheme == "fp32"
    submission = Submission.objects.create(
        track=track, user=baseline_user(), kind=Kind.FP32 if fp32 else Kind.SCHEME,
        scheme=scheme, reference_method="" if fp32 else "rtn", is_baseline=True,
        method="FP32 reference" if fp32 else f"RTN {scheme}", status=Status.DONE,
    )  # fmt: skip
    store_evaluation(submission, result)


def test_study_page_shows_activation_calibration_rows_with_their_spread(
    browser, live_server, unet_study_track
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    track = unet_study_track
    schemes = study_schemes(["w4a4"], activation_calibrations=["max", "percentile", "mse"])
    study = run_study(LoadedTrack.open(track.to_spec()), schemes, calibration_resamples=RESAMPLES)
    for result in study["results"]:
        store(track, result)
    ranking.refresh(track)
    browser.get(live_server.url + reverse("study-model", args=[track.reference_model.slug]))
    table = browser.find_element(By.CSS_SELECTOR, "table.study")
    rows = {
        r.get_attribute("data-scheme"): r.text
        for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    }
    for scheme, calibration in [("w4a4-per-tensor", "max"), ("w4a4-per-tensor-p99.99",
                                "percentile"), ("w4a4-per-tensor-mse", "mse")]:  # fmt: skip
        (row,) = [r for r in study["rows"] if r["scheme"] == scheme]
        (result,) = [r for r in study["results"] if r["submission"]["scheme"] == scheme]
        public = result["splits"]["public"]["summary"]  # the site ranks the public split
        assert calibration in rows[scheme] and f"{public['mean_dsc']:.3f}" in rows[scheme]
        assert f"± {row['calibration_sd']:.4f}" in rows[scheme]
        assert f"{public['mean_hd95']:.2f}" in rows[scheme]
    sds = [r["calibration_sd"] for r in study["rows"][1:]]
    assert all(sd is not None and np.isfinite(sd) for sd in sds)
    browser.save_screenshot(str(ARTIFACTS / "study-calibration.png"))
