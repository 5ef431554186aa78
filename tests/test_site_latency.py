"""One latency per entry, from one protocol: every latency a board shows (page, API, CSV) and its
"× faster" come from the same interleaved FP32/entry pairs, × faster = FP32 latency / entry
latency with an interval around it; the FP32 row shows the FP32 side of its pairs; simulated
entries carry no latency anywhere."""

import csv
import importlib
import io
import re

import pytest
from django.urls import reverse
from leaderboard_fixtures import site_storage, tiny_checkpoints, tiny_tracks
from rest_framework.test import APIClient

from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Evaluation, Status
from leaderboard.tracks.seeding import create_track, queue_baselines, queue_reference

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]
LATENCY_FIELDS = (
    "latency_ms",
    "fp32_latency_ms",
    "x_faster",
    "x_faster_ci_low",
    "x_faster_ci_high",
)


def _evaluated(track) -> None:
    for submission in [queue_reference(track), *queue_baselines(track)]:
        assert pipeline.run(submission.pk) == Status.DONE


def _api_rows(track) -> list[dict]:
    body = APIClient().get(f"/api/v1/tracks/{track.slug}/leaderboard/").json()
    return [body["reference"], *body["results"]]


def _csv_rows(track) -> list[dict]:
    text = APIClient().get(f"/api/v1/tracks/{track.slug}/leaderboard/?format=csv")
    return list(csv.DictReader(io.StringIO(text.content.decode())))


@pytest.fixture
def ort_board(tiny_tracks):
    """The tiny model's INT8 ONNX Runtime track with its FP32 reference row and baselines."""
    w8a8 = tiny_tracks["w8a8"]
    track = create_track(
        w8a8.dataset, w8a8.reference_model, weight_bits=8, activation_bits=8,
        backend="onnxruntime-cpu",
    )  # fmt: skip
    _evaluated(track)
    return track


@pytest.mark.slow
def test_every_rows_latency_and_x_faster_come_from_the_same_pairs(ort_board, client):
    evaluations = list(Evaluation.objects.filter(track=ort_board))
    assert len(evaluations) >= 2  # the FP32 reference and at least one INT8 baseline
    for e in evaluations:
        protocol = e.result["efficiency"]["latency_protocol"]
        assert e.fp32_latency_ms == protocol["fp32"]["median_ms"]
        if e.submission.kind == "fp32":  # its own row: the FP32 side of its pairs, 1x
            assert (e.latency_ms, e.x_faster) == (e.fp32_latency_ms, 1.0)
            assert e.x_faster_ci_low is None
            continue
        assert e.latency_ms == protocol["entry"]["median_ms"]
        assert e.x_faster == pytest.approx(e.fp32_latency_ms / e.latency_ms, rel=1e-12)
        assert e.x_faster_ci_low <= e.x_faster <= e.x_faster_ci_high
    for row in _api_rows(ort_board) + [
        {k: (float(v) if v else None) for k, v in r.items() if k in LATENCY_FIELDS}
        for r in _csv_rows(ort_board)
    ]:
        assert row["x_faster"] == pytest.approx(row["fp32_latency_ms"] / row["latency_ms"])
        if row["x_faster_ci_low"] is not None:
            assert row["x_faster_ci_low"] <= row["x_faster"] <= row["x_faster_ci_high"]
    page = client.get(reverse("track", args=[ort_board.slug])).content.decode()
    cells = re.findall(
        r'title="FP32 ([\d.]+) ms / entry ([\d.]+) ms, the same pairs">([\d.]+)', page
    )
    assert len(cells) == len(evaluations) - 1  # every ranked row
    for fp32_ms, entry_ms, shown in cells:  # one decimal each: the ratio within their rounding
        low = (float(fp32_ms) - 0.05) / (float(entry_ms) + 0.05)
        high = (float(fp32_ms) + 0.05) / (float(entry_ms) - 0.05)
        assert low - 0.005 <= float(shown) <= high + 0.005


def test_a_simulated_track_carries_no_latency_on_any_page_or_export(tiny_tracks, client):
    track = tiny_tracks["w8a8"]
    reference = queue_reference(track)
    assert pipeline.run(reference.pk) == Status.DONE
    (baseline, *_) = queue_baselines(track)
    assert pipeline.run(baseline.pk) == Status.DONE
    for e in Evaluation.objects.filter(track=track):
        assert all(getattr(e, field) is None for field in LATENCY_FIELDS)
        detail = client.get(reverse("submission", args=[e.submission_id])).content.decode()
        assert 'id="latency"' not in detail and "ms per volume" not in detail
    for row in _api_rows(track):
        assert all(row[field] is None for field in LATENCY_FIELDS)
    for row in _csv_rows(track):
        assert all(row[field] == "" for field in LATENCY_FIELDS)
    board = client.get(reverse("track", args=[track.slug])).content.decode()
    assert "latency (ms/vol)" not in board and "× faster (95% CI)" not in board


def test_stored_results_get_their_latency_from_the_protocol_on_migration(tiny_tracks):
    from django.apps import apps

    migration = importlib.import_module(
        "leaderboard.submissions.migrations.0007_evaluation_fp32_latency_from_the_paired_protocol"
    )
    track = tiny_tracks["w8a8"]
    (baseline, *_) = queue_baselines(track)
    assert pipeline.run(baseline.pk) == Status.DONE
    old_protocol = {  # written before: medians of every call, speed-up of the fastest calls
        "fp32": {"median_ms": 300.0}, "entry": {"median_ms": 200.0},
        "speedup": {"median": 1.9, "ci95": [1.8, 1.9]},
    }  # fmt: skip
    evaluation = Evaluation.objects.get(submission=baseline)
    Evaluation.objects.filter(pk=evaluation.pk).update(latency_ms=5.0, x_faster=1.9)
    simulated = Evaluation.objects.get(pk=evaluation.pk)
    migration.latency_from_the_protocol(apps, None)
    simulated.refresh_from_db()
    assert all(getattr(simulated, field) is None for field in LATENCY_FIELDS)

    result = simulated.result | {"efficiency": {"latency_protocol": old_protocol}}
    Evaluation.objects.filter(pk=evaluation.pk).update(result=result)
    migration.latency_from_the_protocol(apps, None)
    migrated = Evaluation.objects.get(pk=evaluation.pk)
    assert (migrated.latency_ms, migrated.fp32_latency_ms) == (200.0, 300.0)
    assert migrated.x_faster == pytest.approx(1.5)  # the ratio of the latencies shown
    assert migrated.x_faster_ci_low is None  # that interval was of another statistic
