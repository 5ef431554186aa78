"""Hostile requests against the site's web side (issue 24), every input generated here: the
``as_of`` extremes, Django's request-size refusals on every route (400 with the reason: JSON
under ``/api/``, a page elsewhere), the visibility of hidden and disqualified entries, throttles
a client cannot escape (spoofed X-Forwarded-For, the web form, sign-ups). Each test
checks the database as well as the response."""

from __future__ import annotations

import io

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from leaderboard_fixtures import site_storage, tiny_tracks

from leaderboard.accounts.models import ApiToken
from leaderboard.submissions.models import Evaluation, EvaluationVersion, Kind, Status, Submission

__all__ = ["site_storage", "tiny_tracks"]

AS_OF_EXTREMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
TOO_MANY = 1001  # one over Django's DATA_UPLOAD_MAX_NUMBER_FIELDS default (1000)
TOO_MANY_FILES = 101  # one over DATA_UPLOAD_MAX_NUMBER_FILES (100)
TOO_LARGE_FIELD = 9 * 2**20  # over DATA_UPLOAD_MAX_MEMORY_SIZE (8 MiB)


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """The throttles count in the cache: each test starts with none used."""
    cache.clear()


@pytest.fixture
def track(tiny_tracks):
    return tiny_tracks["w8a8"]


@pytest.fixture
def users(django_user_model) -> dict[str, User]:
    make = django_user_model.objects.create_user
    return {
        "owner": make("owner", password="pw-owner-12345"),
        "other": make("other", password="pw-other-12345"),
        "staff": make("staff", password="pw-staff-12345", is_staff=True),
    }


def entry(track, user, method: str, **flags) -> Submission:
    """A finished entry with a result (``flags``: hidden, disqualified, is_baseline, …)."""
    submission = Submission.objects.create(
        track=track, user=user, kind=Kind.CHECKPOINT, method=method, status=Status.DONE, **flags
    )
    scores = dict(
        submission=submission, track=track, result={"cases": []}, mean_dsc=0.8, mean_nsd=0.7,
        dsc_drop_pct=0.0, dsc_ci_low=0.8, dsc_ci_high=0.8, fp32_mean_dsc=0.9, gate_passed=True,
        weight_bits=8, activation_bits=8, granularity="per-channel", size_mb=1.0,
        created_at=timezone.now(),
    )  # fmt: skip
    EvaluationVersion.objects.create(version=1, **scores)
    Evaluation.objects.create(**scores)
    return submission


# ---- as_of extremes ------------------------------------------------------------------------


@pytest.mark.parametrize("as_of", AS_OF_EXTREMES)
def test_as_of_at_the_ends_of_time_ranks_the_board_without_a_server_error(
    client, track, users, as_of
):
    shown = entry(track, users["owner"], "shown")
    page = client.get(f"/tracks/{track.slug}/", {"as_of": as_of})
    api = client.get(f"/api/v1/tracks/{track.slug}/leaderboard/", {"as_of": as_of})
    assert page.status_code == 200 and api.status_code == 200, (page.content, api.content)
    methods = [row["method"] for row in api.json()["results"]]
    # before year 1 in UTC nothing was submitted yet; after year 9999 everything was
    assert methods == ([] if as_of.startswith("0001") else [shown.method])
    assert Submission.objects.get(pk=shown.pk).status == Status.DONE


# ---- Django's request-size refusals ------------------------------------------------------


def _route_names(patterns, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver) and pattern.namespace != "admin":
            names |= _route_names(pattern.url_patterns, prefix)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(pattern.name)
    return names


def _site_urls(track, submission: Submission) -> dict[str, str]:
    """One URL per named route of the site (the admin's login page for the admin)."""
    slug, pk = track.slug, submission.pk
    return {
        "home": "/",
        "track": f"/tracks/{slug}/",
        "compare": f"/tracks/{slug}/compare/",
        "calibration-bundle": f"/tracks/{slug}/calibration-bundle.zip",
        "model-file": f"/tracks/{slug}/model/model.onnx",
        "calibration-case": f"/tracks/{slug}/calibration/case.nii.gz",
        "study": "/study/",
        "study-model": "/study/tiny-unet/",
        "method": "/methods/rtn/",
        "submit": "/submit/",
        "my-submissions": "/submissions/",
        "submission": f"/submissions/{pk}/",
        "baseline-artifact": f"/submissions/{pk}/artifact",
        "submission-status": f"/submissions/{pk}/status",
        "tokens": "/tokens/",
        "revoke-token": "/tokens/1/revoke",
        "signup": "/signup/",
        "login": "/login/",
        "logout": "/logout/",
        "api-tracks": "/api/v1/tracks/",
        "api-track": f"/api/v1/tracks/{slug}/",
        "api-leaderboard": f"/api/v1/tracks/{slug}/leaderboard/",
        "api-compare": f"/api/v1/tracks/{slug}/compare/",
        "api-submissions": "/api/v1/submissions/",
        "api-submission": f"/api/v1/submissions/{pk}/",
        "api-result": f"/api/v1/submissions/{pk}/result/",
        "api-schema": "/api/schema/",
        "api-docs": "/api/docs/",
        "admin": "/admin/login/",
    }


