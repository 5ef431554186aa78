"""What is derived from ranks is cached until the ranks change: the whole track page for
visitors without an account, the leaderboard JSON and CSV as rendered bytes; a new result shows
at once, and signed-in users' pages are never served from the anonymous cache."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_tracks

from leaderboard.submissions.models import Evaluation, Kind, Status, Submission
from leaderboard.tracks import ranking

__all__ = ["site_storage", "tiny_tracks"]


def add_entry(track, user, method: str, dsc: float) -> Submission:
    submission = Submission.objects.create(track=track, user=user, kind=Kind.CHECKPOINT,
                                           method=method, status=Status.DONE)  # fmt: skip
    Evaluation.objects.create(
        submission=submission, track=track, result={"per_class": {}}, mean_dsc=dsc, mean_nsd=dsc,
        dsc_drop_pct=0.0, dsc_ci_low=dsc, dsc_ci_high=dsc, fp32_mean_dsc=0.9, gate_passed=True,
        weight_bits=8, activation_bits=8, granularity="per-channel", created_at=timezone.now(),
    )  # fmt: skip
    ranking.refresh(track)
    return submission


@pytest.fixture
def board(tiny_tracks, django_user_model):
    track = tiny_tracks["w8a8"]
    user = django_user_model.objects.create_user("carol", password="pw-carol-123")
    add_entry(track, user, "first entry", 0.8)
    return track, user


def test_anonymous_track_page_is_served_whole_from_cache_until_the_ranks_change(client, board):
    track, user = board
    url = reverse("track", args=[track.slug])
    first = client.get(url).content
    with CaptureQueriesContext(connection) as queries:
        assert client.get(url).content == first
    assert len(queries) == 1  # when the track and its siblings were last ranked
    add_entry(track, user, "second entry", 0.85)
    assert b"second entry" in client.get(url).content
    client.force_login(user)
    assert b"Log out carol" in client.get(url).content  # never the anonymous copy


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_exports_are_cached_as_bytes_and_follow_a_new_result(client, board, fmt):
    track, user = board
    url = reverse("api-leaderboard", args=[track.slug])
    first = client.get(url, {"format": fmt})
    assert first.status_code == 200 and b"first entry" in first.content
    with CaptureQueriesContext(connection) as queries:
        again = client.get(url, {"format": fmt})
    assert again.content == first.content and again["Content-Type"] == first["Content-Type"]
    assert len(queries) == 1  # when the track was last ranked
    add_entry(track, user, "second entry", 0.85)
    assert b"second entry" in client.get(url, {"format": fmt}).content
    if fmt == "csv":
        assert first["Content-Disposition"] == f'attachment; filename="{track.slug}.csv"'
