"""``manage.py serve``: runserver plus embedded Celery workers, for the demo (`make run`): one
for researchers' submissions (queues ``cpu``, ``containers``) and one for the reference baselines
(``cpu-baselines``), so a submission is evaluated while the baselines are still being computed."""

import os
import signal
import socket
import subprocess
import sys

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


def _check_free(addrport: str) -> None:
    """Refuse early when the address is taken: runserver would ``os._exit`` on it, skipping the
    cleanup that stops the worker."""
    host, _, port = addrport.rpartition(":")
    with socket.socket() as probe:
        try:
            probe.bind((host or "127.0.0.1", int(port)))
        except OSError as error:
            raise CommandError(
                f"cannot serve on {addrport}: {error.strerror}. Stop the server already using it, "
                "or pass another address (manage.py serve 127.0.0.1:8001)."
            ) from None


WORKERS = (("cpu,containers", "embedded@%h"), ("cpu-baselines", "baselines@%h"))
"""(queues, hostname) of the embedded workers: researchers' submissions and quantizer containers
on one, the reference baselines on the other (``tasks.queue_for``)."""


def _start_worker(queues: str, hostname: str, concurrency: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "leaderboard", "worker", "-Q", queues,
            "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", hostname,
        ],
        # its own process group: a terminal's Ctrl-C (or a signal to this group) reaches only
        # this command, which then shuts the worker down as a whole (pool children too)
        start_new_session=True,
    )  # fmt: skip


class Command(BaseCommand):
    help = (
        "Serve the site with runserver, two Celery workers (researchers' submissions on queues "
        "cpu and containers; reference baselines on cpu-baselines) and the reconciler "
        "(manage.py reconcile), started as child processes; they stop when the server does."
    )

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument(
            "--concurrency", type=int, default=1, help="processes of each of the two workers"
        )

    def handle(self, *args, addrport, concurrency, **options):
        _check_free(addrport)
        workers = [_start_worker(queues, host, concurrency) for queues, host in WORKERS]
        reconciler = subprocess.Popen(
            [sys.executable, sys.argv[0], "reconcile"], start_new_session=True
        )
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the cleanup below
        try:
            call_command("runserver", addrport, use_reloader=False)
        finally:
            _stop(reconciler)
            for worker in workers:
                _stop(worker)


def _stop(worker: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Warm shutdown (SIGTERM: finish the current task); SIGKILL to its group after ``grace_s``."""
    worker.terminate()
    try:
        worker.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
