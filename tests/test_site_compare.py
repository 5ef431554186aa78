"""Comparing entries of one track: per-class and per-case values side by side, differences to
the first entry, the paired bootstrap CI of the mean-DSC difference; linked from the board and
served by the API; bad selections get a specific error."""

import json

import jsonschema
import numpy as np
import pytest
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_tracks

from harness.scoring.result import BOOTSTRAP_SAMPLES, SCHEMA_PATH, paired_bootstrap_ci
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Submission
from leaderboard.tracks.seeding import queue_baselines, queue_reference

__all__ = ["site_storage", "tiny_tracks"]


@pytest.fixture
def two_baselines(tiny_tracks):
    """FP32 and the per-tensor and per-channel RTN baselines of the tiny W4A4 track."""
    track = tiny_tracks["w4a4"]
    queue_reference(track)
    queue_baselines(track)
    wanted = Submission.objects.filter(track=track, scheme__in=["fp32", "w4a4-per-tensor",
                                                                "w4a4-per-channel"])  # fmt: skip
    for submission in wanted:
        pipeline.run(submission.pk)
    by_scheme = {s.scheme: s for s in wanted.all()}
    return track, by_scheme["w4a4-per-tensor"], by_scheme["w4a4-per-channel"], by_scheme["fp32"]


def test_paired_bootstrap_resamples_the_same_cases_on_both_sides(tiny_tracks):
    from leaderboard.tracks.compare import difference

    assert difference([0.8, 0.7, 0.9], [0.5, 0.4, 0.6], seed=0)["resolved"] is True
    assert difference([0.9, 0.1, 0.8], [0.1, 0.9, 0.2], seed=0)["resolved"] is False
    a = [0.9, 0.5, 0.7, 0.3]
    # a constant shift has no noise once paired: the interval is that shift
    assert paired_bootstrap_ci([x + 0.1 for x in a], a, seed=0) == pytest.approx([0.1, 0.1])
    low, high = paired_bootstrap_ci([0.9, 0.1, 0.8, 0.2], [0.1, 0.9, 0.2, 0.8], seed=0)
    assert low < 0 < high  # opposite case-by-case swings: within noise
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap_ci([0.1], [0.1, 0.2], seed=0)


def test_api_compares_two_baselines_per_class_and_case_with_the_paired_ci(client, two_baselines):
    track, tensor, channel, _ = two_baselines
    url = reverse("api-compare", args=[track.slug])
    data = client.get(url, {"ids": [tensor.pk, channel.pk]}).json()
    assert [e["submission"] for e in data["entries"]] == [tensor.pk, channel.pk]
    first, second = tensor.evaluation.result, channel.evaluation.result
    cases_a = [c["mean_dsc"] for c in first["cases"]]
    cases_b = [c["mean_dsc"] for c in second["cases"]]
    difference = data["mean_dsc_difference"][1]
    assert difference["ci95"] == paired_bootstrap_ci(cases_b, cases_a, track.seed)
    assert difference["mean"] == pytest.approx(np.mean(cases_b) - np.mean(cases_a))
    assert len(cases_a) == 1 and difference["resolved"] is None  # one case: no noise estimate
    assert data["bootstrap"] == {"samples": BOOTSTRAP_SAMPLES, "seed": track.seed,
                                 "paired_over": "cases", "interval": 0.95}  # fmt: skip
    assert len(data["per_class"]) == len(first["classes"])
    for row, key in zip(data["per_class"], first["classes"], strict=True):
        dsc_a, dsc_b = first["per_class"][key]["mean_dsc"], second["per_class"][key]["mean_dsc"]
        assert [v["value"] for v in row["dsc"]] == [dsc_a, dsc_b]
        assert row["dsc"][1]["difference"] == pytest.approx(dsc_b - dsc_a)
        hd_a, hd_b = first["per_class"][key]["mean_hd95"], second["per_class"][key]["mean_hd95"]
        assert [v["value"] for v in row["hd95"]] == [hd_a, hd_b]
    assert [r["case"] for r in data["per_case"]] == [c["case_id"] for c in first["cases"]]
    assert [r["hd95"][0]["value"] for r in data["per_case"]] == [
        c["mean_hd95"] for c in first["cases"]
    ]
    tensor.evaluation.refresh_from_db()
    assert data["entries"][0]["mean_hd95"] == first["summary"]["mean_hd95"] > 0
    assert tensor.evaluation.mean_hd95 == first["summary"]["mean_hd95"]
    assert first["schema_version"] == 4
    jsonschema.validate(first, json.loads(SCHEMA_PATH.read_text()))


def test_compare_page_is_linked_from_the_board_and_shows_differences_and_the_verdict(
    client, two_baselines
):
    track, tensor, channel, fp32 = two_baselines
    board = client.get(reverse("track", args=[track.slug])).content.decode()
    assert f'action="{reverse("compare", args=[track.slug])}"' in board
    assert f'name="ids" value="{tensor.pk}"' in board and f'name="ids" value="{fp32.pk}"' in board
    response = client.get(reverse("compare", args=[track.slug]),
                          {"ids": [fp32.pk, tensor.pk, channel.pk]})  # fmt: skip
    page = response.content.decode()
    assert response.status_code == 200
    assert page.count("one test case: undetermined") == 2  # the tiny track has one test case
    assert page.count("HD95 mm (Δ)") == 2 * 3  # per class and per case, for each entry
    for name in tensor.evaluation.result["classes"].values():
        assert f"<td>{name}</td>" in page
    for case in tensor.evaluation.result["cases"]:
        assert f"<td>{case['case_id']}</td>" in page


def test_bad_selections_are_refused_with_the_reason(client, two_baselines, tiny_tracks):
    track, tensor, channel, _ = two_baselines
    url = reverse("compare", args=[track.slug])
    response = client.get(url, {"ids": [tensor.pk]})
    assert response.status_code == 400 and "choose 2 to 4 entries" in response.content.decode()
    other = reverse("compare", args=[tiny_tracks["w8a8"].slug])
    response = client.get(other, {"ids": [tensor.pk, channel.pk]})
    assert response.status_code == 400 and "no finished entry" in response.content.decode()
    queued = Submission.objects.filter(track=track, status="queued").first()
    response = client.get(
        reverse("api-compare", args=[track.slug]), {"ids": [tensor.pk, queued.pk]}
    )
    assert response.status_code == 400
    assert (
        response.json()["error"]["message"]
        == f"ids: no finished entry {queued.pk} on track {track.slug}"
    )
    assert client.get(url, {"ids": "x,1"}).status_code == 400
