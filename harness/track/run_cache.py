"""The FP32 reference run of a track, kept on storage every worker shares: computed by the first
worker (or ``harness evaluate``) that needs it, read by the rest instead of running the FP32
network again.

A cached run is found by its key, the SHA-256 of what its figures depend on: the reference
weights' digest, the model spec, the dataset's fingerprint (its ``dataset.json`` and each test
case's files by path, size and modification time — re-hashing clinical volumes on every open
would cost what the cache saves), the scoring settings (test split, NSD tolerance and
definition, label map) and the harness's digest (its version and the source of the modules that
compute the figures). Anything else changed is a different key, so a stale run is never read.

The folder is ``MEDQUANT_CACHE_DIR`` (the site points it at its shared storage; ``harness
evaluate`` at the user's cache folder when it is unset, ``user_cache_dir``); unset, nothing is
cached. Files are written whole (a temporary file renamed into place), so a reader never
sees half of one and two workers writing the same key at once both write the same bytes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from importlib.metadata import version
from pathlib import Path

import harness
from harness.data.dataset import Case
from harness.scoring.evaluation import EvaluationRun

logger = logging.getLogger(__name__)
CACHE_DIR_VARIABLE = "MEDQUANT_CACHE_DIR"
SCORING_SOURCES = ("scoring", "inference", "data", "models")
"""Packages of the harness whose source decides a run's figures (what the harness digest
hashes): the metrics, the sliding-window inference, reading and preprocessing, the networks."""
LIBRARIES = ("torch", "monai", "numpy", "scipy", "nibabel")
"""Libraries whose version is part of the harness digest: they compute the figures too."""


def cache_dir() -> Path | None:
    """The shared cache folder, or None when caching is off."""
    folder = os.environ.get(CACHE_DIR_VARIABLE)
    return Path(folder) if folder else None


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/medquant`` (``~/.cache/medquant`` by default)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medquant"


@contextmanager
def caching_in(folder: Path) -> Iterator[None]:
    """Cache in ``folder`` for the block unless a folder is configured already."""
    if cache_dir() is not None:
        yield
        return
    os.environ[CACHE_DIR_VARIABLE] = str(folder)
    try:
        yield
    finally:
        os.environ.pop(CACHE_DIR_VARIABLE, None)


@cache
def harness_digest() -> str:
    """SHA-256 of the harness version, the source files of ``SCORING_SOURCES`` and the versions
    of ``LIBRARIES``."""
    digest = hashlib.sha256(harness.__version__.encode())
    for library in LIBRARIES:
        digest.update(f"{library}=={version(library)}".encode())
    root = Path(harness.__file__).parent
    for package in SCORING_SOURCES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset_json: Path, cases: Iterable[Case]) -> str:
    """SHA-256 of ``dataset.json`` and each case's image and label files by name, size and
    modification time."""
    digest = hashlib.sha256(dataset_json.read_bytes())
    for case in cases:
        digest.update(case.case_id.encode())
        for path in (*case.images, case.label):
            if path is None:
                continue
            stat = Path(path).stat()
            digest.update(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def run_key(parts: dict) -> str:
    """The cache key of a run: SHA-256 of ``parts`` (JSON, sorted keys) and the harness digest."""
    text = json.dumps(parts | {"harness": harness_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _path(key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / "fp32-runs" / f"{key}.json"


def load_run(key: str) -> EvaluationRun | None:
    """The cached run of ``key``; None when caching is off, it is not cached, or the file cannot
    be read (it is then computed again and rewritten)."""
    path = _path(key)
    if path is None or not path.is_file():
        return None
    try:
        return EvaluationRun.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("cached FP32 run %s unreadable (%s): computing it again", path, error)
        return None


def store_run(key: str, run: EvaluationRun) -> None:
    """Write ``run`` under ``key`` (nothing when caching is off; a write that fails is logged:
    the run is then just not shared)."""
    path = _path(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, suffix=".part", delete=False
        ) as handle:
            json.dump(run.to_json(), handle)
        os.replace(handle.name, path)
    except OSError as error:
        logger.warning("FP32 run not cached at %s: %s", path, error)
