"""Surface elements ("surfels") of every class of a label map on the voxel-corner grid, as the
normalised surface Dice of its original publication defines them (Nikolov et al.,
arXiv:1809.04430; DeepMind's ``surface-distance`` package, which MONAI reproduces with
``use_subvoxels=True``).

The corner grid has one point per voxel corner: n + 1 points along an axis of n voxels, corner i
lying between voxels i - 1 and i. The neighbour code of corner i for a mask M is the 2^ndim-bit
pattern of M over the 2 x 2 (x 2) voxels around it, voxel i - 1 + o (offset o in {0, 1}^ndim)
setting bit 2^(2^ndim - 1 - flat(o)), flat(o) = 4 o_0 + 2 o_1 + o_2 (3D) or 2 o_0 + o_1 (2D): the
``ENCODE_NEIGHBOURHOOD`` correlation kernels of ``surface-distance``. Voxels outside the volume
are outside M. A corner is a surfel of M iff its code is neither 0 nor all ones; its area (3D, mm²)
or length (2D, mm) is the marching-cubes surface piece of that code scaled by the spacing, read
from MONAI's table (``monai.metrics.utils.get_code_to_measure_table``, the same normals as
``surface-distance``; 3D areas come in float32, exact normals times the spacing products, and are
summed here in float64).

All classes are found in one pass: a corner is a surfel of some class only if its 2^ndim voxels
are not all equal ("mixed"), so only mixed corners, whose number scales with the surfaces, are
looked at beyond one O(voxels) comparison pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Mixed corners whose codes are formed at a time: bounds the (rows, 2^ndim, 2^ndim) comparison.
_CHUNK_ROWS = 1 << 18


@dataclass(frozen=True)
class Surfels:
    """The surfels of one class: flat (C-order) indices into the corner grid, ascending, and the
    area (3D, mm²) or length (2D, mm) of each."""

    corners: np.ndarray
    areas: np.ndarray


def corner_grid_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the corner grid of a volume of ``shape`` voxels: one more point per axis."""
    return tuple(int(n) + 1 for n in shape)


def surfels_by_class(
    x: np.ndarray, ids: Sequence[int], spacing: Sequence[float]
) -> dict[int, Surfels]:
    """Surfels of each class in ``ids`` present in the non-negative integer label map ``x``
    (2D or 3D; ``spacing`` in mm per voxel along each axis). Absent classes are left out."""
    ndim = x.ndim
    wanted = np.unique(np.asarray(list(ids), dtype=np.int64))
    if wanted.size == 0:
        return {}
    outside = _outside_value(x.dtype, wanted)
    if outside is None:
        x, outside = x.astype(np.int64), -1
    padded = np.pad(x, 1, constant_values=outside)
    corner_shape = corner_grid_shape(x.shape)
    offsets = list(itertools.product((0, 1), repeat=ndim))
    views = [  # the voxel at offset o of every corner: voxel i - 1 + o is padded[i + o]
        padded[tuple(slice(o, o + n) for o, n in zip(off, corner_shape, strict=True))]
        for off in offsets
    ]
    mixed = np.zeros(corner_shape, dtype=bool)
    for view in views[1:]:
        mixed |= view != views[0]
    corners = np.flatnonzero(mixed)
    values = np.stack([view[mixed] for view in views], axis=1)  # (corners, 2^ndim)
    del mixed, views, padded
    bits = (1 << np.arange(len(offsets) - 1, -1, -1)).astype(np.int64)  # offset j: 2^(2^d-1-j)
    rows, classes, codes = [], [], []
    for start in range(0, len(values), _CHUNK_ROWS):
        chunk = values[start : start + _CHUNK_ROWS]
        same = chunk[:, :, None] == chunk[:, None, :]  # (rows, j, j')
        code = same.astype(np.int64) @ bits  # code of the class of voxel j at this corner
        # voxel j represents its class at the corner iff no earlier voxel has the same class
        first = ~np.tril(same, k=-1).any(axis=2)
        keep = first & np.isin(chunk, wanted)
        r, j = np.nonzero(keep)
        rows.append(r + start)
        classes.append(chunk[r, j].astype(np.int64))
        codes.append(code[r, j])
    row = np.concatenate(rows)
    label = np.concatenate(classes)
    code = np.concatenate(codes)
    order = np.argsort(label, kind="stable")  # keeps corners ascending within a class
    row, label, code = row[order], label[order], code[order]
    table = _measure_table(spacing)
    starts = np.searchsorted(label, wanted, side="left")
    stops = np.searchsorted(label, wanted, side="right")
    out: dict[int, Surfels] = {}
    for c, a, b in zip(wanted.tolist(), starts.tolist(), stops.tolist(), strict=True):
        if b > a:
            out[c] = Surfels(corners[row[a:b]], table[code[a:b]])
    return out


def _measure_table(spacing: Sequence[float]) -> np.ndarray:
    """Surfel area (3D) or length (2D) by neighbour code, float64 (MONAI is imported here, not
    with this module, so that importing the scoring code stays light)."""
    from monai.metrics.utils import get_code_to_measure_table

    table, _ = get_code_to_measure_table([float(s) for s in spacing])
    return np.asarray(table.cpu().numpy(), dtype=np.float64)


def _outside_value(dtype: np.dtype, wanted: np.ndarray) -> int | None:
    """A value of ``dtype`` that is no requested class id, standing for voxels outside the volume
    (None when every value of ``dtype`` is requested).

    Any such value works, even one that occurs in the map: a corner is a surfel of class c only
    through the voxels equal to c, and the outside never is.
    """
    if np.issubdtype(dtype, np.signedinteger):
        return -1
    taken = set(wanted.tolist())
    candidates = range(int(np.iinfo(dtype).max), -1, -1)[: len(taken) + 1]  # one is free
    return next((value for value in candidates if value not in taken), None)
