"""History: every evaluation of a submission is kept as a version, the board ranks the latest,
a board renders as it stood at a date (``?as_of=``), and hidden or disqualified entries stay
visible to their owner and the maintainers with the reason."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_tracks

from leaderboard.submissions import pipeline
from leaderboard.submissions.curation import reevaluate
from leaderboard.submissions.models import EvaluationVersion, Status, Submission
from leaderboard.tracks import ranking
from leaderboard.tracks.seeding import queue_baselines

__all__ = ["site_storage", "tiny_tracks"]


@pytest.fixture
def two_rtn(tiny_tracks):
    """The per-tensor and per-channel RTN baselines of the tiny W8A8 track, evaluated."""
    track = tiny_tracks["w8a8"]
    queue_baselines(track)
    chosen = Submission.objects.filter(
        track=track, reference_method="rtn", scheme__in=["w8a8-per-tensor", "w8a8-per-channel"]
    ).order_by("scheme")
    for submission in chosen:
        pipeline.run(submission.pk)
    channel, tensor = chosen
    return track, tensor, channel


def test_a_reevaluated_entry_keeps_both_versions_and_the_board_ranks_the_latest(
    client, two_rtn, django_capture_on_commit_callbacks
):
    track, tensor, _ = two_rtn
    first = tensor.evaluation
    with django_capture_on_commit_callbacks():
        reevaluate([tensor])
    tensor.refresh_from_db()
    assert (tensor.status, tensor.attempts) == (Status.QUEUED, 0)
    assert tensor.versions.count() == 1  # the old result stays until the new one exists
    assert tensor.pk in {e.submission_id for e in ranking.board(track, best_per_team=False)}
    pipeline.run(tensor.pk)
    versions = list(tensor.versions.order_by("version"))
    assert [v.version for v in versions] == [1, 2]
    assert versions[0].result == first.result
    assert versions[1].created_at > versions[0].created_at
    tensor.refresh_from_db()
    assert tensor.evaluation.created_at == versions[1].created_at  # the board's row: the latest
    page = client.get(reverse("submission", args=[tensor.pk])).content.decode()
    history = page[page.index('id="versions"') :]
    assert history.count("<tr><td>") == 2 and "2 (latest)" in history


def test_as_of_a_date_before_a_submission_omits_it(client, two_rtn):
    track, tensor, channel = two_rtn
    earlier = timezone.now() - timedelta(days=3)
    Submission.objects.filter(pk=tensor.pk).update(created_at=earlier)
    EvaluationVersion.objects.filter(submission=tensor).update(created_at=earlier)
    ranking.refresh(track)
    day_after = (earlier + timedelta(days=1)).date().isoformat()
    page = client.get(reverse("track", args=[track.slug]), {"as_of": day_after}).content.decode()
    assert 'id="as-of"' in page
    board = page[
        page.index('id="leaderboard"') : page.index("</table>", page.index('id="leaderboard"'))
    ]
    assert f'value="{tensor.pk}"' in board and f'value="{channel.pk}"' not in board
    now = client.get(reverse("track", args=[track.slug])).content.decode()
    assert f'value="{channel.pk}"' in now and 'id="as-of"' not in now
    api = client.get(reverse("api-leaderboard", args=[track.slug]), {"as_of": day_after}).json()
    assert [(r["submission"], r["rank"]) for r in api["results"]] == [(tensor.pk, 1)]
    bad = client.get(reverse("track", args=[track.slug]), {"as_of": "last week"})
    assert bad.status_code == 400 and "is not a date" in bad.content.decode()
    response = client.get(reverse("api-leaderboard", args=[track.slug]), {"as_of": "x"})
    assert response.status_code == 400 and "as_of" in response.json()["error"]["message"]


def test_as_of_ranks_each_entry_by_its_result_at_that_time(two_rtn):
    track, tensor, channel = two_rtn
    then = timezone.now()
    later = EvaluationVersion.objects.get(submission=tensor)
    later.pk, later.version, later.mean_dsc = None, 2, 1.0  # a re-evaluation after ``then``
    later.created_at = then + timedelta(hours=1)
    later.save()
    assert [v.submission_id for v in ranking.board_as_of(track, then)] == [
        e.submission_id for e in ranking.board(track)
    ]
    assert ranking.board_as_of(track, then + timedelta(hours=2))[0].submission_id == tensor.pk


def test_hidden_and_disqualified_entries_stay_visible_to_owner_and_maintainers_with_the_reason(
    client, admin_client, two_rtn, django_user_model
):
    track, tensor, channel = two_rtn
    owner = django_user_model.objects.create_user("olga", password="pw-olga-123")
    Submission.objects.filter(pk=tensor.pk).update(user=owner, hidden=True,
                                                   public_reason="duplicate upload")  # fmt: skip
    Submission.objects.filter(pk=channel.pk).update(disqualified=True, public_reason="test labels")
    ranking.refresh(track)
    on_board = {e.submission_id for e in ranking.board(track, best_per_team=False)}
    assert tensor.pk not in on_board and channel.pk not in on_board
    assert client.get(reverse("submission", args=[tensor.pk])).status_code == 404
    client.force_login(owner)
    page = client.get(reverse("submission", args=[tensor.pk])).content.decode()
    assert "Hidden from the board: duplicate upload" in page
    track_page = client.get(reverse("track", args=[track.slug])).content.decode()
    off = track_page[track_page.index('id="off-board"') :]
    assert "duplicate upload" in off and "test labels" not in off
    staff_page = admin_client.get(reverse("track", args=[track.slug])).content.decode()
    off = staff_page[staff_page.index('id="off-board"') :]
    assert "duplicate upload" in off and "test labels" in off and "disqualified" in off
