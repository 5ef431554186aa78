"""Public pages: tracks grouped by dataset and model, a track's leaderboard and charts, and the
files a participant quantizes offline (FP32 model, unlabeled calibration cases)."""

from __future__ import annotations

import hashlib
import re
import tempfile
from datetime import UTC, date, datetime, time
from http import HTTPStatus
from itertools import groupby

from django.conf import settings
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Max, OuterRef, Q, Subquery
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.utils.html import format_html

from harness.cli.graph import quantize_graph_command, toolkit_recipes
from harness.data.bundle import write_calibration_bundle
from harness.data.dataset import load_dataset
from harness.errors import HarnessError
from harness.models.onnx_graph import ONNX_ARCHITECTURE
from leaderboard.submissions.intake import accepted_kinds
from leaderboard.submissions.models import PENDING, Evaluation, Kind, Submission
from leaderboard.tracks import charts, compare, ranking
from leaderboard.tracks.models import Track
from leaderboard.tracks.uncertainty import board_uncertainty

PAGE_SIZE = 100
BUNDLE_IN_MEMORY_BYTES = 64 * 2**20
"""A calibration bundle up to this size is zipped in memory, a larger one in a temporary file."""
COMPARED_ENTRIES = 5
CHART_POINTS = 1000


HOME_FILTERS = ("dataset", "model", "precision", "backend", "bits")


def _latest(rows, field: str):
    """Subquery: ``field`` of the newest of ``rows`` (filtered by the outer track)."""
    return Subquery(rows.filter(track=OuterRef("pk")).order_by("-pk").values(field)[:1])


def home_tracks(params) -> list[Track]:
    """Public tracks filtered by ``dataset`` / ``model`` (slugs), ``precision`` (``W4A4``,
    ``W8A16``: weight-only), ``backend`` and ``bits`` (weight bits), each annotated with
    ``entries`` (ranked), the leader (``leader_method``, ``leader_dsc``, ``leader_id``: rank 1
    best per team), ``fp32_dsc`` and ``last_activity`` (newest submission)."""
    tracks = Track.objects.public().select_related("dataset", "reference_model")
    if params.get("dataset"):
        tracks = tracks.filter(dataset__slug=params["dataset"])
    if params.get("model"):
        tracks = tracks.filter(reference_model__slug=params["model"])
    if params.get("backend"):
        tracks = tracks.filter(backend=params["backend"])
    bits = params.get("bits", "")
    if bits.isdigit():
        tracks = tracks.filter(weight_bits=int(bits))
    precision = PRECISION.fullmatch(params.get("precision", "").upper())
    if precision:
        weights, activations = int(precision[1]), int(precision[2])
        tracks = tracks.filter(weight_bits=weights)
        tracks = tracks.filter(activation_bits=None if activations >= FLOAT_BITS else activations)
    leaders = Evaluation.objects.filter(rank_best=1)
    fp32 = Evaluation.objects.filter(submission__kind=Kind.FP32)
    return list(
        tracks.annotate(
            entries=Subquery(
                Evaluation.objects.filter(track=OuterRef("pk"), rank_all__isnull=False)
                .order_by()
                .values("track")
                .annotate(n=Count("pk"))
                .values("n")[:1]
            ),
            leader_method=_latest(leaders, "submission__method"),
            leader_dsc=_latest(leaders, "mean_dsc"),
            leader_id=_latest(leaders, "submission_id"),
            fp32_dsc=_latest(fp32, "mean_dsc"),
            last_activity=Subquery(
                Submission.objects.filter(track=OuterRef("pk"))
                .order_by("-created_at")
                .values("created_at")[:1]
            ),
        )
    )


PRECISION = re.compile(r"W(\d+)A(\d+)")
FLOAT_BITS = 16
"""``A16`` in a precision label means float activations (a weight-only track)."""


