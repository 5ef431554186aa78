"""A bounded, schema-driven fuzz run of the REST API (schemathesis, in-process over WSGI): for
every operation of ``/api/schema/``, generated requests — anonymous and with a participant's
token — never get a server error, and every documented response (the paginated lists included)
matches the OpenAPI schema."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.cache import cache
from hypothesis import HealthCheck, settings
from leaderboard_fixtures import site_storage, tiny_tracks
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

__all__ = ["site_storage", "tiny_tracks"]
pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 25  # bounded: the whole run takes seconds, not minutes
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def participant_token(django_user_model) -> str:
    from leaderboard.accounts.models import ApiToken

    user = django_user_model.objects.create_user("fuzzer", password="pw-fuzzer-12345")
    return ApiToken.issue(user, "fuzz")[1]


def _site_schema():
    """The site's own schema, served in-process (the schema view reads no data)."""
    from django.core.wsgi import get_wsgi_application

    return schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


schema = _site_schema()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_generated_request_gets_a_server_error_or_an_undocumented_body(case, participant_token):
    cache.clear()  # the throttles count in the cache: the run is about errors, not rates
    case.call_and_validate(checks=CHECKS)
    case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Token {participant_token}"})
