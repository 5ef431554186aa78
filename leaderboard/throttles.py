"""Rate limits shared by the API and the site's forms (DRF throttles, counted in the cache).

The client's address is the connection's (``REMOTE_ADDR``) unless ``MEDQUANT_TRUSTED_PROXIES``
says how many reverse proxies of ours stand in front (DRF's ``NUM_PROXIES``): only then is
``X-Forwarded-For`` read, and only the entry our nearest proxy appended, so a client cannot
choose its own address by sending the header."""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.permissions import SAFE_METHODS
from rest_framework.throttling import SimpleRateThrottle, UserRateThrottle


class SubmitThrottle(UserRateThrottle):
    """Rate of submissions (POST) per user, through the API and the web form together; reads
    are not counted."""

    scope = "submit"

    def allow_request(self, request, view) -> bool:
        return request.method in SAFE_METHODS or super().allow_request(request, view)


class SignupThrottle(SimpleRateThrottle):
    """Rate of sign-up attempts (POST) per client address."""

    scope = "signup"

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def allow_request(self, request, view) -> bool:
        return request.method in SAFE_METHODS or super().allow_request(request, view)


def refused(throttle: SimpleRateThrottle, request: HttpRequest, what: str) -> str | None:
    """None when ``request`` is within ``throttle``'s rate (and is counted), else the reason it
    is refused: what was limited, the rate, and when to retry."""
    if throttle.allow_request(request, None):
        return None
    wait = throttle.wait()
    retry = f"; retry in {wait:.0f} s" if wait is not None else ""
    return f"too many {what}: the limit is {throttle.rate}{retry}"
