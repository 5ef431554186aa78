"""Per-case tables of a track's entries for challenge-style ranking: the mean per-case rank of
rank then aggregate (stored on each Evaluation when the board is re-ranked) and the bootstrap
rank uncertainty shown beside each rank (``harness.scoring.rank_analysis``; computed when the
board is rendered, and cached with it, since the rendered board is keyed on the ranking version).

Cases: those every entry was scored on (the public split's per-case results), in the first
entry's order. An entry whose result lacks a metric's per-case values (e.g. HD95 on a result older
than schema version 3) is left out of the analysis and shown without an interval.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from harness.scoring.rank_analysis import (
    RankingRule,
    RankUncertainty,
    aggregate_scores,
    rank_uncertainty,
)
from leaderboard.tracks.models import CASE_METRICS, Track

CaseRows = Iterable[tuple[int, list | None, dict | None]]
"""(pk, result cases, result splits) of the entries of one board scope."""


def ranked_cases(cases: list, splits: dict | None, split: str) -> list:
    """The cases of ``split`` (a result's ``splits`` names their ids); all of them for a result
    without splits."""
    ids = ((splits or {}).get(split) or {}).get("case_ids")
    return cases if ids is None else [c for c in cases if c["case_id"] in set(ids)]


def case_table(
    rows: CaseRows, metrics: list[tuple[str, bool]], split: str
) -> tuple[list[int], list[tuple[np.ndarray, bool]]]:
    """From (pk, result cases, result splits) rows: the pks that have every metric on every
    shared case of ``split``, and per metric (values[entries, cases], higher is better)."""
    usable: list[tuple[int, dict]] = []
    for pk, all_cases, splits in rows:
        if not all_cases:
            continue
        cases = ranked_cases(all_cases, splits, split)
        by_id = {c["case_id"]: c for c in cases}
        if all(f"mean_{key}" in c and c[f"mean_{key}"] is not None for c in cases
               for key, _ in metrics):  # fmt: skip
            usable.append((pk, by_id))
    if not usable:
        return [], []
    shared = [c for c in usable[0][1] if all(c in by_id for _, by_id in usable)]
    if not shared:
        return [], []
    tables = [
        (np.array([[by_id[c][f"mean_{key}"] for c in shared] for _, by_id in usable]), higher)
        for key, higher in metrics
    ]
    return [pk for pk, _ in usable], tables


def aggregate_ranks(track: Track, rows: CaseRows) -> dict[int, float]:
    """pk → mean per-case rank (rank then aggregate) of the entries in ``rows``, on the cases of
    the split the track ranks on."""
    pks, tables = case_table(rows, track.case_metrics(), track.ranked_split)
    if not pks:
        return {}
    scores, _ = aggregate_scores(tables, RankingRule.RANK_THEN_AGGREGATE)
    return dict(zip(pks, scores.tolist(), strict=True))


def board_uncertainty(track: Track, rows: CaseRows) -> dict:
    """The bootstrap rank analysis of the entries in ``rows`` (one board scope): ``entries``
    maps pk → {interval, p_best, tied}; ``tau`` is the median Kendall's τ, ``samples`` and
    ``cases`` what it rests on. Empty with fewer than two entries or no shared case."""
    metrics = track.case_metrics()
    if track.ranking_metric not in CASE_METRICS:  # e.g. size: nothing to resample
        return {}
    pks, tables = case_table(rows, metrics, track.ranked_split)
    if len(pks) < 2:
        return {}
    result: RankUncertainty = rank_uncertainty(tables, track.ranking_rule, track.seed)
    entries = {
        pk: {"interval": interval, "p_best": p_best, "tied": tied, "bootstrap_rank": rank}
        for pk, interval, p_best, tied, rank in zip(
            pks, result.interval, result.p_best, result.tied_with_leader, result.ranks,
            strict=True,
        )
    }  # fmt: skip
    return {
        "entries": entries,
        "tau": result.kendall_tau_median,
        "samples": result.samples,
        "cases": result.cases,
    }
