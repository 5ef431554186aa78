"""Requests Django refuses before a view sees them (too many query parameters or form fields,
too many files, a form field over the in-memory limit) and other bad requests: answered 400
with the reason, as the API's JSON error body under ``/api/`` and as a page elsewhere (Django's
default is an empty "Bad Request" page, and DRF turns these errors into 500s)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

REQUEST_SIZE_ERRORS = (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)
"""Django's refusals of a request's size (subclasses of SuspiciousOperation)."""
API_PREFIX = "/api/"
BAD_REQUEST_REASON = "the request is malformed or not allowed here"
"""What any other bad request (a disallowed host, a forged session…) is told: its details are
logged (``django.security``), not echoed."""


def request_size_reason(error: Exception) -> str:
    """The limit ``error`` (one of ``REQUEST_SIZE_ERRORS``) names, in the submitter's words."""
    if isinstance(error, TooManyFieldsSent):
        return (
            f"too many query parameters or form fields: the limit is "
            f"{settings.DATA_UPLOAD_MAX_NUMBER_FIELDS}"
        )
    if isinstance(error, TooManyFilesSent):
        return (
            f"too many files in one request: the limit is {settings.DATA_UPLOAD_MAX_NUMBER_FILES}"
        )
    return (
        f"a form field (other than a file) is larger than "
        f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE / 2**20:g} MiB; upload large data as a file"
    )


def error_body(status: int, code: str, message: str) -> dict:
    """The API's one error body (see ``leaderboard.api.errors``)."""
    return {"error": {"status": status, "code": code, "message": message}}


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler400``: a request Django refused (SuspiciousOperation) — JSON under ``/api/``,
    a page with the reason elsewhere; only request-size errors name their reason."""
    if isinstance(exception, REQUEST_SIZE_ERRORS):
        code, reason = "request_too_large", request_size_reason(exception)
    else:
        code, reason = "bad_request", BAD_REQUEST_REASON
    if request.path.startswith(API_PREFIX):
        return JsonResponse(error_body(400, code, reason), status=400)
    page = render_to_string("400.html", {"reason": reason}, request=request)
    return HttpResponse(page, status=400)
