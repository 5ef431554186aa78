"""The board shows what its labels mean: the FP32 reference row beside the ranked entries (page,
JSON, CSV), bits per weight and × smaller read from the artifact, bit-identical artifacts sharing
one rank, and a passing-only filter explained by the gate line."""

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from leaderboard_fixtures import checkpoint_zip, site_storage, tiny_checkpoints, tiny_tracks

from leaderboard.submissions import pipeline
from leaderboard.submissions.intake import accept
from leaderboard.submissions.models import Evaluation, Kind, Status
from leaderboard.tracks.seeding import queue_reference

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]


@pytest.fixture
def board(tiny_tracks, tiny_checkpoints, django_user_model):
    """The W4A4 tiny track with its FP32 reference row and the same 4-bit RTN checkpoint submitted
    by three users."""
    track = tiny_tracks["w4a4"]
    reference = queue_reference(track)
    assert pipeline.run(reference.pk) == Status.DONE
    entries = []
    for name in ("ann", "bob", "cy"):
        user = django_user_model.objects.create_user(name, password=f"pw-{name}-123")
        submission = accept(
            user, track=track, kind=Kind.CHECKPOINT, method=f"RTN by {name}",
            archive=SimpleUploadedFile("c.zip", checkpoint_zip(tiny_checkpoints["w4a4"])),
        )  # fmt: skip
        assert pipeline.run(submission.pk) == Status.DONE
        entries.append(Evaluation.objects.get(submission=submission))
    return track, Evaluation.objects.get(submission=reference), entries


def test_the_fp32_reference_row_is_evaluated_on_the_backend_and_never_ranked(board):
    track, reference, entries = board
    assert reference.rank_all is None and reference.rank_best is None
    assert reference.weight_bits == 32 and reference.size_mb > entries[0].size_mb
    assert reference.mean_dsc == entries[0].fp32_mean_dsc


def test_the_board_shows_the_reference_row_bits_per_weight_and_x_smaller(client, board):
    track, reference, entries = board
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert 'id="fp32-reference"' in page and "not ranked" in page
    assert "bits/weight" in page and "× smaller" in page
    entry = entries[0]
    assert entry.bits_per_weight == entry.result["compression"]["bits_per_weight"] > 4
    assert entry.x_smaller == pytest.approx(reference.size_mb / entry.size_mb, rel=1e-6)
    assert f"{entry.bits_per_weight:.2f}" in page and f"{entry.x_smaller:.2f}" in page
    assert 'id="gate-explanation"' in page and "99.0% of the FP32 reference" in page


def test_bit_identical_artifacts_share_one_rank_and_say_same_as(client, board):
    track, _, entries = board
    for entry in entries:
        entry.refresh_from_db()
    assert {e.rank_all for e in entries} == {entries[0].rank_all}
    assert [e.duplicate_of_id for e in entries] == [None, entries[0].pk, entries[0].pk]
    page = client.get(reverse("track", args=[track.slug]), {"entries": "all"}).content.decode()
    assert page.count(f"same as #{entries[0].rank_all}") == 2


def test_json_and_csv_exports_carry_the_reference_row_and_the_new_columns(client, board):
    track, reference, entries = board
    url = f"/api/v1/tracks/{track.slug}/leaderboard/"
    body = client.get(url, {"format": "json", "entries": "all"}).json()
    assert body["reference"]["method"] == "FP32 reference" and body["reference"]["rank"] is None
    row = body["results"][0]
    assert row["bits_per_weight"] == pytest.approx(entries[0].bits_per_weight)
    assert row["x_smaller"] == pytest.approx(entries[0].x_smaller)
    assert [r["same_as"] for r in body["results"]] == [None, row["rank"], row["rank"]]
    text = client.get(url, {"format": "csv", "entries": "all"}).content.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["method"] == "FP32 reference" and rows[0]["rank"] == ""
    assert {"bits_per_weight", "x_smaller", "x_faster", "same_as"} <= set(rows[0])


def test_the_passing_only_filter_hides_entries_that_fail_the_gate(client, board):
    track, _, entries = board
    Evaluation.objects.filter(pk=entries[1].pk).update(gate_passed=False)
    params = {"entries": "all", "gate": "pass"}
    page = client.get(reverse("track", args=[track.slug]), params).content.decode()
    table = page[page.index('<table id="leaderboard">') : page.index("</table>")]
    assert "RTN by bob" not in table and "RTN by ann" in table
    body = client.get(f"/api/v1/tracks/{track.slug}/leaderboard/", params).json()
    assert [r["method"] for r in body["results"]] == ["RTN by ann", "RTN by cy"]


def test_csv_cells_that_a_spreadsheet_would_evaluate_are_written_as_text(client, board):
    track, _, entries = board
    entries[0].submission.__class__.objects.filter(pk=entries[0].submission_id).update(
        method='=HYPERLINK("http://example.invalid","x")'
    )
    text = client.get(
        f"/api/v1/tracks/{track.slug}/leaderboard/", {"format": "csv", "entries": "all"}
    ).content.decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert any(row["method"].startswith("'=HYPERLINK(") for row in rows)
    assert not any(row["method"].startswith("=") for row in rows)
