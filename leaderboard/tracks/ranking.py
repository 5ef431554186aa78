"""The ranked leaderboard of a track.

Only verified, visible entries with a result are ranked: finished (``done``) ones, and those being
re-evaluated, with their latest result until the new one is stored; the FP32 reference row is shown
beside them, never ranked. Order: the track's primary metric in its natural direction, then its
tie-breakers; under the rank-then-aggregate rule, first the mean per-case rank among the ranked
entries (``leaderboard.tracks.uncertainty.aggregate_ranks``, stored as ``aggregate_rank`` by
``refresh``, recomputed from the versions standing then by ``board_as_of``); entries equal on
every key share a rank (competition ranking: 1, 1, 3), and so do
entries with the same verified weights (artifact digest): a later one is marked "same as" the
first. Best-per-team ranks each team's (or user's) top entry; every
baseline is its own entrant. Ranks are computed when a result is stored or an entry is curated
(``refresh``) and kept on the Evaluation rows, so that reading a page of the board is one indexed
query; filters select rows after ranking, so ranks never depend on them.

``board_as_of`` ranks a board as it stood at a moment from the kept results
(``EvaluationVersion``): each entry submitted by then with its latest result by then, under the
same rules; hiding and disqualification apply as they are now (their history is not kept).
"""

from __future__ import annotations

import hashlib

from django.db import connection, transaction
from django.db.models import F, Max, OuterRef, QuerySet, Subquery
from django.utils import timezone

from harness.scoring.rank_analysis import RankingRule
from leaderboard.submissions.models import (
    PENDING,
    Evaluation,
    EvaluationVersion,
    Kind,
    Status,
    Submission,
)
from leaderboard.tracks.models import Track
from leaderboard.tracks.uncertainty import aggregate_ranks

COLUMN_FIELDS = {"created_at": "submission__created_at"}
SORTABLE = {
    "rank", "method", "mean_dsc", "mean_nsd", "mean_hd95", "dsc_drop_pct", "dsc_ci_low", "size_mb",
    "latency_ms", "bits_per_weight", "x_smaller", "x_faster", "created_at",
}  # fmt: skip
SORT_FIELDS = {"method": "submission__method", "created_at": "submission__created_at"}
RANKED_STATUSES = (Status.DONE, *PENDING)
"""A pending entry with a result is being re-evaluated: its latest result stands meanwhile."""
IDENTITY_FIELDS = (
    "pk", "submission_id", "submission__is_baseline", "submission__team_id",
    "submission__user_id", "artifact_digest",
)  # fmt: skip


AGGREGATE = "aggregate_rank"
"""Under rank then aggregate, the mean per-case rank (lower first) orders before every key."""


def _aggregated(track: Track) -> bool:
    return track.ranking_rule == RankingRule.RANK_THEN_AGGREGATE


def _keys(track: Track) -> list[str]:
    """The columns that rank ``track``'s entries, in order."""
    keys = [COLUMN_FIELDS.get(c, c) for c, _ in track.ranking_keys()]
    return [AGGREGATE, *keys] if _aggregated(track) else keys


def _order(track: Track, *, stored: bool = True) -> list:
    """ORDER BY of ``track``'s ranking (``stored``: with the stored mean per-case rank)."""
    order = [F(AGGREGATE).asc(nulls_last=True)] if stored and _aggregated(track) else []
    for column, descending in track.ranking_keys():
        expr = F(COLUMN_FIELDS.get(column, column))
        order.append(expr.desc(nulls_last=True) if descending else expr.asc(nulls_last=True))
    return order


def _visible(rows: QuerySet) -> QuerySet:
    return rows.filter(
        submission__status__in=RANKED_STATUSES,
        submission__hidden=False,
        submission__disqualified=False,
    ).exclude(submission__kind=Kind.FP32)


def rankable(track: Track) -> QuerySet[Evaluation]:
    """Evaluations of ``track`` that may be ranked, in ranking order."""
    return _visible(Evaluation.objects.filter(track=track)).order_by(*_order(track), "pk")


