"""Progress of the harness's long loops (inferring a track's test cases), reported to whoever
listens — a worker writing it to the submission's row — without the loops knowing about any
front end. Nothing listens by default (reporting costs one context-variable read per step).

Depends on: nothing of the project.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Reporter = Callable[[str, int, int], None]
"""``(stage, done, total)``: ``done`` of ``total`` steps of ``stage`` finished."""

_reporter: ContextVar[Reporter | None] = ContextVar("harness_progress", default=None)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Send the progress of the loops run inside the block (in this thread) to ``reporter``."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def report(stage: str, done: int, total: int) -> None:
    """One more step of ``stage`` finished (see ``Reporter``)."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(stage, done, total)
