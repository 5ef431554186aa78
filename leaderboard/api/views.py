"""REST API views (function views, as the site's pages)."""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.http import Http404, HttpResponse
from django.urls import reverse
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.decorators import (
    api_view,
    parser_classes,
    permission_classes,
    renderer_classes,
    throttle_classes,
)
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from harness.backends import backend_names
from leaderboard.api.renderers import CSVRenderer
from leaderboard.api.serializers import (
    ErrorSerializer,
    LeaderboardRowSerializer,
    PaginatedLeaderboard,
    PaginatedSubmissions,
    PaginatedTracks,
    SubmissionSerializer,
    SubmitSerializer,
    TrackSerializer,
)
from leaderboard.submissions.intake import accept
from leaderboard.submissions.metadata import metadata
from leaderboard.submissions.models import Status, Submission
from leaderboard.submissions.queueing import cancel
from leaderboard.throttles import SubmitThrottle
from leaderboard.tracks import compare, ranking
from leaderboard.tracks.models import Track
from leaderboard.tracks.phases import shown_result
from leaderboard.tracks.views import (
    leaderboard_options,
    parse_as_of,
    query_digest,
    with_uncertainty,
)


class TrackFilter(filters.FilterSet):
    dataset = filters.CharFilter(field_name="dataset__slug")
    model = filters.CharFilter(field_name="reference_model__slug")

    class Meta:
        model = Track
        fields = ["backend", "weight_bits", "activation_bits"]


def _paginated(request, items, serializer_class) -> Response:
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(items, request)
    return paginator.get_paginated_response(serializer_class(page, many=True).data)


def _track(request, slug: str) -> Track:
    track = Track.objects.select_related("dataset", "reference_model").filter(slug=slug).first()
    if track is None or (not track.is_public and not request.user.is_staff):
        raise Http404(f"no track {slug!r}")
    return track


@extend_schema(
    parameters=[
        OpenApiParameter("dataset", str, description="dataset slug"),
        OpenApiParameter("model", str, description="reference model slug"),
        OpenApiParameter("backend", str, enum=list(backend_names())),
        OpenApiParameter("weight_bits", int),
        OpenApiParameter("activation_bits", int),
    ],
    responses={200: PaginatedTracks, 400: ErrorSerializer},
    operation_id="tracks_list",
    summary="List public tracks",
)
@api_view(["GET"])
def track_list(request):
    """Public tracks; filter by dataset, model, backend, weight_bits, activation_bits."""
    tracks = Track.objects.public().select_related("dataset", "reference_model")
    tracks = TrackFilter(request.query_params, queryset=tracks).qs
    return _paginated(request, tracks, TrackSerializer)


@extend_schema(
    responses={200: TrackSerializer, 404: ErrorSerializer},
    operation_id="tracks_retrieve",
    summary="One track's settings",
)
@api_view(["GET"])
def track_detail(request, slug: str):
    """A public track: precision, backend, budget, ranking rule and limits."""
    return Response(TrackSerializer(_track(request, slug)).data)