def home(request):
    """Tracks grouped by dataset and model with their entry count, leader, FP32 DSC and last
    activity; filters by dataset, model, precision, backend (and weight bits). Cached until a
    track is re-ranked or a submission arrives."""
    params = {k: request.GET.get(k, "") for k in HOME_FILTERS}
    public = Track.objects.public()
    stamp = public.aggregate(ranked=Max("ranked_at"), newest=Max("pk"))
    newest = Submission.objects.aggregate(newest=Max("pk"))["newest"]
    key = (
        "home:" + hashlib.sha256(repr((sorted(params.items()), stamp, newest)).encode()).hexdigest()
    )

    def build() -> dict:
        tracks = home_tracks(params)
        groups = [
            (
                dataset,
                [
                    (model, list(ts))
                    for model, ts in groupby(items, key=lambda t: t.reference_model)
                ],
            )
            for dataset, items in groupby(tracks, key=lambda t: t.dataset)
        ]
        everything = list(public.select_related("dataset", "reference_model"))
        return {
            "groups": groups,
            "options": {
                "dataset": sorted({(t.dataset.slug, t.dataset.name) for t in everything}),
                "model": sorted(
                    {(t.reference_model.slug, t.reference_model.name) for t in everything}
                ),
                "precision": sorted(
                    {(t.precision_label, t.precision_label) for t in everything},
                    key=lambda p: [-int(x) for x in PRECISION.fullmatch(p[0]).groups()],
                ),
                "backend": sorted({(t.backend, t.get_backend_display()) for t in everything}),
            },
        }

    context = cache.get_or_set(key, build, settings.BOARD_CACHE_SECONDS)
    filters = [(name, choices, params[name]) for name, choices in context["options"].items()]
    return render(request, "tracks/home.html", context | {"filters": filters})


def public_track(request, slug: str) -> Track:
    track = get_object_or_404(Track.objects.select_related("dataset", "reference_model"), slug=slug)
    if not track.is_public and not request.user.is_staff:
        raise Http404("no such track")
    return track


def leaderboard_options(params) -> dict:
    """Leaderboard view options from query parameters (shared with the API)."""
    return {
        "best_per_team": params.get("entries", "best") != "all",
        "granularity": params.get("granularity", ""),
        "method": params.get("method", ""),
        "baselines": params.get("baselines", "include"),
        "gate": params.get("gate", ""),
        "sort": params.get("sort", ""),
    }


def parse_as_of(text: str) -> datetime | None:
    """The moment of ``?as_of=``, in UTC: a date (the end of that day) or an ISO date-time (UTC
    unless it names its zone; one whose UTC time falls outside years 1 to 9999, such as
    0001-01-01T00:00:00+01:00, is the earliest or latest moment there is: before every entry or
    after all of them); None when empty; a ValidationError says what is accepted."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(day, time.max, tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            {"as_of": f"{text!r} is not a date (YYYY-MM-DD) or an ISO date-time"}
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (
            datetime.min.replace(tzinfo=UTC)
            if moment.year == 1
            else datetime.max.replace(tzinfo=UTC)
        )


def board_context(track: Track, params) -> dict:
    """Everything the ranked table and the charts show (rendered once per ranking version); with
    ``as_of``, the table as it stood then (no charts)."""
    as_of = parse_as_of(params.get("as_of", ""))
    if as_of is not None:
        rows = ranking.board_as_of(track, as_of, **leaderboard_options(params))
        return {
            "track": track,
            "as_of": as_of,
            "page": Paginator(rows, PAGE_SIZE).get_page(params.get("page")),
            "reference": ranking.reference_row_as_of(track, as_of),
            "gate_percent": round(track.accuracy_gate * 100, 2),
            "granularities": sorted({r.granularity for r in rows}),
            "query": params,
            "sort_links": sort_links(params.get("sort", "")),
            "charts": {},
        }
    options = leaderboard_options(params)
    rows = ranking.board(track, **options)
    page = Paginator(rows, PAGE_SIZE).get_page(params.get("page"))
    uncertainty = rank_uncertainty_of(track, options["best_per_team"])
    for row in page:
        row.uncertainty = uncertainty.get("entries", {}).get(row.pk)
    plotted = ranking.chart_rows(track, CHART_POINTS)
    compared_ids = [int(i) for i in params.getlist("compare") if i.isdigit()]
    compared_ids = compared_ids or [r["submission"] for r in plotted[:COMPARED_ENTRIES]]
    compared = Evaluation.objects.filter(track=track, submission_id__in=compared_ids)
    ranked = Evaluation.objects.filter(track=track, rank_all__isnull=False)
    reference = ranking.reference_row(track)
    return {
        "track": track,
        "page": page,
        "reference": reference,
        "gate_percent": round(track.accuracy_gate * 100, 2),
        "uncertainty": uncertainty,
        "granularities": sorted(set(ranked.values_list("granularity", flat=True).distinct())),
        "query": params,
        "sort_links": sort_links(params.get("sort", "")),
        "charts": {
            "size": charts.dsc_versus(plotted, "size_mb", "mean DSC vs size (MB)", reference),
            "latency": (
                charts.dsc_versus(
                    plotted, "latency_ms", "mean DSC vs latency (ms/volume)", reference
                )
                if track.backend_runner.measures_latency
                else None
            ),
            "per_class": charts.per_class_dsc(list(compared.select_related("submission", "track"))),
            "grid": charts.baseline_grid(track),
        },
        "plotted": len(plotted),
    }


def rank_uncertainty_of(track: Track, best_per_team: bool) -> dict:
    """The bootstrap rank analysis of the board's scope (every entry ranked best per team, or
    every ranked entry), whatever filters or page are shown (see
    ``leaderboard.tracks.uncertainty``)."""
    field = "rank_best" if best_per_team else "rank_all"
    scope = Evaluation.objects.filter(track=track, **{f"{field}__isnull": False})
    return board_uncertainty(
        track, scope.order_by(field, "pk").values_list("pk", "result__cases", "result__splits")
    )


def with_uncertainty(track: Track, rows, best_per_team: bool) -> list:
    """``rows`` (board rows) as a list, each with ``.uncertainty`` (its rank interval, P(best)
    and tie mark; None when not analysed)."""
    entries = rank_uncertainty_of(track, best_per_team).get("entries", {})
    rows = list(rows)
    for row in rows:
        row.uncertainty = entries.get(row.pk)
    return rows


def query_digest(params) -> str:
    """A short fixed-length name of a query string's parameters (order-free)."""
    query = "&".join(f"{k}={v}" for k, v in sorted(params.lists()))
    return hashlib.sha256(query.encode()).hexdigest()


