"""What a worker process keeps around the evaluation of a submission: its heartbeat, the
evaluation's memory limit (recognising an allocation it refused) and the tracks it has loaded."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from harness.track.loaded import LoadedTrack
from leaderboard.submissions.models import Submission
from leaderboard.tracks.models import Track

logger = logging.getLogger(__name__)
CACHED_TRACKS = 4
"""Loaded tracks a worker process keeps (dataset, FP32 model and run, calibration patches)."""
HEARTBEAT_S = 10
"""How often a worker evaluating a submission writes its heartbeat (the reconciler takes a
pending submission quiet for ``reconciler.QUIET_S`` as abandoned by a dead worker)."""


@contextmanager
def heartbeat(submission_id: int, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Write ``heartbeat_at`` now and every ``every_s`` seconds until the block ends (from a
    thread with its own database connection; a failed beat is retried at the next one). Inside a
    caller's transaction (the pipeline run in-process, as the tests do) the beats would wait on
    the row lock that transaction holds: there only the stage writes count."""
    if connection.in_atomic_block:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        try:
            while True:
                try:
                    Submission.objects.filter(pk=submission_id).update(heartbeat_at=timezone.now())
                except DatabaseError as error:
                    logger.warning(
                        "heartbeat of submission %s not written: %s", submission_id, error
                    )
                    connection.close()
                if stop.wait(every_s):
                    return
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-{submission_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


OUT_OF_MEMORY_MARKERS = ("bad allocation", "bad_alloc", "Failed to allocate memory")
"""How native runtimes (ONNX Runtime, OpenVINO) report an allocation refused by the limit."""


def memory_limit_message() -> str:
    limit = settings.MEDQUANT_EVALUATION_MEMORY_BYTES
    return f"exceeds the memory limit of {limit / 2**20:.0f} MiB per evaluation"


def is_out_of_memory(error: BaseException) -> bool:
    """A ``MemoryError``, or a native runtime's failed allocation (under the evaluation's
    address-space limit, see ``tasks.limit_memory``)."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in OUT_OF_MEMORY_MARKERS)


_open_tracks: OrderedDict[str, LoadedTrack] = OrderedDict()


def open_track(track: Track) -> LoadedTrack:
    """Load the track (dataset, FP32 model, FP32 run) once per worker process and spec."""
    spec = track.to_spec()
    key = repr(spec.to_dict())
    if key not in _open_tracks:
        loaded = LoadedTrack.open(spec)
        loaded.fp32_run  # noqa: B018 -- evaluated now: a track that cannot run fails here
        _open_tracks[key] = loaded
        while len(_open_tracks) > CACHED_TRACKS:
            _open_tracks.popitem(last=False)
    _open_tracks.move_to_end(key)
    return _open_tracks[key]