def assert_request_size_refusal(response, url: str, fragment: str) -> None:
    """400 with the reason: the API's JSON error body under /api/, a page elsewhere."""
    assert response.status_code == 400, (url, response.status_code, response.content[:300])
    if url.startswith("/api/"):
        error = response.json()["error"]
        assert (error["status"], error["code"]) == (400, "request_too_large"), (url, error)
        assert fragment in error["message"], (url, error)
    else:
        assert response["Content-Type"].startswith("text/html"), url
        assert fragment in response.content.decode(), (url, response.content[:500])


def test_the_route_list_names_every_route_of_the_site(track, users):
    urls = _site_urls(track, entry(track, users["owner"], "x"))
    assert _route_names(get_resolver().url_patterns) | {"admin"} == set(urls)


@pytest.mark.parametrize("login", [False, True], ids=["anonymous", "participant"])
def test_too_many_query_parameters_are_a_400_with_the_reason_on_every_route(
    client, track, users, login
):
    if login:
        client.force_login(users["owner"])
    submission = entry(track, users["owner"], "mine")
    query = "&".join(f"p{i}=1" for i in range(TOO_MANY))
    for url in _site_urls(track, submission).values():
        for method in (client.get, client.post):
            response = method(f"{url}?{query}")
            assert_request_size_refusal(response, url, "too many query parameters or form fields")
    assert Submission.objects.count() == 1 and User.objects.count() == len(users)


POSTED_ROUTES = ["/submit/", "/signup/", "/login/", "/tokens/", "/api/v1/submissions/",
                 "/admin/login/"]  # fmt: skip


def _oversized_bodies() -> dict[str, tuple[dict, str]]:
    return {
        "1001 fields": (
            {f"f{i}": "1" for i in range(TOO_MANY)},
            "too many query parameters or form fields: the limit is 1000",
        ),
        "101 files": (
            {"artifact": [io.BytesIO(b"x") for _ in range(TOO_MANY_FILES)]},
            "too many files in one request: the limit is 100",
        ),
        "9 MB field": ({"method": "x" * TOO_LARGE_FIELD}, "larger than 8 MiB"),
    }


@pytest.mark.parametrize("body", list(_oversized_bodies()))
@pytest.mark.parametrize("auth", ["session", "token"])
def test_an_oversized_form_is_a_400_with_the_reason_on_every_posted_route(
    client, track, users, body, auth
):
    headers, routes = {}, POSTED_ROUTES
    if auth == "session":
        client.force_login(users["owner"])
    else:  # a token authenticates API calls only (a page redirects to the login first)
        headers["Authorization"] = f"Token {ApiToken.issue(users['owner'], 'ci')[1]}"
        routes = [url for url in POSTED_ROUTES if url.startswith("/api/")]
    for url in routes:
        data, fragment = _oversized_bodies()[body]  # fresh file objects for every request
        response = client.post(url, data | {"track": track.slug}, headers=headers)
        assert_request_size_refusal(response, url, fragment)
    assert not Submission.objects.exists()
    assert User.objects.count() == len(users)
    assert ApiToken.objects.count() == (auth == "token")


# ---- hidden and disqualified entries ------------------------------------------------------


def _entry_urls(track, submission: Submission) -> list[str]:
    pk = submission.pk
    return [
        f"/submissions/{pk}/",
        f"/submissions/{pk}/status",
        f"/submissions/{pk}/artifact",
        f"/api/v1/submissions/{pk}/",
        f"/api/v1/submissions/{pk}/result/",
    ]


