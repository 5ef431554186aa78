"""How long a researcher waits on a fresh demo site (`make run`) whose baselines are all still
queued: signs up, makes an API token, quantizes the demo UNet with RTN W8A8 per-channel
(`harness quantize`), submits it with `harness submit --wait` to the W8A8 simulated track, and
prints the seconds from submitting to `done` beside the number of baselines pending at both ends
(read from the site's database). Run it right after `make run` has started serving:

    python benchmarks/researcher_wait.py --url http://127.0.0.1:8000 --var var --demo demo
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
TRACK = "demo-unet-phantom-w8a8-simulated"


def pending_baselines(var: Path) -> int:
    """Baselines not finished yet, from the site's own database (``var``'s)."""
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from leaderboard.submissions.models import PENDING, Submission; "
         "print(Submission.objects.filter(is_baseline=True, status__in=PENDING).count())"],
        cwd=ROOT, env=os.environ | {"MEDQUANT_VAR_DIR": str(var)}, capture_output=True,
        text=True, check=True,
    ).stdout  # fmt: skip
    return int(out.split()[-1])


def token_for(url: str, username: str) -> str:
    """Sign up through the form and create an API token on the token page."""
    session = requests.Session()
    session.get(f"{url}/signup/")
    secret = "Sup3r-secret-pw"
    form = {"username": username, "password1": secret, "password2": secret,
            "csrfmiddlewaretoken": session.cookies["csrftoken"]}  # fmt: skip
    session.post(f"{url}/signup/", data=form, headers={"Referer": url}).raise_for_status()
    page = session.post(
        f"{url}/tokens/",
        data={"name": "bench", "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": url},
    ).text
    return re.search(r'id="new-token">(mq_[^<]+)</pre>', page).group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--var", type=Path, default=ROOT / "var", help="the site's var folder")
    parser.add_argument("--demo", type=Path, default=ROOT / "demo", help="the demo folder")
    args = parser.parse_args()
    harness = [sys.executable, "-m", "harness.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "rtn"
        subprocess.run(
            [*harness, "quantize", "--quiet", "--dataset", str(args.demo / "dataset"),
             "--model", str(args.demo / "models" / "unet"), "--method", "rtn", "--wbits", "8",
             "--abits", "8", "--granularity", "per-channel", "--out", str(checkpoint)],
            check=True,
        )  # fmt: skip
        token = token_for(args.url, f"bench{int(time.time())}")
        before = pending_baselines(args.var)
        start = time.monotonic()
        submit = subprocess.run(
            [*harness, "submit", "--url", args.url, "--token", token, "--track", TRACK,
             "--method", "RTN per-channel (researcher_wait)", "--checkpoint", str(checkpoint),
             "--wait", "--timeout", "3600"],
            capture_output=True, text=True,
        )  # fmt: skip
        waited = time.monotonic() - start
    after = pending_baselines(args.var)
    print(submit.stdout, end="")
    print(submit.stderr, end="", file=sys.stderr)
    print(f"{os.uname().nodename}: load {os.getloadavg()[0]:.2f}")
    print(
        f"submitted → {submit.stdout.splitlines()[-1].split(':')[0].split()[-1]} in "
        f"{waited:.1f} s, with {before} baselines pending at submission and {after} when done"
    )


if __name__ == "__main__":
    main()
