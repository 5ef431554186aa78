"""The whole site live: gunicorn + a real Celery worker over a real broker and database, driven
over HTTP with ``requests`` and the ``harness submit`` CLI. Two stacks: the embedded one
(SQLAlchemy transport on SQLite + SQLite) and the production one (Redis + PostgreSQL, both
started here from Debian's packages)."""

import re
import subprocess
import sys

import pytest
import requests
from leaderboard_fixtures import tiny_checkpoints
from leaderboard_services import TINY_TRACK, live_site, sign_up_and_create_token, submit, wait_done

__all__ = ["tiny_checkpoints"]
pytestmark = [pytest.mark.slow, pytest.mark.services]
QUOTA = 2
TRACK = TINY_TRACK


@pytest.fixture(scope="module", params=["sqla+sqlite", "redis+postgres"])
def live(request, tiny_track, tmp_path_factory):
    var = tmp_path_factory.mktemp("live_var")
    with live_site(*tiny_track, var, request.param, QUOTA) as site:
        yield site


def test_submission_travels_from_api_through_the_worker_to_the_ranked_board(live, tiny_checkpoints):
    browser, token = sign_up_and_create_token(live, "alice")
    created = submit(live, token, tiny_checkpoints["w8a8"], "RTN per-channel (api)")
    assert created.status_code == 201, created.text

    final = wait_done(live, token, created.json()["id"])

    assert final["status"] == "done", final
    assert final["validating_at"] <= final["running_at"] <= final["scoring_at"]
    board = requests.get(f"{live.url}/api/v1/tracks/{TRACK}/leaderboard/").json()
    assert board["results"][0]["submission"] == final["id"]
    assert board["results"][0]["mean_dsc"] == final["mean_dsc"]
    page = requests.get(f"{live.url}/tracks/{TRACK}/").text
    assert "RTN per-channel (api)" in page and 'id="figure-size"' in page

    # the CLI takes the second (last) slot of the daily quota and waits for the worker
    cli = subprocess.run(
        [sys.executable, "-m", "harness.cli", "submit", "--url", live.url, "--token", token,
         "--track", TRACK, "--method", "RTN (cli)", "--checkpoint",
         str(tiny_checkpoints["w8a8"]), "--wait", "--timeout", "180"],
        capture_output=True, text=True, env=live.env,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert re.search(r"submission \d+ done: mean DSC 0\.\d{4}", cli.stdout)

    over = submit(live, token, tiny_checkpoints["w8a8"], "one too many")
    assert over.status_code == 400
    assert over.json()["error"]["message"].startswith(f"track: daily quota reached: {QUOTA} of")

    # the quota is per user: another participant still gets through
    _, other = sign_up_and_create_token(live, "bob")
    created = submit(live, other, tiny_checkpoints["w8a8"], "fine")
    assert wait_done(live, other, created.json()["id"])["status"] == "done"


@pytest.mark.parametrize(
    "token", [None, "mq_not-a-real-token"], ids=["missing token", "wrong token"]
)
def test_submissions_without_a_valid_token_are_refused(live, tiny_checkpoints, token):
    response = submit(live, token, tiny_checkpoints["w8a8"], "anonymous")
    assert response.status_code in (401, 403)
    assert response.json()["error"]["message"]


def test_a_revoked_token_is_refused(live, tiny_checkpoints):
    browser, token = sign_up_and_create_token(live, "carol")
    page = browser.get(f"{live.url}/tokens/").text
    revoke = re.search(r'action="(/tokens/\d+/revoke)"', page).group(1)
    browser.post(
        live.url + revoke,
        data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers={"Referer": live.url},
    )
    response = submit(live, token, tiny_checkpoints["w8a8"], "revoked")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid token: this token was revoked"
