"""Hostile requests against the site's web side (issue 24), every input generated here: the
``as_of`` extremes, Django's request-size refusals on every route (400 with the reason: JSON
under ``/api/``, a page elsewhere), the visibility of hidden and disqualified entries, throttles
a client cannot escape (spoofed X-Forwarded-For, the web form, sign-ups). Each test
checks the database as well as the response."""

from __future__ import annotations

import contextlib
import io
import json
import re
import select
import shutil
import socket
import struct
import tempfile
import time
import zipfile
from pathlib import Path

import onnx
import psutil
import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from leaderboard_fixtures import checkpoint_zip, site_storage, tiny_checkpoints, tiny_tracks
from leaderboard_services import TINY_TRACK, live_site, sign_up_and_create_token, submit, wait_done
from onnx import TensorProto, helper

from harness.artifacts.onnx.verify import (
    OnnxInterface,
    OnnxVerificationError,
    PrecisionLimits,
    verify_onnx,
)
from harness.artifacts.uploads import (
    ZIP_ENTRY_LIMIT,
    UploadError,
    check_checkpoint_zip,
    check_onnx_upload,
    check_zip_entry_count,
)
from leaderboard.accounts.models import ApiToken
from leaderboard.middleware import ANONYMOUS_BODY_BYTES
from leaderboard.submissions import stages
from leaderboard.submissions.models import Evaluation, EvaluationVersion, Kind, Status, Submission

__all__ = ["site_storage", "tiny_checkpoints", "tiny_tracks"]

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
        "cancel-submission": f"/submissions/{pk}/cancel",
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
        "api-cancel": f"/api/v1/submissions/{pk}/cancel/",
        "api-root": "/api/",
        "api-root-v1": "/api/v1/",
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


# ---- zips counted before they are read -----------------------------------------------------

_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_END = struct.Struct("<4s4H2LH")
_DOS_DATE_1980 = 0x21
_DIRECTORY_ATTRIBUTES = (0o40755 << 16) | 0x10


