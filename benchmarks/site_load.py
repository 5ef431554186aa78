"""Leaderboard under load: 10,000 seeded results on one track, served by gunicorn, hit by 20
concurrent clients with ApacheBench (``ab``, Debian's apache2-utils).

Measured side by side in one run, on one track: the track page (``/tracks/<slug>/``, first page
of the ranked table + charts), the model's study page (``/study/<model>/``), the leaderboard JSON
(``/api/v1/tracks/<slug>/leaderboard/``) and CSV (``?format=csv``, every row), and a floor: the
track page's own bytes as a static file served by the same gunicorn and middleware (whitenoise,
from ``DJANGO_STATIC_ROOT``), i.e. what serving those bytes costs with no view at all. Each gets
``--requests`` requests at concurrency ``--concurrency`` after a warm-up; printed: p50 and p95
latency (ms), requests per second, and the database queries one request makes (counted
in-process with Django's CaptureQueriesContext), both on a cold cache (ranks just recomputed)
and a warm one, and the time of that cold request. Targets: p95 ≤ 100 ms for the track page,
the study page and the JSON, ≤ 150 ms for the CSV. What is derived from ranks (boards, the whole
page for visitors without an account, the JSON and CSV bodies, study tables) is cached until the
ranks change, so the load phase measures the cached path; the cold column shows the cost of the
first rendering.

The seeded results are synthetic (deterministic pseudo-random metrics, seed 0): this measures
the site, not the harness. Everything runs in a temporary folder with its own SQLite database.

    python benchmarks/site_load.py [--demo DIR] [--results 10000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACK = "demo-unet-phantom-w4a4-simulated"
MODEL = "demo-unet"
TARGETS_MS = {"track page": 100, "study page": 100, "leaderboard JSON": 100, "leaderboard CSV": 150}
FLOOR = "static floor"
STUDY_ROWS = 4
"""The first seeded entries are the study's rows on this track: FP32, then RTN at each
granularity."""


def seed(results: int, demo: Path) -> None:
    """Migrate and seed ``results`` evaluations from 1/4 as many users (1/20 as many teams)."""
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.utils import timezone

    from leaderboard.accounts.models import Team
    from leaderboard.submissions.models import Evaluation, Kind, Status, Submission
    from leaderboard.tracks import ranking
    from leaderboard.tracks.seeding import create_track, import_dataset, import_model

    call_command("migrate", verbosity=0)
    dataset = import_dataset(demo / "dataset", slug="phantom")
    track = create_track(
        dataset, import_model(demo / "models" / "unet"), weight_bits=4, activation_bits=4
    )
    rng = np.random.default_rng(0)
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"user{i}") for i in range(results // 4)]
    )
    teams = Team.objects.bulk_create([Team(name=f"team {i}") for i in range(results // 20)])
    grans = ["per-tensor", "per-channel", "adaptive"]
    now = timezone.now()
    submissions = Submission.objects.bulk_create(
        [
            Submission(
                track=track, user=users[i % len(users)],
                team=teams[i % len(teams)] if i % 2 else None,
                method=f"method {i % 50} {grans[i % 3]}", status=Status.DONE, created_at=now,
                finished_at=now, is_baseline=i < STUDY_ROWS,
                kind=(Kind.FP32 if i == 0 else Kind.SCHEME) if i < STUDY_ROWS else Kind.CHECKPOINT,
                reference_method="rtn" if 0 < i < STUDY_ROWS else "",
                scheme=("fp32" if i == 0 else f"w4a4-{grans[i - 1]}") if i < STUDY_ROWS else "",
            )
            for i in range(results)
        ],
        batch_size=1000,
    )  # fmt: skip
    classes = {str(c): f"class {c}" for c in range(1, 6)}
    evaluations = []
    for i, submission in enumerate(submissions):
        dsc = float(rng.uniform(0.3, 0.9))
        per_class = {k: {"name": v, "mean_dsc": float(rng.uniform(0.2, 0.95)), "mean_nsd": 0.5}
                     for k, v in classes.items()}  # fmt: skip
        evaluations.append(
            Evaluation(
                submission=submission, track=track, mean_dsc=dsc, mean_nsd=dsc - 0.1,
                dsc_drop_pct=(0.9 - dsc) / 0.9 * 100, dsc_ci_low=dsc - 0.01,
                dsc_ci_high=dsc + 0.01, fp32_mean_dsc=0.9, gate_passed=dsc >= 0.891,
                weight_bits=4, activation_bits=4, granularity=grans[i % 3],
                size_mb=float(rng.uniform(0.2, 1.2)), latency_ms=float(rng.uniform(50, 120)),
                result={"per_class": per_class,
                        "summary": {"mean_dsc": dsc, "nsd_drop_pct": (0.8 - dsc) / 0.8 * 100}},
            )
        )  # fmt: skip
    Evaluation.objects.bulk_create(evaluations, batch_size=1000)
    ranking.refresh(track)


def queries_per_request(paths: dict[str, str]) -> dict[str, tuple[int, int, float]]:
    """(cold, warm) database queries of one request per path, and the cold request's time (ms)
    in-process (the first rendering after the ranks changed, before anything is cached)."""
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client, counts = Client(), {}
    for name, path in paths.items():
        cache.clear()
        measured, times = [], []
        for _ in range(2):
            start = time.perf_counter()
            with CaptureQueriesContext(connection) as queries:
                assert client.get(path).status_code == 200
            times.append(1000 * (time.perf_counter() - start))
            measured.append(len(queries))
        counts[name] = (*measured, times[0])
    return counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ab(url: str, requests: int, concurrency: int) -> dict[str, float]:
    done = subprocess.run(
        ["ab", "-q", "-l", "-n", str(requests), "-c", str(concurrency), url],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"ab failed on {url}:\n{done.stdout}\n{done.stderr}")
    out = done.stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if failed or non_2xx:
        raise RuntimeError(f"requests failed:\n{out}")
    return {
        "p50": float(re.search(r"^\s+50%\s+(\d+)", out, re.M).group(1)),
        "p95": float(re.search(r"^\s+95%\s+(\d+)", out, re.M).group(1)),
        "rps": float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", default="demo", help="folder written by `harness demo`")
    parser.add_argument("--results", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    args = parser.parse_args()
    if shutil.which("ab") is None:
        sys.exit("ab is missing: apt-get install apache2-utils")

    var = Path(tempfile.mkdtemp(prefix="site-load-"))
    env = os.environ | {
        "MEDQUANT_VAR_DIR": str(var), "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,testserver",
        "MEDQUANT_RATE_ANON": "100000000/min", "MEDQUANT_RATE_USER": "100000000/min",
        "OMP_NUM_THREADS": "1",
        "DJANGO_SETTINGS_MODULE": "leaderboard.settings",
        "DJANGO_STATIC_ROOT": str(var / "static"),
    }  # fmt: skip
    os.environ.update(env)
    (var / "static").mkdir()
    import django

    django.setup()
    start = time.perf_counter()
    seed(args.results, Path(args.demo).resolve())
    print(f"seeded {args.results} results on {TRACK} in {time.perf_counter() - start:.1f} s")
    paths = {
        "track page": f"/tracks/{TRACK}/",
        "study page": f"/study/{MODEL}/",
        "leaderboard JSON": f"/api/v1/tracks/{TRACK}/leaderboard/",
        "leaderboard CSV": f"/api/v1/tracks/{TRACK}/leaderboard/?format=csv",
    }
    queries = queries_per_request(paths)
    from django.test import Client

    (var / "static" / "floor.html").write_bytes(Client().get(paths["track page"]).content)
    paths[FLOOR] = "/static/floor.html"

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "leaderboard.wsgi", "-b",
         f"127.0.0.1:{port}", "-w", str(args.workers), "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):  # until a worker answers (the master binds before they boot)
            try:
                with urllib.request.urlopen(base + paths[FLOOR], timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        for path in paths.values():
            ab(base + path, 4 * args.workers, args.workers)  # warm every worker's cache
        print(f"\n{args.requests} requests per path, {args.concurrency} concurrent clients, "
              f"gunicorn -w {args.workers}, {os.cpu_count()} CPUs")  # fmt: skip
        print(f"{'path':<18} {'p50 ms':>7} {'p95 ms':>7} {'req/s':>8} {'queries cold/warm':>18} "
              f"{'cold ms':>8}")  # fmt: skip
        p95 = {}
        for name, path in paths.items():
            stats = ab(base + path, args.requests, args.concurrency)
            p95[name] = stats["p95"]
            cold, warm, cold_ms = queries.get(name, ("-", "-", float("nan")))
            print(f"{name:<18} {stats['p50']:>7.0f} {stats['p95']:>7.0f} {stats['rps']:>8.1f} "
                  f"{cold:>13}/{warm:<4} {cold_ms:>8.0f}")  # fmt: skip
        print()
        for name, target in TARGETS_MS.items():
            verdict = "met" if p95[name] <= target else "NOT met"
            print(f"{name:<18} p95 {p95[name]:>4.0f} ms (floor {p95[FLOOR]:.0f}), "
                  f"target ≤ {target} ms: {verdict}")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()
