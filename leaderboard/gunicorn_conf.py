"""Gunicorn settings of the production web (``gunicorn -c python:leaderboard.gunicorn_conf
leaderboard.wsgi``): threaded workers, so slow clients hold a thread each rather than a whole
worker; stated timeouts; and each worker process under an address-space limit, so one request
that balloons cannot exhaust the host (it fails alone with a MemoryError, a 500 for that
request, while the other workers serve on)."""

from __future__ import annotations

import os
import resource

bind = os.environ.get("MEDQUANT_WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("MEDQUANT_WEB_WORKERS", "4"))
worker_class = "gthread"
threads = int(os.environ.get("MEDQUANT_WEB_THREADS", "8"))
"""Requests in flight per worker: 4 × 8 = 32 slow clients before a fast one waits."""
timeout = 120
"""Seconds a worker may go silent before the arbiter restarts it (a thread stuck on a slow
client does not silence its worker: the gthread worker keeps beating)."""
graceful_timeout = 30
keepalive = 5
"""Seconds an idle keep-alive connection is held."""
limit_request_line = 8190
limit_request_fields = 200
"""Headers per request; beyond them gunicorn answers 400 before Django sees the request."""
MEMORY_LIMIT_BYTES = int(os.environ.get("MEDQUANT_WEB_MEMORY_BYTES", str(4 << 30)))
"""Address space of each web worker (0: none). A worker maps about 1.1 GB once the site is
imported (torch and ONNX among it; 0.5 GB resident); 4 GiB leaves room to parse an upload at the
512 MB limit (``onnx.checker``) while a runaway request still fails alone."""


def post_fork(server, worker) -> None:
    """Cap the worker's address space (the arbiter itself is not capped)."""
    if MEMORY_LIMIT_BYTES > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = (
            MEMORY_LIMIT_BYTES if hard == resource.RLIM_INFINITY else min(hard, MEMORY_LIMIT_BYTES)
        )
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