@pytest.mark.parametrize("flag", ["hidden", "disqualified"])
def test_a_hidden_or_disqualified_entry_and_its_artifact_are_for_its_owner_and_staff_only(
    client, track, users, flag
):
    baseline = entry(track, users["owner"], "rtn-baseline", is_baseline=True, **{flag: True})
    baseline.artifact.save("checkpoint.zip", ContentFile(b"PK-the-baseline-bytes"), save=True)
    shown = entry(track, users["other"], "shown")
    compare = f"/api/v1/tracks/{track.slug}/compare/?ids={shown.pk}&ids={baseline.pk}"
    viewers = {"anonymous": None, "other": users["other"], "owner": users["owner"],
               "staff": users["staff"]}  # fmt: skip
    for who, user in viewers.items():
        client.logout()
        if user is not None:
            client.force_login(user)
        allowed = who in ("owner", "staff")
        for url in _entry_urls(track, baseline):
            status = client.get(url).status_code
            assert status == (200 if allowed else 404), (who, url, status)
        if not allowed:  # (the stand-in results here hold no per-class table to compare)
            refused = client.get(compare)
            assert refused.status_code == 400, (who, refused.content)
            assert f"no finished entry {baseline.pk}" in refused.json()["error"]["message"]
    artifact = client.get(f"/submissions/{baseline.pk}/artifact")  # as staff
    assert b"".join(artifact.streaming_content) == b"PK-the-baseline-bytes"
    baseline.refresh_from_db()
    assert getattr(baseline, flag) and baseline.status == Status.DONE


# ---- throttles that cannot be bypassed -----------------------------------------------------


def _rate(scope: str) -> tuple[int, int]:
    """(requests, seconds) of a DRF throttle scope as the site configures it."""
    from rest_framework.throttling import SimpleRateThrottle

    rate = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][scope]
    return SimpleRateThrottle.parse_rate(None, rate)


def test_x_forwarded_for_is_ignored_unless_a_trusted_proxy_is_configured(client, track):
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == 0
    allowed, _ = _rate("anon")
    statuses = [
        client.get("/api/v1/tracks/", headers={"X-Forwarded-For": f"10.{i // 256}.{i % 256}.1"})
        .status_code
        for i in range(allowed + 5)
    ]  # fmt: skip
    assert statuses == [200] * allowed + [429] * 5
    # the refused address is the connection's: a real local client is refused too, a client
    # claiming 127.0.0.1 from elsewhere is not (the header is ignored either way)
    assert client.get("/api/v1/tracks/").status_code == 429
    elsewhere = client.get(
        "/api/v1/tracks/", REMOTE_ADDR="192.0.2.7", headers={"X-Forwarded-For": "127.0.0.1"}
    )
    assert elsewhere.status_code == 200


def test_behind_a_trusted_proxy_the_address_it_appended_is_the_clients(client, track, settings):
    settings.REST_FRAMEWORK = settings.REST_FRAMEWORK | {"NUM_PROXIES": 1}
    allowed, _ = _rate("anon")
    spoofed = [
        client.get("/api/v1/tracks/", headers={"X-Forwarded-For": f"10.0.0.{i}, 198.51.100.9"})
        .status_code
        for i in range(allowed + 1)
    ]  # fmt: skip
    assert spoofed[-1] == 429 and spoofed.count(200) == allowed
    other = client.get("/api/v1/tracks/", headers={"X-Forwarded-For": "198.51.100.10"})
    assert other.status_code == 200


def test_the_web_form_shares_the_apis_submission_throttle(client, track, users):
    token = ApiToken.issue(users["owner"], "ci")[1]
    allowed, _ = _rate("submit")
    client.force_login(users["owner"])
    form = client.post("/submit/", {"track": track.pk, "kind": "checkpoint", "method": "form"})
    assert form.status_code == 200  # counted, refused by the form's own checks
    api = [
        client.post("/api/v1/submissions/", {"track": track.slug},
                    headers={"Authorization": f"Token {token}"}).status_code
        for _ in range(allowed)
    ]  # fmt: skip
    assert api == [400] * (allowed - 1) + [429]
    refused = client.post("/submit/", {"track": track.pk, "kind": "checkpoint", "method": "m"})
    assert refused.status_code == 429
    assert "too many submissions (through the API and this form together)" in (
        refused.content.decode()
    )
    assert not Submission.objects.exists()


def test_sign_ups_are_limited_per_client_address(track):
    allowed, _ = _rate("signup")

    def sign_up(name: str, address: str, forwarded: str):
        form = {"username": name, "password1": "Sup3r-secret-pw", "password2": "Sup3r-secret-pw"}
        return Client().post(
            "/signup/", form, REMOTE_ADDR=address, headers={"X-Forwarded-For": forwarded}
        )

    made = [sign_up(f"sock{i}", "203.0.113.5", f"10.1.0.{i}").status_code for i in range(allowed)]
    assert made == [302] * allowed
    refused = sign_up("one-too-many", "203.0.113.5", "10.1.0.250")
    assert refused.status_code == 429
    assert "too many sign-ups from your address: the limit is" in refused.content.decode()
    assert sign_up("neighbour", "203.0.113.6", "10.1.0.251").status_code == 302
    names = set(User.objects.values_list("username", flat=True))
    assert "one-too-many" not in names and {"neighbour", f"sock{allowed - 1}"} <= names