def write_folder_zip(out, entries: int, *, declared: int | None = None) -> None:
    """A zip of ``entries`` empty folder entries written to the file ``out`` record by record
    (ZIP64 end records, so any count; ``declared``: the count the end records claim, if not
    the true one) — what Python's zipfile reads, never held whole in memory here."""
    start = out.tell()
    with tempfile.TemporaryFile() as central:
        for i in range(entries):
            name = b"d%07d/" % i
            offset = out.tell() - start
            out.write(
                _LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, _DOS_DATE_1980, 0, 0, 0, len(name), 0)
            )
            out.write(name)
            central.write(_CENTRAL.pack(b"PK\x01\x02", 20, 20, 0, 0, 0, _DOS_DATE_1980, 0, 0, 0,
                          len(name), 0, 0, 0, 0, _DIRECTORY_ATTRIBUTES, offset))  # fmt: skip
            central.write(name)
        cd_offset, cd_size = out.tell() - start, central.tell()
        central.seek(0)
        shutil.copyfileobj(central, out)
    count = entries if declared is None else declared
    record_offset = out.tell() - start
    out.write(_ZIP64_END.pack(b"PK\x06\x06", _ZIP64_END.size - 12, 45, 45, 0, 0, count, count,
                              cd_size, cd_offset))  # fmt: skip
    out.write(_ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, record_offset, 1))
    out.write(_END.pack(b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


def folder_zip(entries: int, **options) -> bytes:
    buffer = io.BytesIO()
    write_folder_zip(buffer, entries, **options)
    return buffer.getvalue()


def test_the_generated_folder_zip_is_one_python_reads():
    with zipfile.ZipFile(io.BytesIO(folder_zip(3))) as archive:
        assert archive.namelist() == ["d0000000/", "d0000001/", "d0000002/"]
        assert all(info.is_dir() for info in archive.infolist())


@pytest.mark.parametrize(
    "entries, declared", [(ZIP_ENTRY_LIMIT + 1, None), (5000, 2)], ids=["over", "lying count"]
)
def test_a_zip_listing_more_entries_than_a_checkpoint_holds_is_refused(entries, declared):
    data = folder_zip(entries, declared=declared)
    with pytest.raises(UploadError, match=f"the zip lists more than {ZIP_ENTRY_LIMIT} entries"):
        check_checkpoint_zip(io.BytesIO(data), len(data), 2**30)


def test_a_checkpoint_zip_within_the_entry_limit_is_counted_exactly(tiny_checkpoints):
    data = checkpoint_zip(tiny_checkpoints["w8a8"], folder="ckpt")
    assert check_zip_entry_count(io.BytesIO(data), len(data)) == 2
    check_checkpoint_zip(io.BytesIO(data), len(data), 2**30)


# ---- the live site: what the web process reads and keeps ----------------------------------

TOO_MANY_FOLDERS = 3_000_000  # the issue's zip: 283 MB of folder entries
WEB_RSS_GROWTH_LIMIT = 100 * 2**20
UNREAD_BODY_LIMIT = 10 * 2**20
ANONYMOUS_BODY = 2**30
OVERSIZED_BODY = 700 * 2**20  # over the 512 MiB artifact limit (+ 8 MiB of form)
BOUNDARY = "medquant-hostile-boundary"
RESULTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "hostile"


@pytest.fixture(scope="module")
def live(tiny_track, tmp_path_factory):
    """The tiny track served by gunicorn with a Celery worker; ``token``: a participant's."""
    var = tmp_path_factory.mktemp("hostile_web_var")
    with live_site(*tiny_track, var, "sqla+sqlite", 100) as site:
        _, site.token = sign_up_and_create_token(site, "mallory")
        site.var = var
        yield site


def _web_workers(live) -> list[psutil.Process]:
    return psutil.Process(live.procs[1].pid).children(recursive=True)


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _multipart_file(path: Path, fields: dict[str, str], write_file) -> None:
    """A multipart/form-data body on disk: ``fields`` and one ``artifact`` file whose bytes
    ``write_file(out)`` writes."""
    with open(path, "wb") as out:
        for name, value in fields.items():
            out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                      f"{value}\r\n".encode())  # fmt: skip
        part = 'name="artifact"; filename="ckpt.zip"\r\nContent-Type: application/zip'
        out.write(f"--{BOUNDARY}\r\nContent-Disposition: form-data; {part}\r\n\r\n".encode())
        write_file(out)
        out.write(f"\r\n--{BOUNDARY}--\r\n".encode())


def _media_files(live) -> set[Path]:
    return {p for p in (live.var / "media").rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.services
def test_a_zip_of_3_million_folders_is_refused_with_little_web_memory(live, tmp_path):
    body = tmp_path / "body"
    fields = {"track": TINY_TRACK, "kind": "checkpoint", "method": "3M folders"}
    _multipart_file(body, fields, lambda out: write_folder_zip(out, TOO_MANY_FOLDERS))
    workers = _web_workers(live)
    before = {}
    for worker in workers:  # reset each worker's peak RSS (VmHWM) to its current RSS
        Path(f"/proc/{worker.pid}/clear_refs").write_text("5")
        before[worker.pid] = _status_kib(worker.pid, "VmRSS")
    media = _media_files(live)
    with open(body, "rb") as data:
        response = requests.post(
            f"{live.url}/api/v1/submissions/", data=data, timeout=300,
            headers={"Authorization": f"Token {live.token}",
                     "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )  # fmt: skip
    growth = max(_status_kib(pid, "VmHWM") - rss for pid, rss in before.items())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "web_rss_growth_3M_folder_zip.txt").write_text(
        f"{growth / 2**20:.1f} MiB for a {body.stat().st_size / 2**20:.0f} MiB request\n"
    )
    assert response.status_code == 400, response.text[:500]
    message = response.json()["error"]["message"]
    assert f"the zip lists more than {ZIP_ENTRY_LIMIT} entries" in message
    assert growth <= WEB_RSS_GROWTH_LIMIT, f"web RSS grew {growth / 2**20:.0f} MiB"
    assert not [s for s in _my_submissions(live) if s["method"] == "3M folders"]
    assert _media_files(live) == media


def _my_submissions(live) -> list[dict]:
    headers = {"Authorization": f"Token {live.token}"}
    return requests.get(f"{live.url}/api/v1/submissions/", headers=headers).json()["results"]


def send_declared_body(live, path: str, declared: int, headers: dict[str, str]):
    """POST ``declared`` bytes to ``path`` over a raw socket — a well-formed multipart body
    whose one file part is zeros, so a server that parses it spools them all — as fast as the
    server takes them, until it answers or closes; (bytes the server accepted — an upper bound
    on what it read —, the first line of its answer or "")."""
    host, port = live.url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {declared}",
             f"Content-Type: multipart/form-data; boundary={BOUNDARY}"]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in headers.items()]
    part = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="artifact"; '
            f'filename="big.zip"\r\nContent-Type: application/zip\r\n\r\n').encode()  # fmt: skip
    zeros, sent, answer = bytes(64 * 1024), 0, b""
    pending = part + zeros  # the body opens the file part, then zeros
    deadline = time.monotonic() + 120
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.setblocking(False)
        while sent < declared and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 5)
            if readable:
                with contextlib.suppress(OSError):
                    answer = sock.recv(65536)
                break
            if writable:
                try:
                    taken = sock.send(pending[: declared - sent])
                except OSError:  # reset: the server closed without reading the rest
                    break
                sent, pending = sent + taken, pending[taken:] or zeros
    return sent, answer.split(b"\r\n", 1)[0].decode()


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize(
    "who, path, declared, status",
    [
        ("anonymous", "/api/v1/submissions/", ANONYMOUS_BODY, 401),
        ("self-made CSRF cookie", "/submit/", ANONYMOUS_BODY, 403),
        ("token", "/api/v1/submissions/", OVERSIZED_BODY, 413),
    ],
)
def test_a_body_the_site_will_not_take_is_refused_before_it_is_read(
    live, who, path, declared, status
):
    cookie = "a" * 32
    headers = {
        "anonymous": {},
        "self-made CSRF cookie": {"Cookie": f"csrftoken={cookie}", "X-CSRFToken": cookie},
        "token": {"Authorization": f"Token {live.token}"},
    }[who]
    count = len(_my_submissions(live))
    started = time.monotonic()
    sent, answer = send_declared_body(live, path, declared, headers)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "unread_bodies.txt", "a") as out:
        out.write(f"{who} {path} declared {declared / 2**20:.0f} MiB: the server accepted "
                  f"{sent / 2**20:.2f} MiB, answered {answer!r} in "
                  f"{time.monotonic() - started:.2f} s\n")  # fmt: skip
    assert sent < UNREAD_BODY_LIMIT, f"the server took {sent / 2**20:.0f} MiB"
    assert answer.startswith(f"HTTP/1.1 {status}"), answer
    assert len(_my_submissions(live)) == count