@extend_schema(
    parameters=[
        OpenApiParameter("entries", str, enum=["best", "all"], description="best per team"),
        OpenApiParameter("granularity", str),
        OpenApiParameter("method", str, description="substring of the method name"),
        OpenApiParameter("baselines", str, enum=["include", "exclude", "only"]),
        OpenApiParameter("gate", str, enum=["pass"], description="pass: passing entries only"),
        OpenApiParameter("sort", str, description="column, '-' prefix for descending"),
        OpenApiParameter("format", str, enum=["json", "csv"], description="csv: every row"),
        OpenApiParameter(
            "as_of", str, description="the board as it stood then: YYYY-MM-DD or ISO date-time"
        ),
    ],
    responses={200: PaginatedLeaderboard, 404: ErrorSerializer},
    operation_id="leaderboard_retrieve",
    summary="A track's ranked entries (JSON or CSV)",
)
@api_view(["GET"])
@renderer_classes([JSONRenderer, BrowsableAPIRenderer, CSVRenderer])
def leaderboard(request, slug: str):
    """Ranked entries of a track (JSON, paginated, with the unranked FP32 ``reference`` row; or
    CSV, the FP32 reference row first, then all ranked rows). JSON and CSV bodies are cached as
    rendered bytes until the ranks change."""
    renderer = request.accepted_renderer
    csv = renderer.format == "csv"
    exported = renderer.format in EXPORTED_FORMATS
    params = request.query_params
    version = ranking.board_version(slug) if exported else None
    key = ranking.versioned_key(
        f"api:{renderer.format}", request.get_host(), version, query_digest(params)
    )
    cached = cache.get(key) if version is not None else None
    if cached is not None:
        return _exported(cached, renderer, slug, csv)
    track = _track(request, slug)
    options = leaderboard_options(params)
    as_of = parse_as_of(params.get("as_of", ""))
    if as_of is None:
        rows, reference = ranking.board(track, **options), ranking.reference_row(track)
    else:
        rows = ranking.board_as_of(track, as_of, **options)
        reference = ranking.reference_row_as_of(track, as_of)
    if as_of is None:
        rows = with_uncertainty(track, rows, options["best_per_team"])
    if reference is not None:
        reference.rank = reference.same_as = None
    fp32 = [] if reference is None else [LeaderboardRowSerializer(reference).data]
    if csv:
        data = fp32 + list(LeaderboardRowSerializer(rows, many=True).data)
    else:
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(rows, request)
        data = paginator.get_paginated_response(LeaderboardRowSerializer(page, many=True).data).data
        data["reference"] = fp32[0] if fp32 else None
        data["compare"] = reverse("api-compare", args=[track.slug]) + "?ids=ID&ids=ID"
    if not exported:
        return Response(data)
    context = {"request": request, "header": list(LeaderboardRowSerializer().fields)}
    content = renderer.render(data, renderer.media_type, context)
    content = content.encode() if isinstance(content, str) else content
    if version is not None:
        cache.set(key, content, settings.BOARD_CACHE_SECONDS)
    return _exported(content, renderer, track.slug, csv)


EXPORTED_FORMATS = ("json", "csv")
"""Formats whose rendered bytes are cached (the browsable API is rendered per request)."""


def _exported(content: bytes, renderer, slug: str, csv: bool) -> HttpResponse:
    response = HttpResponse(content, content_type=f"{renderer.media_type}; charset=utf-8")
    if csv:
        response["Content-Disposition"] = f'attachment; filename="{slug}.csv"'
    return response


@extend_schema(
    parameters=[
        OpenApiParameter(
            "ids", int, many=True, required=True,
            description=f"{compare.MIN_ENTRIES} to {compare.MAX_ENTRIES} submission ids; the "
            "first is the reference of the differences",
        )
    ],
    responses={200: dict, 400: ErrorSerializer, 404: ErrorSerializer},
    operation_id="entries_compare",
    summary="Two to four entries side by side",
)  # fmt: skip
@api_view(["GET"])
def compare_entries(request, slug: str):
    """Per-class and per-case DSC/NSD of two to four entries side by side, differences to the
    first, and the paired-bootstrap 95% CI of each mean-DSC difference over the test cases
    (``resolved`` when it excludes 0)."""
    track = _track(request, slug)
    ids = compare.parse_ids(request.query_params.getlist("ids"))
    return Response(
        compare.comparison(
            track, compare.comparable(track, ids, request.user), staff=request.user.is_staff
        )
    )


def _visible(request, pk: int) -> Submission:
    """Submission ``pk`` if the viewer may see it: their own, any for staff, else only a finished
    entry that is neither hidden nor disqualified."""
    mine = Q(user=request.user) if request.user.is_authenticated else Q(pk__in=[])
    public = Q(status=Status.DONE, hidden=False, disqualified=False)
    queryset = Submission.objects.select_related("track", "team", "user", "evaluation")
    submission = queryset.filter(Q(pk=pk) & (mine | public)).first()
    if submission is None and request.user.is_staff:
        submission = queryset.filter(pk=pk).first()
    if submission is None:
        raise Http404(f"no submission {pk}")
    return submission


