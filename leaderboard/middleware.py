"""Checks every request passes before any view (or the CSRF check) reads it."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse


class RequestLimitsMiddleware:
    """Parses the query string up front, so that one over Django's parameter limit is a 400
    with the reason on every route (``request_errors.bad_request``), not only on the routes
    that happen to read it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.GET  # noqa: B018 (raises TooManyFieldsSent; Django answers it with handler400)
        return self.get_response(request)