@pytest.mark.slow
@pytest.mark.services
def test_a_rejected_uploads_file_is_deleted_from_the_media_folder(live, tiny_checkpoints, tmp_path):
    ckpt = Path(shutil.copytree(tiny_checkpoints["w8a8"], tmp_path / "ckpt"))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    (ckpt / "manifest.json").write_text(json.dumps(manifest | {"format": "pickle"}))
    media = _media_files(live)
    created = submit(live, live.token, ckpt, "only the worker reads the format")
    assert created.status_code == 201, created.text
    pk = created.json()["id"]
    done = wait_done(live, live.token, pk)
    assert done["status"] == "rejected" and "unknown checkpoint format" in done["error"], done
    assert _media_files(live) == media
    stored = live.manage(
        "shell", "-c",
        f"from leaderboard.submissions.models import Submission as S; "
        f"s = S.objects.get(pk={pk}); print(repr(s.artifact.name), s.artifact_sha256 != '')",
    )  # fmt: skip
    assert stored.strip().splitlines()[-1].split() == ["''", "True"]


@pytest.mark.parametrize("path, status", [("/api/v1/submissions/", 401), ("/submit/", 403)])
def test_an_anonymous_upload_is_refused_with_the_reason_and_small_forms_still_pass(
    client, track, path, status
):
    upload = {"track": track.slug, "kind": "checkpoint", "method": "anonymous",
              "artifact": io.BytesIO(bytes(ANONYMOUS_BODY_BYTES))}  # fmt: skip
    response = client.post(path, upload)
    assert response.status_code == status, response.content[:300]
    text = response.content.decode()
    assert "uploads need an account: log in, or send your API token" in text
    if path.startswith("/api/"):
        assert response.json()["error"]["code"] == "not_authenticated"
    signup = {"username": "newcomer", "password1": "Sup3r-secret-pw",
              "password2": "Sup3r-secret-pw"}  # fmt: skip
    assert client.post("/signup/", signup).status_code == 302
    assert not Submission.objects.exists()
    assert User.objects.filter(username="newcomer").exists()


def test_an_upload_with_a_revoked_token_is_refused_unread_with_the_tokens_reason(
    client, track, users
):
    row, raw = ApiToken.issue(users["owner"], "old")
    row.revoke()
    upload = {"track": track.slug, "kind": "checkpoint", "method": "revoked",
              "artifact": io.BytesIO(bytes(ANONYMOUS_BODY_BYTES))}  # fmt: skip
    response = client.post(
        "/api/v1/submissions/", upload, headers={"Authorization": f"Token {raw}"}
    )
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    assert message.startswith("invalid token: this token was revoked; uploads need an account")
    assert not Submission.objects.exists()


# ---- ONNX external data and the worker's paths ---------------------------------------------

ONNX_INTERFACE = OnnxInterface("image", (1, 8, 8, 8), "logits", (2, 8, 8, 8))
ONNX_LIMITS = PrecisionLimits(weight_bits=8, activation_bits=8)
HIDDEN_LABEL = "demo/dataset/labelsTr/case_000.nii.gz"  # a path that exists on a worker


