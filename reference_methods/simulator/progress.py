"""Progress of the long loops of quantization (fitting layer by layer, quantizing layers,
calibration batches), reported to whoever listens — a command line's progress bars — without
the methods knowing about any front end. Nothing listens by default (reporting costs one
context-variable read per step)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Reporter = Callable[[str, str, int, int], None]
"""``(stage, item, done, total)``: ``done`` of ``total`` steps of ``stage`` finished, the last
being ``item`` (a layer name, or a batch number)."""

_reporter: ContextVar[Reporter | None] = ContextVar("quantization_progress", default=None)


@contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Send the progress of quantization inside the block to ``reporter``."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def report(stage: str, item: str, done: int, total: int) -> None:
    """One more step of ``stage`` finished (see ``Reporter``)."""
    reporter = _reporter.get()
    if reporter is not None:
        reporter(stage, item, done, total)
