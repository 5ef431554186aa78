"""Study pages: the per-model table in the study's layout, computed from the stored baselines,
equal to what ``harness study`` computes for the same track; the cross-model and method pages;
their CSV and JSON."""

import csv
import io

import pytest
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_tracks

from harness.analysis.study import format_metric, run_study, study_schemes
from harness.track.loaded import LoadedTrack
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Submission
from leaderboard.tracks.seeding import queue_baselines, queue_reference

__all__ = ["site_storage", "tiny_tracks"]


@pytest.fixture
def rtn_baselines(tiny_tracks):
    """The FP32 row and the RTN baselines of both tiny tracks, evaluated by the pipeline."""
    for track in tiny_tracks.values():
        queue_reference(track)
        queue_baselines(track)
    for submission in Submission.objects.filter(reference_method__in=("rtn", "")):
        pipeline.run(submission.pk)
    return tiny_tracks


def table_cells(page: str, scheme: str) -> tuple[str, str]:
    """(DSC, NSD) texts of the study row ``scheme`` in the rendered page."""
    row = page[page.index(f'data-scheme="{scheme}"') :]
    row = row[: row.index("</tr>")]
    texts = []
    for cls in ("dsc", "nsd"):
        cell = row[row.index(f'class="num {cls}"') :]
        cell = cell[cell.index(">") + 1 : cell.index("</td>")]
        texts.append(cell.split(">")[1].split("<")[0] if "<a" in cell else cell)
    return texts[0], texts[1]


def test_model_study_page_shows_the_cells_harness_study_computes_for_the_same_track(
    client, rtn_baselines
):
    track = rtn_baselines["w8a8"]
    study = run_study(LoadedTrack.open(track.to_spec()), study_schemes())
    expected = {
        ("fp32" if r["precision"] == "FP32" else r["scheme"]): (
            format_metric(r["mean_dsc"], r["dsc_drop_pct"]),
            format_metric(r["mean_nsd"], r["nsd_drop_pct"]),
        )
        for r in study["rows"]
    }
    assert len(expected) == 7  # FP32 + W8A8/W4A4 × three granularities
    page = client.get(reverse("study-model", args=[track.reference_model.slug])).content.decode()
    assert {scheme: table_cells(page, scheme) for scheme in expected} == expected
    assert 'id="family">CNN<' in page
    fp32 = Submission.objects.get(track=rtn_baselines["w8a8"], kind="fp32")
    assert reverse("submission", args=[fp32.pk]) in page


def test_study_exports_carry_the_same_numbers_as_the_stored_results(client, rtn_baselines):
    slug = rtn_baselines["w4a4"].reference_model.slug
    data = client.get(reverse("study-model", args=[slug]), {"format": "json"}).json()
    (table,) = data["tables"]
    assert table["precisions"] == ["W8A8", "W4A4"] and table["model"]["family"] == "cnn"
    by_scheme = {r["scheme"]: r["cell"] for r in table["rows"]}
    for submission in Submission.objects.filter(kind="scheme", reference_method="rtn"):
        if submission.scheme.endswith("-asym"):
            assert submission.scheme not in by_scheme  # the study's grid is symmetric
            continue
        summary = submission.evaluation.result["summary"]
        cell = by_scheme[submission.scheme]
        assert cell["submission"] == submission.pk
        assert (cell["mean_dsc"], cell["nsd_drop_pct"]) == (
            summary["mean_dsc"],
            summary["nsd_drop_pct"],
        )
    response = client.get(reverse("study-model", args=[slug]), {"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    # FP32, then per precision: per-tensor by max, percentile and MSE, per-channel, adaptive
    assert response["Content-Type"].startswith("text/csv") and len(rows) == 11
    assert [r["activation_calibration"] for r in rows[1:6]] == [
        "max", "percentile", "mse", "max", "max"
    ]  # fmt: skip
    assert float(rows[0]["mean_dsc"]) == table["fp32"]["mean_dsc"]
    assert client.get(reverse("study-model", args=[slug]), {"format": "xml"}).status_code == 404


def test_cross_model_page_has_a_row_per_model_and_a_column_per_precision_and_granularity(
    client, rtn_baselines
):
    data = client.get(reverse("study"), {"format": "json"}).json()
    (table,) = data["tables"]
    assert [c["scheme"] for c in table["columns"]] == study_schemes()
    (row,) = table["rows"]
    assert all(cell is not None for cell in row["cells"])
    page = client.get(reverse("study")).content.decode()
    assert (
        row["cells"][0]["dsc"] in page
        and reverse("study-model", args=[row["model"]["slug"]]) in page
    )


def test_method_page_lists_the_methods_baselines_on_every_precision(client, rtn_baselines):
    data = client.get(reverse("method", args=["rtn"]), {"format": "json"}).json()
    precisions = {(e["precision"], e["scheme"]) for e in data["entries"]}
    assert {p for p, _ in precisions} == {"W8A8", "W4A4"}
    assert (
        len(data["entries"])
        == Submission.objects.filter(reference_method="rtn", status="done").count()
        == 12
    )
    page = client.get(reverse("method", args=["rtn"])).content.decode()
    assert page.count("<tr>") == 13  # header + 12 entries
    assert client.get(reverse("method", args=["no-such-method"])).status_code == 404


def test_home_shows_entries_leader_fp32_and_activity_and_filters_by_model_and_precision(
    client, rtn_baselines
):
    track = rtn_baselines["w4a4"]
    page = client.get(reverse("home")).content.decode()
    row = page[page.index(f'data-track="{track.slug}"') :]
    row = row[: row.index("</tr>")]
    ranked = track.evaluations.filter(rank_all__isnull=False)
    leader = track.evaluations.get(rank_best=1)
    fp32 = track.evaluations.get(submission__kind="fp32")
    assert f'class="num entries">{ranked.count()}<' in row and ranked.count() == 6
    assert leader.submission.method in row and f"{fp32.mean_dsc:.4f}" in row
    newest = Submission.objects.filter(track=track).latest("created_at").created_at
    assert newest.strftime("%Y-%m-%d %H:%M") in row
    w8 = rtn_baselines["w8a8"].slug
    filtered = client.get(reverse("home"), {"precision": "W4A4"}).content.decode()
    assert f'data-track="{track.slug}"' in filtered and f'data-track="{w8}"' not in filtered
    slug = track.reference_model.slug
    by_model = client.get(reverse("home"), {"model": slug, "backend": "simulated"}).content.decode()
    assert f'data-track="{w8}"' in by_model
    nothing = client.get(reverse("home"), {"dataset": "no-such-dataset"}).content.decode()
    assert "No tracks match these filters" in nothing