def reference_row(track: Track) -> Evaluation | None:
    """The FP32 reference row of ``track`` (evaluated on its backend), if computed."""
    return (
        Evaluation.objects.filter(track=track, submission__kind=Kind.FP32)
        .select_related("submission")
        .order_by("-pk")
        .first()
    )


def compute(track: Track) -> dict[int, tuple[int, int | None, int | None]]:
    """Evaluation pk → (rank among all entries, rank among best-per-entrant entries or None, pk
    of the earlier entry with the same verified weights or None)."""
    return assign_ranks(rankable(track).values_list(*IDENTITY_FIELDS, *_keys(track)))


def assign_ranks(rows) -> dict[int, tuple[int, int | None, int | None]]:
    """Ranks of ``rows`` — (pk, submission id, is baseline, team id, user id, artifact digest,
    *ranking key values) in ranking order — as ``compute`` returns them."""
    ranks: dict[int, tuple[int, int | None, int | None]] = {}
    seen: set[tuple] = set()
    first_with: dict[str, tuple[int, int, int | None]] = {}  # digest → (pk, rank, best rank)
    state = {"all": [0, 0, None], "best": [0, 0, None]}  # [count, current rank, previous key]

    def next_rank(name: str, key: tuple) -> int:
        count, current, previous = state[name]
        count += 1
        if key != previous:
            current = count
        state[name] = [count, current, key]
        return current

    for pk, submission_id, baseline, team_id, user_id, digest, *values in rows:
        key = tuple(values)
        entrant = ("baseline", submission_id) if baseline else (
            ("team", team_id) if team_id else ("user", user_id)
        )  # fmt: skip
        if digest and digest in first_with:
            original, rank, best_rank = first_with[digest]
            best = None
            if entrant not in seen:
                seen.add(entrant)
                if best_rank is None:
                    best = next_rank("best", key)
                else:
                    best, state["best"][0] = best_rank, state["best"][0] + 1
            state["all"][0] += 1  # it takes a place, not a new rank
            ranks[pk] = (rank, best, original)
            continue
        best = None
        if entrant not in seen:
            seen.add(entrant)
            best = next_rank("best", key)
        rank = next_rank("all", key)
        if digest:
            first_with[digest] = (pk, rank, best)
        ranks[pk] = (rank, best, None)
    return ranks


def refresh(track: Track) -> None:
    """Recompute and store the ranks of every evaluation of ``track``."""
    with transaction.atomic():
        Track.objects.select_for_update().get(pk=track.pk)
        _store_aggregate_ranks(track)
        ranks = compute(track)
        changed = []
        fields = ["rank_all", "rank_best", "duplicate_of_id"]
        for evaluation in Evaluation.objects.filter(track=track).only(*fields):
            new = ranks.get(evaluation.pk, (None, None, None))
            if (evaluation.rank_all, evaluation.rank_best, evaluation.duplicate_of_id) != new:
                evaluation.rank_all, evaluation.rank_best, evaluation.duplicate_of_id = new
                changed.append(evaluation)
        Evaluation.objects.bulk_update(changed, fields, batch_size=1000)
        Track.objects.filter(pk=track.pk).update(ranked_at=timezone.now())


def _store_aggregate_ranks(track: Track) -> None:
    """Under rank then aggregate, each rankable entry's mean per-case rank among them (None
    elsewhere, and for every entry under mean then rank)."""
    scores = {}
    if _aggregated(track):
        scores = aggregate_ranks(
            track, rankable(track).order_by().values_list("pk", "result__cases", "result__splits")
        )
    changed = []
    for evaluation in Evaluation.objects.filter(track=track).only(AGGREGATE):
        new = scores.get(evaluation.pk)
        if evaluation.aggregate_rank != new:
            evaluation.aggregate_rank = new
            changed.append(evaluation)
    Evaluation.objects.bulk_update(changed, [AGGREGATE], batch_size=1000)


