"""Researchers first, live (the embedded stack of ``make run``: gunicorn, SQLAlchemy broker on
SQLite, a researchers' worker and a baselines' worker, as ``manage.py serve`` starts them): with
a track's baselines queued, researchers' submissions are evaluated at once, show their queue
position and steps while they wait, and ``harness submit --wait`` prints them."""

import re
import subprocess
import sys
import time

import pytest
import requests
from leaderboard_fixtures import tiny_checkpoints
from leaderboard_services import TINY_TRACK, live_site, sign_up_and_create_token, submit

from leaderboard.tracks.management.commands.serve import WORKERS

__all__ = ["tiny_checkpoints"]
pytestmark = [pytest.mark.slow, pytest.mark.services]
PENDING = ("queued", "validating", "running", "scoring")
EXTRA_BASELINES = 40


def _pending_baselines(site) -> int:
    out = site.manage(
        "shell", "-c",
        "from leaderboard.submissions.models import PENDING, Submission; "
        "print(Submission.objects.filter(is_baseline=True, status__in=PENDING).count())",
    )  # fmt: skip
    return int(out.split()[-1])  # after the shell's own banner


def test_make_run_serves_researchers_and_baselines_on_workers_of_their_own():
    assert [queues for queues, _ in WORKERS] == ["cpu,containers", "cpu-baselines"]


def test_researchers_submissions_do_not_wait_behind_queued_baselines(
    tiny_track, tiny_checkpoints, tmp_path
):
    with live_site(*tiny_track, tmp_path / "var", "sqla+sqlite", 5, baseline_worker=True) as site:
        site.manage("run_baselines", TINY_TRACK)
        # a demo site queues about a hundred baselines; here the RTN one is queued again many
        # times over, so that the baselines' worker is busy for minutes
        site.manage(
            "shell", "-c",
            "from leaderboard.submissions.models import Submission; "
            "from leaderboard.submissions.tasks import send; "
            "rtn = Submission.objects.filter(is_baseline=True, reference_method='rtn').first(); "
            f"[send(Submission.objects.create(track=rtn.track, kind=rtn.kind, scheme=rtn.scheme, "
            f"reference_method='rtn', method=f'RTN copy {{i}}', is_baseline=True)) "
            f"for i in range({EXTRA_BASELINES})]",
        )  # fmt: skip
        queued_baselines = _pending_baselines(site)
        assert queued_baselines >= EXTRA_BASELINES // 2  # their worker is at them already
        _, token = sign_up_and_create_token(site, "alice")
        headers = {"Authorization": f"Token {token}"}
        created = [
            submit(site, token, tiny_checkpoints["w8a8"], f"RTN {n}").json() for n in range(2)
        ]
        submitted = time.monotonic()
        seen: dict[int, set[str]] = {c["id"]: set() for c in created}
        finished: dict[int, float] = {}
        while len(finished) < len(created) and time.monotonic() - submitted < 180:
            for c in created:
                if c["id"] in finished:
                    continue
                body = requests.get(
                    f"{site.url}/api/v1/submissions/{c['id']}/", headers=headers
                ).json()
                if body["status"] in PENDING:
                    seen[c["id"]].update(body["queue"]["lines"])
                else:
                    finished[c["id"]] = time.monotonic() - submitted
                    assert body["status"] == "done", body
            time.sleep(0.1)
        assert len(finished) == 2, seen
        still_pending = _pending_baselines(site)
        # both were done while the baselines queued before them were still being computed
        assert still_pending > 0, (finished, queued_baselines)
        # the second waited behind the first (a researcher's), and said so; both reported steps
        second = seen[created[1]["id"]]
        assert any(re.fullmatch(r"queue position 1 \(1 being evaluated now\)", s) for s in second)
        steps = seen[created[0]["id"]] | second
        assert any(re.fullmatch(r"step: inferring test cases: \d of \d", s) for s in steps), steps
        assert not any("/" in s for s in steps), steps  # no worker path in what is shown

        before = _pending_baselines(site)
        page = requests.get(f"{site.url}/tracks/{TINY_TRACK}/").text
        after = _pending_baselines(site)  # the baselines' worker goes on meanwhile
        shown = re.search(r"(\d+) reference baselines?\s", page)
        assert (shown is None and after == 0) or after <= int(shown.group(1)) <= before

        # the CLI prints each change of standing while it waits
        cli = subprocess.run(
            [sys.executable, "-m", "harness.cli", "submit", "--url", site.url, "--token", token,
             "--track", TINY_TRACK, "--method", "RTN (cli)", "--checkpoint",
             str(tiny_checkpoints["w8a8"]), "--wait", "--timeout", "180"],
            capture_output=True, text=True, env=site.env,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        lines = cli.stdout.splitlines()
        assert re.fullmatch(r"submission \d+ queued on " + TINY_TRACK, lines[0])
        assert any(
            re.match(r"submission \d+ (queued|validating|running|scoring): ", x) for x in lines
        )
        assert re.fullmatch(r"submission \d+ done: mean DSC 0\.\d{4}, mean NSD 0\.\d{4}", lines[-1])
    print(
        f"researchers' submissions done in {sorted(finished.values())} s with "
        f"{queued_baselines} baselines queued before them ({still_pending} still pending)"
    )