def off_board(request, track: Track) -> list[Submission]:
    """Hidden and disqualified entries of ``track`` the viewer may see with the reason: their
    own, or all of them for maintainers."""
    if not request.user.is_authenticated:
        return []
    rows = Submission.objects.filter(Q(hidden=True) | Q(disqualified=True), track=track)
    if not request.user.is_staff:
        rows = rows.filter(user=request.user)
    return list(rows.select_related("evaluation", "user", "team"))


def graph_routes(track: Track) -> dict:
    """What an ONNX track's page prints of the routes from its FP32 graph
    (``harness.cli.graph``): each peer toolkit's recipe, whether the reference is an ONNX graph
    and, for one, the ``harness quantize-graph`` line of its worked example; nothing on a
    checkpoint track."""
    if track.takes_checkpoints:
        return {}
    model = f"{track.reference_model.slug}/"
    return {
        "toolkit_recipes": toolkit_recipes(model=model),
        "graph_reference": track.reference_model.architecture == ONNX_ARCHITECTURE,
        "graph_example": quantize_graph_command(model=model),
    }


def track_detail(request, slug: str):
    """A track's page; for visitors without an account (and no pending message) the whole page
    is cached until the ranks change (it holds nothing personal), for others the board is."""
    anonymous = not request.user.is_authenticated and not get_messages(request)
    version = ranking.board_version(slug, with_siblings=True) if anonymous else None
    page_key = ranking.versioned_key(
        "anonymous-page",
        request.get_host(),
        version,  # it counts the track's pending baselines too
        query_digest(request.GET),
        settings.MEDQUANT_CONTAINERS,  # the submit form offers container uploads only if on
    )
    if version is not None and (page := cache.get(page_key)) is not None:
        return HttpResponse(page)
    track = public_track(request, slug)
    key = ranking.cache_key(track, "page", request.GET, with_siblings=True)
    board, status = cache.get(key), 200
    if board is None:
        try:
            context = board_context(track, request.GET)
        except ValidationError as error:
            message = " ".join(m for ms in error.message_dict.values() for m in ms)
            board, status = format_html('<p class="bad" id="board-error">{}</p>', message), 400
        else:
            board = render_to_string("tracks/board.html", context, request)
            cache.set(key, board, settings.BOARD_CACHE_SECONDS)
    fp32 = Evaluation.objects.filter(track=track).values_list("fp32_mean_dsc", flat=True).first()
    context = {
        "track": track,
        "board": board,
        "fp32_mean_dsc": fp32,
        "calibration_cases": cache.get_or_set(
            f"calibration:{track.pk}:{track.dataset.root}:{track.calibration_split}",
            lambda: calibration_case_ids(track),
        ),
        "model_files": track.reference_model.files(),
        "off_board": off_board(request, track),
        "baselines_pending": Submission.objects.filter(
            track=track, is_baseline=True, status__in=PENDING
        ).count(),
        "accepted_kinds": [Kind(k) for k in accepted_kinds(track)],
    } | graph_routes(track)
    response = render(request, "tracks/track.html", context, status=status)
    if version is not None and status == HTTPStatus.OK:
        cache.set(page_key, response.content, settings.BOARD_CACHE_SECONDS)
    return response


