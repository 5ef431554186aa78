"""Checks every request passes before any view (or the CSRF check) reads it."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from rest_framework.exceptions import AuthenticationFailed

from leaderboard.accounts.authentication import ApiTokenAuthentication
from leaderboard.request_errors import API_PREFIX, error_body

ANONYMOUS_BODY_BYTES = 64 * 1024
"""Largest request body taken from a client that is neither signed in nor sends a valid API
token: the log-in and sign-up forms are a few hundred bytes; uploads need an account."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def declared_length(request: HttpRequest) -> int:
    """The body length the client declared (``Content-Length``; 0 when absent or not a number,
    which is how much of the body Django then reads)."""
    try:
        return max(0, int(request.META.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


def _unauthenticated(request: HttpRequest) -> str | None:
    """None when the request comes from a signed-in user or carries a valid API token, else
    why it is anonymous (a bad token's own reason)."""
    if request.user.is_authenticated:
        return None
    try:
        if ApiTokenAuthentication().authenticate(request) is not None:
            return None
    except AuthenticationFailed as error:
        return f"{error.detail}; uploads need an account"
    return "uploads need an account: log in, or send your API token (Authorization: Token …)"


def _refusal(request: HttpRequest, status: int, code: str, reason: str) -> HttpResponse:
    if request.path.startswith(API_PREFIX):
        response = JsonResponse(error_body(status, code, reason), status=status)
        if status == 401:
            response["WWW-Authenticate"] = ApiTokenAuthentication.keyword
        return response
    page = render_to_string("400.html", {"reason": reason, "status": status}, request=request)
    return HttpResponse(page, status=status)


class RequestLimitsMiddleware:
    """Before anything reads the request: the query string is parsed, so one over Django's
    parameter limit is a 400 with the reason on every route (``request_errors.bad_request``);
    a body is refused unread (nothing spooled to memory or disk) when it comes from a client
    neither signed in nor holding a valid API token and its declared length is over
    ``ANONYMOUS_BODY_BYTES`` (401 under /api/, 403 on pages), or when its declared length is
    over ``MEDQUANT_MAX_REQUEST_BYTES`` (413)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.GET  # noqa: B018 (raises TooManyFieldsSent; Django answers it with handler400)
        if request.method in BODY_METHODS:
            refusal = self._body_refusal(request)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    def _body_refusal(self, request: HttpRequest) -> HttpResponse | None:
        length, limit = declared_length(request), settings.MEDQUANT_MAX_REQUEST_BYTES
        anonymous = _unauthenticated(request) if length > ANONYMOUS_BODY_BYTES else None
        if anonymous is not None:
            reason = (
                f"{anonymous}; the session or token is checked before the body is read "
                f"(anonymous requests may send at most {ANONYMOUS_BODY_BYTES // 1024} KiB)"
            )
            status = 401 if request.path.startswith(API_PREFIX) else 403
            return _refusal(request, status, "not_authenticated", reason)
        if length > limit:
            reason = (
                f"the request body is {length / 2**20:.1f} MiB; the limit is "
                f"{limit / 2**20:.0f} MiB (the largest upload plus the form)"
            )
            return _refusal(request, 413, "request_too_large", reason)
        return None
