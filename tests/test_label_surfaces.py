"""A case's surfaces are found once for NSD and HD95, the label's part once per label: found on
the label's own class box and moved into the common crop they are exactly the surfaces found on
the crop, so NSD and HD95 are bit-identical; the label's part is cached on the shared storage
and read back by another process (here: another cache object)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from harness.scoring.definitions import NsdDefinition
from harness.scoring.hausdorff import hd95_per_class
from harness.scoring.metrics import nsd_per_class, surfaces_for
from harness.scoring.surfaces import case_surfaces, label_surfaces
from harness.scoring.surfels import Surfels
from harness.track import run_cache
from harness.track.surface_cache import FOLDER, LabelSurfaceCache

SPACING = np.array([1.5, 0.8, 2.5])
IDS = [1, 2, 3, 4]
TOLERANCE_MM = 2.0


def _blob_maps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, label): boxes of classes 1-3 (one touching the volume border, class 4 only
    in the prediction), the prediction shifted, with stray voxels far from the organs."""
    rng = np.random.default_rng(seed)
    label = np.zeros((30, 40, 24), np.int16)
    label[5:15, 8:20, 4:12] = 1
    label[0:6, 25:40, 10:20] = 2  # touches three borders
    label[18:26, 10:18, 14:22] = 3
    label[20:22, 12:14, 16:18] = 0  # a hole
    pred = np.roll(label, (1, -2, 1), axis=(0, 1, 2)).copy()
    pred[rng.random(pred.shape) < 0.002] = 4
    pred[rng.random(pred.shape) < 0.001] = 2
    return pred, label


def _same(a, b) -> bool:
    if isinstance(a, Surfels):
        return np.array_equal(a.corners, b.corners) and np.array_equal(a.areas, b.areas)
    return np.array_equal(a, b)


@pytest.mark.parametrize("definition", list(NsdDefinition))
@pytest.mark.parametrize("seed", [0, 1])
def test_moved_label_surfaces_are_those_found_on_the_common_crop(definition, seed):
    pred, label = _blob_maps(seed)
    direct = surfaces_for(pred, label, IDS, SPACING, definition)
    part = label_surfaces(label, IDS, SPACING, definition)
    shared = case_surfaces(pred, part, IDS, SPACING)
    assert shared.shape == direct.shape and part.shape != shared.shape  # moved, not just copied
    assert set(shared.label) == set(direct.label) == {1, 2, 3}
    assert all(_same(shared.label[c], direct.label[c]) for c in direct.label)
    assert all(_same(shared.pred[c], direct.pred[c]) for c in direct.pred)
    for metric in (
        lambda **kw: nsd_per_class(pred, label, IDS, SPACING, TOLERANCE_MM, definition, **kw),
        lambda **kw: hd95_per_class(pred, label, IDS, SPACING, definition, **kw),
    ):
        assert metric(surfaces=shared) == metric()  # bit-identical, every class


def test_a_label_or_prediction_without_the_classes_scores_as_without_the_shared_surfaces():
    pred, label = _blob_maps(0)
    empty = np.zeros_like(label)
    for p, g in ((pred, empty), (empty, label), (empty, empty)):
        part = label_surfaces(g, IDS, SPACING, NsdDefinition.SUBVOXEL)
        shared = case_surfaces(p, part, IDS, SPACING)
        expected = nsd_per_class(p, g, IDS, SPACING, TOLERANCE_MM)
        found = nsd_per_class(p, g, IDS, SPACING, TOLERANCE_MM, surfaces=shared)
        assert found == expected


def test_surfaces_of_another_definition_are_refused():
    pred, label = _blob_maps(0)
    shared = case_surfaces(
        pred, label_surfaces(label, IDS, SPACING, NsdDefinition.VOXEL), IDS, SPACING
    )
    with pytest.raises(ValueError, match="voxel definition"):
        nsd_per_class(pred, label, IDS, SPACING, TOLERANCE_MM, "subvoxel", surfaces=shared)


@pytest.fixture
def label_file(tmp_path) -> tuple[Path, np.ndarray]:
    _, label = _blob_maps(0)
    path = tmp_path / "case_000.nii.gz"
    path.write_bytes(b"stands for the label file: its name, size and time are the key")
    return path, label


@pytest.mark.parametrize("definition", list(NsdDefinition))
def test_label_surfaces_are_found_once_and_read_back_by_another_worker(
    label_file, tmp_path, monkeypatch, definition
):
    monkeypatch.setenv(run_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    path, label = label_file
    args = ("case_000", path, label, IDS, SPACING.tolist(), definition)
    first = LabelSurfaceCache({1: "a", 2: "b", 3: "c", 4: "d"})
    found = first(*args)
    assert first(*args) is found and first.found == 1  # in memory the second time
    stored = list((tmp_path / "cache" / FOLDER).glob("*.npz"))
    assert len(stored) == 1
    other = LabelSurfaceCache({1: "a", 2: "b", 3: "c", 4: "d"})
    read = other(*args)
    assert other.found == 0
    assert (read.start, read.shape, read.volume_shape) == (
        found.start,
        found.shape,
        found.volume_shape,
    )
    assert set(read.classes) == set(found.classes) and all(
        _same(read.classes[c], found.classes[c]) for c in found.classes
    )
    os.utime(path, ns=(0, 0))  # the label file changed: another key
    assert LabelSurfaceCache({1: "a", 2: "b", 3: "c", 4: "d"})(*args) is not None
    assert len(list((tmp_path / "cache" / FOLDER).glob("*.npz"))) == 2


def test_an_unreadable_cached_file_is_found_again(label_file, tmp_path, monkeypatch):
    monkeypatch.setenv(run_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    path, label = label_file
    args = ("case_000", path, label, IDS, SPACING.tolist(), NsdDefinition.SUBVOXEL)
    LabelSurfaceCache({})(*args)
    (stored,) = (tmp_path / "cache" / FOLDER).glob("*.npz")
    stored.write_bytes(b"not an npz")
    again = LabelSurfaceCache({})
    surfaces = again(*args)
    assert again.found == 1 and set(surfaces.classes) == {1, 2, 3}