def cache_key(track: Track, scope: str, params, *, with_siblings: bool = False) -> str:
    """Cache key of a rendering of the board: changes whenever the ranks are recomputed, and with
    ``with_siblings`` also when those of the same model, dataset and backend are (the page's
    baseline grid spans them)."""
    ranked_at = track.ranked_at
    if with_siblings:
        ranked_at = Track.objects.filter(
            reference_model=track.reference_model_id,
            dataset=track.dataset_id,
            backend=track.backend,
        ).aggregate(latest=Max("ranked_at"))["latest"]
    version = f"{track.created_at.timestamp()}:{ranked_at.timestamp() if ranked_at else 0}"
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"board:{scope}:{track.pk}:{version}:{hashlib.sha256(query.encode()).hexdigest()}"


BOARD_VERSION_SQL = """
    SELECT MAX(s.ranked_at), MAX(s.created_at), COUNT(s.id),
        (SELECT COUNT(*) FROM {submission} b JOIN {track} bt ON bt.id = b.track_id
            WHERE bt.slug = %s AND b.is_baseline AND b.status IN ({pending}))
    FROM {track} t JOIN {track} s ON s.id = t.id OR (%s AND s.reference_model_id =
        t.reference_model_id AND s.dataset_id = t.dataset_id AND s.backend = t.backend)
    WHERE t.slug = %s AND t.is_public
"""


def versioned_key(scope: str, *parts: object) -> str:
    """A cache key of ``scope`` for ``parts`` (versions, host, query digest): fixed length and
    safe for every cache backend."""
    return f"{scope}:{hashlib.sha256(repr(parts).encode()).hexdigest()}"


def board_version(slug: str, *, with_siblings: bool = False) -> str | None:
    """The ranking version ``cache_key`` keys on, for a public track named by ``slug``, in one
    plain query (no ORM compilation: it decides whether a cached page can be served at all);
    None when there is no such public track. It changes whenever the track (and, with
    ``with_siblings``, one of the same model, dataset and backend) is re-ranked or created, and
    whenever the number of its baselines still pending does (the page says how many)."""
    with connection.cursor() as cursor:
        cursor.execute(
            BOARD_VERSION_SQL.format(
                track=connection.ops.quote_name(Track._meta.db_table),
                submission=connection.ops.quote_name(Submission._meta.db_table),
                pending=", ".join(["%s"] * len(PENDING)),
            ),
            [slug, *PENDING, with_siblings, slug],
        )
        ranked, created, count, pending = cursor.fetchone()
    return None if not count else f"{slug}:{ranked}:{created}:{count}:{with_siblings}:{pending}"


def board(
    track: Track,
    *,
    best_per_team: bool = True,
    granularity: str = "",
    method: str = "",
    baselines: str = "include",
    gate: str = "",
    sort: str = "",
) -> QuerySet[Evaluation]:
    """Ranked evaluations (each with ``.rank`` and ``.same_as``, the rank of the earlier entry
    with the same weights), filtered by granularity, method substring, baselines (include /
    exclude / only) and gate (``pass``: passing entries only), in rank order or sorted by a
    column (``-``: desc.)."""
    field = "rank_best" if best_per_team else "rank_all"
    rows = Evaluation.objects.filter(track=track, **{f"{field}__isnull": False})
    rows = rows.annotate(rank=F(field), same_as=F(f"duplicate_of__{field}"))
    rows = rows.select_related("submission__team", "submission__user")
    rows = _filtered(rows, granularity, method, baselines, gate)
    column = sort.lstrip("-")
    if column in SORTABLE:
        expr = F(SORT_FIELDS.get(column, "rank" if column == "rank" else column))
        order = expr.desc(nulls_last=True) if sort.startswith("-") else expr.asc(nulls_last=True)
        return rows.order_by(order, "rank", "pk").defer("result")
    return rows.order_by("rank", "pk").defer("result")


