"""The surfaces of one case's prediction and label, found once and shared by NSD and HD95; the
label's part found once per case and reusable by every run that scores the same label.

NSD and HD95 measure distances between the surfaces of each class in the prediction P and the
label G, found on the common crop: the bounding box of the requested classes' voxels in either
map (``harness.scoring.metrics``). Surfaces (surfels on the corner grid for the ``subvoxel``
definition, surface voxels for ``voxel``) are translation-equivariant: a class's surface depends
only on which voxels hold that class, and every voxel outside a class box holds none of the
requested classes, as the outside of the volume does. So the label's surfaces found on the
label's own class box (``LabelSurfaces``) and moved into the common crop are exactly those found
on the common crop: the same indices in the same order, the same areas, so every figure is
bit-identical. That is what makes them reusable: the label does not change between runs, the
common crop does (it depends on the prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.scoring.definitions import NsdDefinition
from harness.scoring.surfels import Surfels, corner_grid_shape, surfels_by_class

Surface = Surfels | np.ndarray
"""One class's surface: its surfels (``subvoxel``) or the sorted flat indices of its surface
voxels (``voxel``)."""

_CHUNK = 1 << 22
"""Voxels looked at per slab when finding a class box: bounds the masks it forms."""


@dataclass(frozen=True)
class LabelSurfaces:
    """The surfaces of each requested class present in a label map, on the label's own class box
    (``start``: its first voxel in the volume, ``shape``: its size; no box when no class is
    present), by ``definition``; ``volume_shape`` is the label map's."""

    volume_shape: tuple[int, ...]
    definition: NsdDefinition
    start: tuple[int, ...]
    shape: tuple[int, ...]
    classes: dict[int, Surface]


@dataclass(frozen=True)
class CaseSurfaces:
    """The surfaces of the prediction and the label on their common crop of ``shape`` voxels."""

    shape: tuple[int, ...]
    definition: NsdDefinition
    pred: dict[int, Surface]
    label: dict[int, Surface]


def class_box(x: np.ndarray, ids: Sequence[int]) -> tuple[slice, ...] | None:
    """The bounding box of the voxels of ``x`` holding any class in ``ids`` (None: none does),
    read in slabs along axis 0 of about ``_CHUNK`` voxels."""
    wanted = np.unique(np.asarray(ids, dtype=np.int64))
    rows = np.zeros(x.shape[0], dtype=bool)
    plane = np.zeros(x.shape[1:], dtype=bool)
    step = max(1, _CHUNK // max(1, plane.size))
    for start in range(0, x.shape[0], step):
        present = np.isin(x[start : start + step], wanted)
        rows[start : start + step] = present.reshape(len(present), -1).any(axis=1)
        plane |= present.any(axis=0)
    if not rows.any():
        return None
    box = [_span(rows)]
    for axis in range(plane.ndim):
        others = tuple(a for a in range(plane.ndim) if a != axis)
        box.append(_span(plane.any(axis=others)))
    return tuple(box)


def union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """The smallest box holding both boxes (None when both are None)."""
    if a is None or b is None:
        return a if b is None else b
    return tuple(
        slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b, strict=True)
    )


def surfaces_of(
    x: np.ndarray, ids: Sequence[int], spacing: np.ndarray, definition: NsdDefinition
) -> dict[int, Surface]:
    """The surface of each class in ``ids`` present in ``x`` (a cropped map) by ``definition``."""
    if definition is NsdDefinition.SUBVOXEL:
        return surfels_by_class(x, ids, spacing)
    return surface_voxels_by_class(x, ids)


def edge_map(x: np.ndarray) -> np.ndarray:
    """Voxels of a label map that lie on the surface of their own class's mask.

    A voxel is on the surface of mask M = (x == x[v]) iff it is not kept by a 6-connected
    (cross-shaped) binary erosion of M with voxels outside the volume counting as background,
    i.e. iff it lies on the volume border or some face neighbour has a different label. This
    equals ``M ^ scipy.ndimage.binary_erosion(M)`` for every class at once, in O(voxels).
    """
    edge = np.zeros(x.shape, dtype=bool)
    for axis in range(x.ndim):
        n = x.shape[axis]
        first = (slice(None),) * axis + (slice(0, 1),)
        last = (slice(None),) * axis + (slice(n - 1, n),)
        edge[first] = True
        edge[last] = True
        if n > 1:
            lo = (slice(None),) * axis + (slice(0, n - 1),)
            hi = (slice(None),) * axis + (slice(1, n),)
            differs = x[lo] != x[hi]
            edge[lo] |= differs
            edge[hi] |= differs
    return edge