def _external(name: str, dtype: int = TensorProto.FLOAT) -> TensorProto:
    tensor = TensorProto(name=name, data_type=dtype, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", HIDDEN_LABEL), ("offset", "0"), ("length", "16")):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _inline(name: str, dtype: int = TensorProto.FLOAT) -> TensorProto:
    return helper.make_tensor(name, dtype, [4], [0, 1, 2, 3])


def _sparse(values: TensorProto, indices: TensorProto) -> onnx.SparseTensorProto:
    return helper.make_sparse_tensor(values, indices, [8])


def _external_data_models() -> dict[str, onnx.ModelProto]:
    """A valid two-channel graph with one tensor whose data lies in ``HIDDEN_LABEL``, in each
    place the ONNX format lets a tensor sit."""
    made = {}
    places = ["initializer", "sparse initializer values", "sparse initializer indices",
              "Constant value", "Constant sparse_value", "training-info initializer"]  # fmt: skip
    for place in places:
        nodes = [helper.make_node("Concat", ["image", "image"], ["logits"], axis=1)]
        graph = helper.make_graph(
            nodes, "hidden-label",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, 8, 8, 8])],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        graph = model.graph  # (make_model copies it)
        if place == "initializer":
            graph.initializer.append(_external("w"))
        elif place.startswith("sparse initializer"):
            values, indices = _inline("s"), _inline("s_idx", TensorProto.INT64)
            values = _external("s") if place.endswith("values") else values
            indices = (
                _external("s_idx", TensorProto.INT64) if place.endswith("indices") else indices
            )
            graph.sparse_initializer.append(_sparse(values, indices))
        elif place == "Constant value":
            graph.node.append(helper.make_node("Constant", [], ["c"], value=_external("c")))
        elif place == "Constant sparse_value":
            sparse = _sparse(_inline("c"), _external("c_idx", TensorProto.INT64))
            graph.node.append(helper.make_node("Constant", [], ["c"], sparse_value=sparse))
        else:
            init = helper.make_graph([], "init", [], [], initializer=[_external("t")])
            model.training_info.add().initialization.CopyFrom(init)
        made[place] = model
    return made


@pytest.mark.parametrize("place", list(_external_data_models()))
def test_onnx_external_data_is_refused_wherever_the_tensor_sits_naming_no_worker_path(
    tmp_path, place
):
    data = _external_data_models()[place].SerializeToString()
    expected = f"references external data file {HIDDEN_LABEL!r}"
    with pytest.raises(UploadError, match=re.escape(expected)):  # the site, at upload
        check_onnx_upload(io.BytesIO(data), "model.onnx", len(data), 2**30)
    path = tmp_path / "work" / "model.onnx"  # the worker, on its copy
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(OnnxVerificationError, match=re.escape(expected)) as refused:
        verify_onnx(path, ONNX_INTERFACE, ONNX_LIMITS)
    assert str(tmp_path) not in str(refused.value)


def _validating(track, user) -> Submission:
    submission = Submission.objects.create(
        track=track, user=user, kind=Kind.ONNX, method="m", status=Status.VALIDATING
    )
    submission.artifact.save("model.onnx", ContentFile(b"onnx bytes"), save=True)
    return submission


def test_a_rejection_reason_and_log_carry_no_worker_path(
    track, users, settings, django_capture_on_commit_callbacks
):
    submission = _validating(track, users["owner"])
    stored = Path(submission.artifact.path)
    work = Path(settings.MEDQUANT_WORK_DIR) / "tmpa1b2c3"
    engine = f"[ONNXRuntimeError] : Load model from {work}/model.onnx failed: bad graph"
    log = f"attempt 1\nunpacked into {work}\nscratch {tempfile.gettempdir()}/tmpzz/x.bin"
    with django_capture_on_commit_callbacks(execute=True):
        stages.advance(submission.pk, Status.REJECTED, error=engine, log=log)
    submission.refresh_from_db()
    assert submission.error == (
        "[ONNXRuntimeError] : Load model from <work>/tmpa1b2c3/model.onnx failed: bad graph"
    )
    for text in (submission.error, submission.log):
        for folder in (settings.MEDQUANT_WORK_DIR, settings.MEDIA_ROOT, tempfile.gettempdir()):
            assert not re.search(re.escape(str(folder)) + r"(?![\w.-])", text), (folder, text)
    assert "<tmp>/tmpzz/x.bin" in submission.log
    # the rejected upload's file is gone, its digest stays
    assert submission.artifact.name == "" and not stored.exists()


def test_a_failure_message_carries_no_worker_path(track, users, settings):
    submission = _validating(track, users["owner"])
    stages.fail(submission.pk, f"internal error reading {settings.MEDIA_ROOT}/submissions/x")
    submission.refresh_from_db()
    assert submission.status == Status.FAILED
    assert submission.error == "internal error reading <media>/submissions/x"
    assert str(settings.MEDIA_ROOT) not in submission.log