def board_as_of(
    track: Track,
    when,
    *,
    best_per_team: bool = True,
    granularity: str = "",
    method: str = "",
    baselines: str = "include",
    gate: str = "",
    sort: str = "",
) -> list[EvaluationVersion]:
    """The board of ``track`` as it stood at ``when``: the latest result by then of each entry
    submitted by then (``EvaluationVersion`` rows, each with ``.rank`` and ``.same_as``), ranked
    as ``compute`` ranks and filtered as ``board`` filters, in rank order (``sort`` is not
    applied: a past board is shown as it was ranked)."""
    newest = (
        EvaluationVersion.objects.filter(submission=OuterRef("submission"), created_at__lte=when)
        .order_by("-version")
        .values("pk")[:1]
    )
    versions = _visible(
        EvaluationVersion.objects.filter(
            track=track, created_at__lte=when, submission__created_at__lte=when
        )
    ).filter(pk=Subquery(newest))
    keys = [COLUMN_FIELDS.get(c, c) for c, _ in track.ranking_keys()]
    ordered = versions.order_by(*_order(track, stored=False), "pk")
    rows = list(ordered.values_list(*IDENTITY_FIELDS, *keys))
    if _aggregated(track):  # mean per-case ranks among the versions standing then
        scores = aggregate_ranks(
            track, ordered.values_list("pk", "result__cases", "result__splits")
        )
        rows = sorted(
            ((*row[:6], scores.get(row[0]), *row[6:]) for row in rows),
            key=lambda row: (row[6] is None, row[6] or 0.0),
        )  # stable: the other keys' order is kept among equal mean ranks
    ranks = assign_ranks(rows)
    mode = 1 if best_per_team else 0
    shown = _filtered(ordered, granularity, method, baselines, gate)
    rows = []
    for version in shown.select_related("submission__team", "submission__user").defer("result"):
        rank = ranks[version.pk][mode]
        if rank is None:
            continue
        original = ranks[version.pk][2]
        version.rank = rank
        version.same_as = ranks[original][mode] if original is not None else None
        rows.append(version)
    return sorted(rows, key=lambda v: v.rank)


def reference_row_as_of(track: Track, when) -> EvaluationVersion | None:
    """The FP32 reference row of ``track`` as it stood at ``when``."""
    return (
        EvaluationVersion.objects.filter(
            track=track, submission__kind=Kind.FP32, created_at__lte=when
        )
        .select_related("submission")
        .order_by("-created_at", "-pk")
        .first()
    )


def _filtered(rows: QuerySet, granularity: str, method: str, baselines: str, gate: str):
    """``rows`` restricted by the board's filters (see ``board``)."""
    if granularity:
        rows = rows.filter(granularity=granularity)
    if method:
        rows = rows.filter(submission__method__icontains=method)
    if baselines == "exclude":
        rows = rows.filter(submission__is_baseline=False)
    elif baselines == "only":
        rows = rows.filter(submission__is_baseline=True)
    if gate == "pass":
        rows = rows.filter(gate_passed=True)
    return rows


def chart_rows(track: Track, limit: int) -> list[dict]:
    """The best-per-team board's top ``limit`` rows as plain dicts for the charts."""
    rows = Evaluation.objects.filter(track=track, rank_best__isnull=False).order_by("rank_best")
    values = rows.values_list(
        "rank_best", "submission_id", "submission__method", "submission__is_baseline",
        "submission__team__name", "submission__user__username", "mean_dsc", "size_mb",
        "latency_ms",
    )[:limit]  # fmt: skip
    return [
        {"rank": rank, "submission": pk, "method": method,
         "entrant": "baseline" if baseline else team or user or "—", "mean_dsc": dsc,
         "size_mb": size, "latency_ms": latency}
        for rank, pk, method, baseline, team, user, dsc, size, latency in values
    ]  # fmt: skip
