"""What a worker process keeps around the evaluation of a submission: its heartbeat and
progress, the evaluation's memory limit (recognising an allocation it refused) and the tracks it
has loaded."""

from __future__ import annotations

import logging
import math
import threading
import time
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
PROGRESS_WRITE_S = 1.0
"""Progress is written at most once a second: fresh for a page that polls every two seconds, a
handful of row updates per evaluation."""
STAGE_CHARS = Submission._meta.get_field("progress_stage").max_length


class Progress:
    """The latest step the harness reported (``harness.progress``), for the heartbeat thread to
    write to the row; ``reported`` wakes that thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: tuple[str, int, int] | None = None
        self.reported = threading.Event()

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._latest = (stage[:STAGE_CHARS], done, total)
        self.reported.set()

    def take(self) -> tuple[str, int, int] | None:
        """The step reported since the last ``take`` (None: none)."""
        with self._lock:
            latest, self._latest = self._latest, None
            self.reported.clear()
            return latest

    def put_back(self, step: tuple[str, int, int]) -> None:
        """A step ``take`` gave that could not be written: kept unless a newer one came."""
        with self._lock:
            if self._latest is None:
                self._latest = step


@contextmanager
def heartbeat(
    submission_id: int, progress: Progress | None = None, every_s: float = HEARTBEAT_S
) -> Iterator[None]:
    """Write ``heartbeat_at`` now and every ``every_s`` seconds until the block ends, and each
    step of ``progress`` as it is reported — at most one write per ``PROGRESS_WRITE_S``, the
    last step written when the block ends — from a thread with its own database connection (a
    failed write is retried at the next one). Inside a caller's transaction (the pipeline run
    in-process, as the tests do) the writes would wait on the row lock that transaction holds:
    there only the stage writes count."""
    if connection.in_atomic_block:
        yield
        return
    stop = threading.Event()
    wake = progress.reported if progress is not None else threading.Event()

    def beat() -> None:
        last_beat = last_write = -math.inf
        try:
            while True:
                fields = {}
                step = progress.take() if progress is not None else None
                if step is not None:
                    stage, done, total = step
                    fields |= {
                        "progress_stage": stage,
                        "progress_done": done,
                        "progress_total": total,
                    }
                now = time.monotonic()
                if now - last_beat >= every_s:
                    fields["heartbeat_at"] = timezone.now()
                if fields:
                    try:
                        Submission.objects.filter(pk=submission_id).update(**fields)
                        last_write = now
                        if "heartbeat_at" in fields:
                            last_beat = now
                    except DatabaseError as error:
                        logger.warning(
                            "heartbeat of submission %s not written: %s", submission_id, error
                        )
                        connection.close()
                        last_beat = last_write = now  # the next try comes at the next beat
                        if step is not None:
                            progress.put_back(step)
                if stop.is_set():
                    return
                wake.wait(max(0.0, every_s - (time.monotonic() - last_beat)))
                stop.wait(max(0.0, PROGRESS_WRITE_S - (time.monotonic() - last_write)))
        finally:
            connection.close()

    thread = threading.Thread(target=beat, name=f"heartbeat-{submission_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        wake.set()
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
