"""A track's phase: until its end (``Track.closes_at``) boards rank on the public split of the test
cases; at the end the final ranking on the private split is published (``publish_final_ranking``,
run by the reconciler's passes once the end has passed). Whatever the phase, participants and
visitors see per-case results of the public split only, and the private split's scores only once
they are the final ranking (``shown_result``); maintainers see everything. See
``harness.scoring.splits``."""

from __future__ import annotations

import copy
import logging

from django.db import transaction
from django.utils import timezone

from harness.entry.summary import ResultSummary, split_of
from harness.scoring.splits import PRIVATE, PUBLIC
from leaderboard.submissions.models import Evaluation, EvaluationVersion
from leaderboard.tracks import ranking
from leaderboard.tracks.models import Track

logger = logging.getLogger(__name__)


def shown_result(result: dict, track: Track, *, staff: bool) -> dict:
    """``result`` as a viewer may see it. Maintainers: all of it. Everyone else: per-case rows
    (and test case ids) of the public split only — none for a document without splits — and
    the summary and per-class means of the split the track ranks on (the public one during the
    phase, the private one once the final ranking is published); the private split's figures
    only then, without its case ids."""
    if staff:
        return result
    public = split_of(result, PUBLIC)
    ranked = split_of(result, track.ranked_split)
    visible = set(public.get("case_ids", ()))
    shown = copy.deepcopy({k: v for k, v in result.items() if k != "splits"})
    for key in ("cases", "case_costs"):
        shown[key] = [c for c in shown.get(key, []) if c["case_id"] in visible]
    if "track" in shown:
        info = shown["track"]
        info["test_cases"] = [c for c in info.get("test_cases", []) if c in visible]
    if ranked:
        shown["per_class"] = copy.deepcopy(ranked["per_class"])
        shown["summary"] |= copy.deepcopy(ranked["summary"])
    if public:
        shown["splits"] = {PUBLIC: copy.deepcopy(public)}
        if track.ranked_split == PRIVATE and (private := split_of(result, PRIVATE)):
            figures = {k: v for k, v in private.items() if k != "case_ids"}
            shown["splits"][PRIVATE] = copy.deepcopy(figures)
    return shown


def publish_final_ranking(track: Track) -> int:
    """Rank the track on its private split from now on: every stored score (latest and earlier
    versions, so boards as of any time agree) is recomputed from its result document; returns
    the number of rows rewritten."""
    rewritten = 0
    with transaction.atomic():
        locked = Track.objects.select_for_update().get(pk=track.pk)
        if locked.ranked_split == PRIVATE:
            return 0
        locked.ranked_split = PRIVATE
        locked.save(update_fields=["ranked_split"])
        for model in (Evaluation, EvaluationVersion):
            for row in model.objects.filter(track=locked):
                columns = ResultSummary.of(row.result, PRIVATE).columns()
                model.objects.filter(pk=row.pk).update(**columns)
                rewritten += 1
        ranking.refresh(locked)
    track.ranked_split = PRIVATE
    logger.info("track %s: final ranking on the private split published", track.slug)
    return rewritten


def publish_due(now=None) -> list[str]:
    """Publish the final ranking of every track whose phase has ended; their slugs."""
    now = now or timezone.now()
    due = Track.objects.filter(closes_at__lte=now, ranked_split=PUBLIC)
    published = []
    for track in due:
        publish_final_ranking(track)
        published.append(track.slug)
    return published
