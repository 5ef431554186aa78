"""Ranking rules: metric then tie-breakers, shared ranks, best per team, who is never ranked;
the Pareto front of the charts."""

import pytest
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_tracks

from leaderboard.accounts.models import Team
from leaderboard.submissions.models import Evaluation, Kind, Status, Submission
from leaderboard.tracks import ranking
from leaderboard.tracks.charts import pareto_front

__all__ = ["site_storage", "tiny_tracks"]


@pytest.fixture
def track(tiny_tracks):
    return tiny_tracks["w8a8"]


def entry(track, user, method, dsc, nsd=0.5, *, team=None, status=Status.DONE, **flags):
    submission = Submission.objects.create(
        track=track, user=user, team=team, kind=Kind.CHECKPOINT, method=method, status=status,
        **flags,
    )  # fmt: skip
    if status == Status.DONE:
        Evaluation.objects.create(
            submission=submission, track=track, result={}, mean_dsc=dsc, mean_nsd=nsd,
            dsc_drop_pct=0.0, dsc_ci_low=dsc, dsc_ci_high=dsc, fp32_mean_dsc=0.9,
            gate_passed=True, weight_bits=8, activation_bits=8, granularity="per-channel",
            size_mb=1.0, latency_ms=1.0, created_at=timezone.now(),
        )  # fmt: skip
    return submission


@pytest.fixture
def users(django_user_model):
    return [django_user_model.objects.create_user(f"user{i}") for i in range(4)]


def board(track, **kwargs):
    ranking.refresh(track)
    return [(e.rank, e.submission.method) for e in ranking.board(track, **kwargs)]


def test_entries_are_ordered_by_metric_then_tie_breaker_and_full_ties_share_a_rank(track, users):
    entry(track, users[0], "a", 0.80, 0.70)
    entry(track, users[1], "b", 0.85, 0.60)
    entry(track, users[2], "c", 0.80, 0.75)
    entry(track, users[3], "d", 0.80, 0.70)
    track.tie_breakers = ["-mean_nsd"]
    track.save()
    assert board(track) == [(1, "b"), (2, "c"), (3, "a"), (3, "d")]


def test_failed_hidden_disqualified_and_unfinished_entries_are_never_ranked(track, users):
    entry(track, users[0], "shown", 0.5)
    entry(track, users[1], "failed", 0.9, status=Status.FAILED)
    entry(track, users[1], "running", 0.9, status=Status.RUNNING)
    entry(track, users[2], "hidden", 0.9, hidden=True)
    entry(track, users[3], "disqualified", 0.9, disqualified=True, public_reason="test labels")
    assert board(track) == [(1, "shown")]


def test_best_per_team_keeps_each_teams_top_entry_and_all_shows_every_entry(track, users):
    team = Team.objects.create(name="lab")
    entry(track, users[0], "lab-1", 0.70, team=team)
    entry(track, users[1], "lab-2", 0.75, team=team)
    entry(track, users[2], "solo-1", 0.72)
    entry(track, users[2], "solo-2", 0.60)
    assert board(track) == [(1, "lab-2"), (2, "solo-1")]
    assert board(track, best_per_team=False) == [
        (1, "lab-2"), (2, "solo-1"), (3, "lab-1"), (4, "solo-2"),
    ]  # fmt: skip


def test_filters_and_sorting_never_change_an_entrys_rank(track, users):
    entry(track, users[0], "gptq", 0.8)
    entry(track, users[1], "rtn", 0.7, is_baseline=True)
    entry(track, users[2], "comq", 0.9)
    assert board(track, baselines="only") == [(3, "rtn")]
    assert board(track, baselines="exclude", sort="mean_dsc") == [(2, "gptq"), (1, "comq")]
    assert board(track, sort="-rank") == [(3, "rtn"), (2, "gptq"), (1, "comq")]
    assert board(track, method="CO") == [(1, "comq")]


def test_ranks_follow_curation_and_version_the_cached_board(track, users):
    first = entry(track, users[0], "first", 0.9)
    entry(track, users[1], "second", 0.8)
    ranking.refresh(track)
    track.refresh_from_db()
    key = ranking.cache_key(track, "page", {})
    first.hidden = True
    first.save()
    assert board(track) == [(1, "second")]
    track.refresh_from_db()
    assert ranking.cache_key(track, "page", {}) != key


def test_pareto_front_keeps_points_no_other_point_beats_on_both_cost_and_accuracy():
    points = [(1.0, 0.5), (2.0, 0.8), (2.5, 0.7), (3.0, 0.9), (4.0, 0.9), (0.5, 0.2)]
    assert pareto_front(points) == [(0.5, 0.2), (1.0, 0.5), (2.0, 0.8), (3.0, 0.9)]
