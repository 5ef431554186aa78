"""The label surfaces of a track's test cases (``harness.scoring.surfaces.LabelSurfaces``), found
once and reused by every run that scores the same label: kept in the process and, where caching
is on (``harness.track.run_cache.cache_dir``), on the storage every worker shares.

A stored file is found by its key, the SHA-256 of the label file (name, size, modification time),
the case id, the track's label map and classes, the spacing, the NSD definition and the harness
digest: anything else changed is a different key. Files are ``.npz`` arrays read without pickle,
written whole (a temporary file renamed into place); one that cannot be read is found again and
rewritten."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from harness.scoring.definitions import NsdDefinition
from harness.scoring.surfaces import LabelSurfaces, label_surfaces
from harness.scoring.surfels import Surfels
from harness.track.run_cache import cache_dir, run_key

logger = logging.getLogger(__name__)
FOLDER = "label-surfaces"


class LabelSurfaceCache:
    """``cache(case_id, label_path, label, ids, spacing, definition)``: the label's surfaces,
    from memory, the shared storage, or found now (and stored). ``found``: how many were
    found rather than read (what a test checks)."""

    def __init__(self, labels: dict[int, str]) -> None:
        self.labels = dict(labels)
        self.found = 0
        self._memory: dict[str, LabelSurfaces] = {}

    def __call__(
        self,
        case_id: str,
        label_path: Path,
        label: np.ndarray,
        ids: Sequence[int],
        spacing: Sequence[float],
        definition: NsdDefinition,
    ) -> LabelSurfaces:
        stat = Path(label_path).stat()
        key = run_key(
            {
                "label_surfaces": case_id,
                "file": [Path(label_path).name, stat.st_size, stat.st_mtime_ns],
                "labels": self.labels,
                "ids": [int(c) for c in ids],
                "spacing": [float(s) for s in spacing],
                "definition": definition.value,
            }
        )
        if key in self._memory:
            return self._memory[key]
        surfaces = _load(key, definition)
        if surfaces is None or surfaces.volume_shape != tuple(label.shape):
            surfaces = label_surfaces(label, ids, np.asarray(spacing, np.float64), definition)
            self.found += 1
            _store(key, surfaces)
        self._memory[key] = surfaces
        return surfaces


def _path(key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / FOLDER / f"{key}.npz"


def _load(key: str, definition: NsdDefinition) -> LabelSurfaces | None:
    path = _path(key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            classes: dict[int, Surfels | np.ndarray] = {}
            for c in data["ids"].tolist():
                if definition is NsdDefinition.SUBVOXEL:
                    classes[c] = Surfels(data[f"corners_{c}"], data[f"areas_{c}"])
                else:
                    classes[c] = data[f"voxels_{c}"]
            return LabelSurfaces(
                tuple(data["volume_shape"].tolist()),
                definition,
                tuple(data["start"].tolist()),
                tuple(data["shape"].tolist()),
                classes,
            )
    except (OSError, ValueError, KeyError) as error:
        logger.warning("cached label surfaces %s unreadable (%s): finding them again", path, error)
        return None


def _store(key: str, surfaces: LabelSurfaces) -> None:
    path = _path(key)
    if path is None:
        return
    arrays: dict[str, np.ndarray] = {
        "volume_shape": np.asarray(surfaces.volume_shape, np.int64),
        "start": np.asarray(surfaces.start, np.int64),
        "shape": np.asarray(surfaces.shape, np.int64),
        "ids": np.asarray(sorted(surfaces.classes), np.int64),
    }
    for c, surface in surfaces.classes.items():
        if isinstance(surface, Surfels):
            arrays[f"corners_{c}"], arrays[f"areas_{c}"] = surface.corners, surface.areas
        else:
            arrays[f"voxels_{c}"] = surface
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as handle:
            np.savez(handle, **arrays)
        os.replace(handle.name, path)
    except OSError as error:
        logger.warning("label surfaces not cached at %s: %s", path, error)