def compare_entries(request, slug: str):
    """Two to four entries of a track side by side (``?ids=1&ids=2``; see
    ``leaderboard.tracks.compare``); a bad selection is a 400 page saying what is wrong."""
    track = public_track(request, slug)
    try:
        ids = compare.parse_ids(request.GET.getlist("ids"))
        data = compare.comparison(
            track, compare.comparable(track, ids, request.user), staff=request.user.is_staff
        )
    except ValidationError as error:
        message = " ".join(m for ms in error.message_dict.values() for m in ms)
        return render(
            request, "tracks/compare.html", {"track": track, "error": message}, status=400
        )
    summary = [
        {"entry": e, "difference": d}
        for e, d in zip(data["entries"], data["mean_dsc_difference"], strict=True)
    ]
    for row in data["per_class"]:
        row["cells"] = list(
            zip(row["dsc"], row["nsd"], row["hd95"], row["dsc_difference"], strict=True)
        )
    for row in data["per_case"]:
        row["cells"] = list(zip(row["dsc"], row["nsd"], row["hd95"], strict=True))
    return render(
        request, "tracks/compare.html", {"track": track, "data": data, "summary": summary}
    )


SORT_COLUMNS = {
    "rank": False, "method": False, "mean_dsc": True, "mean_nsd": True, "mean_hd95": False,
    "dsc_drop_pct": False,
    "dsc_ci_low": True, "size_mb": False, "latency_ms": False, "bits_per_weight": False,
    "x_smaller": True, "x_faster": True, "created_at": True,
}  # fmt: skip
"""Sortable columns → whether the first click sorts descending."""


def sort_links(current: str) -> dict[str, str]:
    """The ``sort`` value each column header links to: its natural order, or reversed when the
    table is already sorted that way."""
    links = {}
    for column, descending in SORT_COLUMNS.items():
        natural = f"-{column}" if descending else column
        links[column] = (column if descending else f"-{column}") if current == natural else natural
    return links


def calibration_case_ids(track: Track) -> list[str]:
    try:
        return [c.case_id for c in load_dataset(track.dataset.path).split(track.calibration_split)]
    except HarnessError:
        return []


def model_file(request, slug: str, name: str):
    """The FP32 reference model's spec, weights or ONNX export."""
    track = public_track(request, slug)
    files = track.reference_model.files()
    if name not in files:
        raise Http404("no such file")
    return FileResponse(open(files[name], "rb"), as_attachment=True, filename=name)


def bundle_folder(track: Track) -> str:
    """Top folder of a track's calibration bundle (the ``--dataset`` of its commands)."""
    return f"{track.slug}-calibration"


def calibration_bundle(request, slug: str):
    """The track's calibration cases as one MSD-layout dataset folder, zipped (images,
    ``dataset.json``, ``splits.json``; never a label or a test case)."""
    track = public_track(request, slug)
    buffer = tempfile.SpooledTemporaryFile(max_size=BUNDLE_IN_MEMORY_BYTES)  # noqa: SIM115
    try:
        dataset = load_dataset(track.dataset.path)
        write_calibration_bundle(dataset, track.calibration_split, buffer, bundle_folder(track))
    except HarnessError as error:
        buffer.close()
        raise Http404(f"no calibration bundle for this track: {error}") from error
    buffer.seek(0)
    name = f"{bundle_folder(track)}.zip"
    return FileResponse(buffer, as_attachment=True, filename=name, content_type="application/zip")


def calibration_case(request, slug: str, case_id: str):
    """One calibration image (never a label, never a test case)."""
    track = public_track(request, slug)
    dataset = load_dataset(track.dataset.path)
    cases = {c.case_id: c for c in dataset.split(track.calibration_split)}
    if case_id not in cases or len(cases[case_id].images) != 1:
        raise Http404("not a calibration case of this track")
    path = cases[case_id].images[0]
    return FileResponse(open(path, "rb"), as_attachment=True, filename=f"{case_id}.nii.gz")