@extend_schema(
    methods=["POST"],
    request={"multipart/form-data": SubmitSerializer},
    responses={201: SubmissionSerializer, 400: ErrorSerializer, 401: ErrorSerializer,
               429: ErrorSerializer},
    operation_id="submissions_create", summary="Submit a quantized model in one call",
)  # fmt: skip
@extend_schema(
    methods=["GET"], responses=PaginatedSubmissions, operation_id="submissions_list",
    summary="Your submissions",
)  # fmt: skip
@api_view(["GET", "POST"])
@parser_classes([MultiPartParser, FormParser])
@throttle_classes([AnonRateThrottle, UserRateThrottle, SubmitThrottle])
def submissions(request):
    """GET: your submissions. POST: submit in one multipart call (needs a token)."""
    if request.method == "GET":
        if not request.user.is_authenticated:
            return _paginated(request, Submission.objects.none(), SubmissionSerializer)
        mine = Submission.objects.filter(user=request.user).select_related("track", "evaluation")
        return _paginated(request, mine, SubmissionSerializer)
    serializer = SubmitSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    submission = accept(
        request.user,
        track=data["track"],
        kind=data["kind"],
        method=data["method"],
        description=data["description"],
        paper_url=data["paper_url"],
        code_url=data["code_url"],
        archive=data.get("artifact"),
        manifest=data.get("manifest"),
        weights=data.get("weights"),
        image=data["image"],
        metadata=metadata(data["hyperparameters"], data["calibration_cases"]),
    )
    return Response(SubmissionSerializer(submission).data, status=status.HTTP_201_CREATED)


@extend_schema(
    responses={200: SubmissionSerializer, 404: ErrorSerializer},
    operation_id="submissions_retrieve",
    summary="A submission's status, standing and scores",
)
@api_view(["GET"])
def submission_detail(request, pk: int):
    """Status and summary of one submission (yours, or any finished public one)."""
    return Response(SubmissionSerializer(_visible(request, pk)).data)


@extend_schema(
    request=None,
    responses={200: SubmissionSerializer, 401: ErrorSerializer, 404: ErrorSerializer,
               409: ErrorSerializer},
    operation_id="submissions_cancel", summary="Cancel a queued submission of yours",
)  # fmt: skip
@api_view(["POST"])
@permission_classes([IsAuthenticated])
def cancel_submission(request, pk: int):
    """Cancel your queued submission (a cancelled one does not count against the quota); 409
    once a worker has started it."""
    submission = Submission.objects.filter(pk=pk, user=request.user).first()
    if submission is None:
        raise Http404(f"no submission {pk} of yours")
    if not cancel(pk):
        submission.refresh_from_db()
        return Response(
            {"error": {"status": 409, "code": "not_queued",
                       "message": f"submission {pk} is {submission.status}: only a queued "
                                  "submission can be cancelled"}},
            status=status.HTTP_409_CONFLICT,
        )  # fmt: skip
    return Response(SubmissionSerializer(_visible(request, pk)).data)


@extend_schema(
    responses={200: dict, 404: ErrorSerializer, 409: ErrorSerializer},
    operation_id="submissions_result",
    summary="A finished submission's result document",
)
@api_view(["GET"])
def submission_result(request, pk: int):
    """The result document (schema medquant-result, see its ``schema_version``) of a finished
    submission: per case for the public split only, summary and per class on the split the
    board ranks on (maintainers get all of it)."""
    submission = _visible(request, pk)
    if not hasattr(submission, "evaluation"):
        return Response(
            {"error": {"status": 409, "code": "not_finished",
                       "message": f"submission {pk} is {submission.status}; no result yet"}},
            status=status.HTTP_409_CONFLICT,
        )  # fmt: skip
    return Response(
        shown_result(submission.evaluation.result, submission.track, staff=request.user.is_staff)
    )


API_ENDPOINTS = {
    "tracks": "api-tracks",
    "submissions": "api-submissions",
    "schema": "api-schema",
    "docs": "api-docs",
}
"""The entry points the API root lists (the rest hang off tracks and submissions)."""


@extend_schema(exclude=True)
@api_view(["GET"])
def api_root(request):
    """The API's entry points, with the templates of the per-track and per-submission ones."""
    endpoints = {
        name: request.build_absolute_uri(reverse(url)) for name, url in API_ENDPOINTS.items()
    }
    tracks, submissions_url = endpoints["tracks"], endpoints["submissions"]
    return Response(
        {
            "version": "v1",
            "endpoints": endpoints
            | {
                "track": tracks + "{slug}/",
                "leaderboard": tracks + "{slug}/leaderboard/",
                "compare": tracks + "{slug}/compare/?ids={id}&ids={id}",
                "submission": submissions_url + "{id}/",
                "result": submissions_url + "{id}/result/",
                "cancel": submissions_url + "{id}/cancel/",
            },
            "authentication": "Authorization: Token <your token> (create one at /tokens/)",
        }
    )
