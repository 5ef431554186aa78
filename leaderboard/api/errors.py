"""One error body for every API failure:
``{"error": {"status": 400, "code": "invalid", "message": "...", "fields": {...}}}``."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from leaderboard.request_errors import REQUEST_SIZE_ERRORS, request_size_reason


def _first_message(detail) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            text = _first_message(value)
            return text if field in ("non_field_errors", "detail") else f"{field}: {text}"
    if isinstance(detail, list):
        return _first_message(detail[0]) if detail else ""
    return str(detail)


logger = logging.getLogger(__name__)
INTERNAL_ERROR_MESSAGE = (
    "internal server error: the maintainers have the details in the server log; please retry "
    "later or report it"
)


class RequestTooLarge(exceptions.APIException):
    """Django refused the request's size (too many fields or files, a field too large)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "request_too_large"


def error_body_handler(exc, context):
    """DRF's handler with the one error body; Django's request-size errors are 400 with their
    reason; an exception DRF does not know is an internal error: logged with its traceback and
    answered 500 with the same body (never the HTML error page)."""
    if isinstance(exc, REQUEST_SIZE_ERRORS):
        exc = RequestTooLarge(request_size_reason(exc))
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
    response = exception_handler(exc, context)
    if response is None:
        request = context.get("request")
        logger.error(
            "internal error answering %s %s",
            getattr(request, "method", "?"),
            getattr(request, "path", "?"),
            exc_info=exc,
        )
        body = {"status": 500, "code": "server_error", "message": INTERNAL_ERROR_MESSAGE}
        return Response({"error": body}, status=status.HTTP_500_INTERNAL_SERVER_ERROR)
    detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
    codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
    body = {
        "status": response.status_code,
        "code": codes if isinstance(codes, str) else "invalid",
        "message": _first_message(detail),
    }
    if isinstance(detail, dict) and response.status_code == status.HTTP_400_BAD_REQUEST:
        body["fields"] = {k: [str(m) for m in v] if isinstance(v, list) else [str(v)]
                          for k, v in detail.items()}  # fmt: skip
    return Response({"error": body}, status=response.status_code, headers=response.headers)