def surface_voxels_by_class(x: np.ndarray, ids: Sequence[int]) -> dict[int, np.ndarray]:
    """Sorted flat (C-order) indices of the surface voxels of each class in ``ids`` present in x."""
    edge = edge_map(x)
    flat_idx = np.flatnonzero(edge)
    labels = x[edge]
    del edge
    wanted = np.unique(np.asarray(ids, dtype=np.int64))
    keep = np.isin(labels, wanted)
    flat_idx, labels = flat_idx[keep], labels[keep]
    order = np.argsort(labels, kind="stable")
    flat_idx, labels = flat_idx[order], labels[order]
    starts = np.searchsorted(labels, wanted, side="left")
    stops = np.searchsorted(labels, wanted, side="right")
    out: dict[int, np.ndarray] = {}
    for c, a, b in zip(wanted.tolist(), starts.tolist(), stops.tolist(), strict=True):
        if b > a:
            out[c] = flat_idx[a:b]  # ascending: the stable sort kept C order within a class
    return out


def label_surfaces(
    label: np.ndarray, ids: Sequence[int], spacing: np.ndarray, definition: NsdDefinition
) -> LabelSurfaces:
    """The label's part of a case's surfaces (see ``LabelSurfaces``)."""
    box = class_box(label, ids)
    if box is None:
        return LabelSurfaces(tuple(label.shape), definition, (), (), {})
    crop = label[box]
    return LabelSurfaces(
        tuple(label.shape),
        definition,
        tuple(s.start for s in box),
        tuple(crop.shape),
        surfaces_of(crop, ids, spacing, definition),
    )


def case_surfaces(
    pred: np.ndarray,
    label: LabelSurfaces,
    ids: Sequence[int],
    spacing: np.ndarray,
) -> CaseSurfaces | None:
    """The surfaces of ``pred`` and of the label (``label``, found once) on their common crop;
    None when neither map holds any class in ``ids``."""
    if tuple(pred.shape) != label.volume_shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {label.volume_shape}")
    label_box = (
        tuple(slice(s, s + n) for s, n in zip(label.start, label.shape, strict=True))
        if label.shape
        else None
    )
    box = union_box(class_box(pred, ids), label_box)
    if box is None:
        return None
    crop = pred[box]
    offset = tuple(s - b.start for s, b in zip(label.start, box, strict=False))
    moved = {
        c: _moved(surface, label.shape, offset, crop.shape, label.definition)
        for c, surface in label.classes.items()
    }
    return CaseSurfaces(
        tuple(crop.shape),
        label.definition,
        surfaces_of(crop, ids, spacing, label.definition),
        moved,
    )


def _moved(
    surface: Surface,
    shape: tuple[int, ...],
    offset: tuple[int, ...],
    to_shape: tuple[int, ...],
    definition: NsdDefinition,
) -> Surface:
    """A surface found on a box of ``shape`` at ``offset`` inside a crop of ``to_shape``,
    re-indexed in the crop (ascending order is kept: the shift keeps the lexicographic order)."""
    if definition is NsdDefinition.SUBVOXEL:
        grid, to_grid = corner_grid_shape(shape), corner_grid_shape(to_shape)
        return Surfels(_reindexed(surface.corners, grid, offset, to_grid), surface.areas)
    return _reindexed(surface, shape, offset, to_shape)


def _reindexed(
    flat: np.ndarray, shape: tuple[int, ...], offset: tuple[int, ...], to_shape: tuple[int, ...]
) -> np.ndarray:
    coords = np.unravel_index(flat, shape)
    shifted = tuple(c + o for c, o in zip(coords, offset, strict=True))
    return np.ravel_multi_index(shifted, to_shape).astype(flat.dtype, copy=False)


def _span(hit: np.ndarray) -> slice:
    """The slice from the first to the last True of a non-empty boolean line."""
    where = np.flatnonzero(hit)
    return slice(int(where[0]), int(where[-1]) + 1)
