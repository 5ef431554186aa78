"""Per-class segmentation metrics on integer label maps: Dice (DSC) and normalised surface Dice.

Definitions (P = predicted mask of class c, G = reference mask of class c):

* DSC = 2|P ∩ G| / (|P| + |G|).
* NSD at tolerance τ mm (Nikolov et al., arXiv:1809.04430), two definitions (``NsdDefinition``):

  - ``subvoxel`` (the default; the publication's own, computed by DeepMind's ``surface-distance``
    and by MONAI with ``use_subvoxels=True``): the surface ∂M of a mask M is its surface elements
    on the voxel-corner grid, each weighted by its area in mm² (``harness.scoring.surfels``), and
    d(x, S) the Euclidean distance in mm (corner coordinates scaled by ``spacing``) from corner x
    to the nearest surfel corner of S:
    NSD = (Σ_{x ∈ ∂P, d(x, ∂G) ≤ τ} area(x) + Σ_{y ∈ ∂G, d(y, ∂P) ≤ τ} area(y))
          / (Σ_{x ∈ ∂P} area(x) + Σ_{y ∈ ∂G} area(y)).
    Distances are float64 sqrt(((Δ_0 s_0)² + (Δ_1 s_1)²) + (Δ_2 s_2)²), the arithmetic of
    ``scipy.ndimage.distance_transform_edt`` that ``surface-distance`` uses, compared with τ in
    float64 as it does; the values equal ``surface_distance.compute_surface_dice_at_tolerance`` to
    float rounding (< 1e-6).
  - ``voxel`` (MONAI's ``compute_surface_dice`` default, ``use_subvoxels=False``): the surface of
    M is its edge voxels ``M & ~binary_erosion(M)`` (6-connectivity in 3D, voxels outside the
    volume count as background), each counting 1, d(x, S) the distance from voxel x to the nearest
    voxel of S:
    NSD = (|{x ∈ ∂P : d(x, ∂G) ≤ τ}| + |{y ∈ ∂G : d(y, ∂P) ≤ τ}|) / (|∂P| + |∂G|).
    As in MONAI, distances and τ are compared in float32, so a distance that equals τ up to
    float64 rounding (e.g. 3 × 0.8 mm vs 2.4 mm) counts as within tolerance.

  The two differ most when τ is below the voxel spacing: a voxel-count surface is a staircase of
  whole voxels, each as heavy as any other whatever the spacing, while surfel areas follow the
  surface's real extent in mm².

Empty-mask conventions (the same for both metrics; see ``EMPTY_BOTH_SCORE``/``EMPTY_ONE_SCORE``):

* P and G both empty → 1.0 (nothing to find and nothing found: perfect).
* exactly one of P, G empty → 0.0.

Where both masks are non-empty the values equal ``monai.metrics.compute_dice`` and, for the voxel
definition, ``monai.metrics.compute_surface_dice(..., class_thresholds=[τ] * n, spacing=spacing)``
(MONAI 1.6.1, default ``distance_metric="euclidean"``, ``use_subvoxels=False``) to float rounding
(< 1e-6).
MONAI itself returns NaN for both-empty classes in NSD and, with its default
``ignore_empty=True``, NaN for DSC whenever the reference is empty (even with false positives).

Why not just call MONAI's full-volume metrics: they need a one-hot tensor of every class over the
whole volume (~100 classes × 512×512×300 voxels is tens of GB as float and slow), and their NaN
conventions differ from the leaderboard's explicit ones. Here DSC for all classes comes from
``np.bincount`` passes over the voxels (O(voxels) in total). NSD finds the surface voxels of every
class in one O(voxels) pass over each label map (a voxel is on its class's surface iff it is on the
volume border or a face neighbour has another label, which is exactly MONAI's
``mask ^ scipy.ndimage.binary_erosion(mask)`` on its zero-padded crop), then per class measures
distances with the same ``scipy.spatial.KDTree`` nearest-neighbour query over surface-voxel
coordinates (scaled by spacing, in MONAI's crop frame) that MONAI 1.6.1 uses on CPU. Cost per class
scales with surface size, not with the bounding box, so a stray false-positive voxel far away (which
blows up a crop and a dense distance transform) costs nothing extra. Before either NSD pass both
maps are cut (as views) to the bounding box of the requested classes' voxels in either map, found
in slabs of ``_CHUNK`` voxels: the values are unchanged (see ``_crop_to_classes``), and the
O(voxels) part of the pass shrinks with the box, which a stray voxel far from the organs widens
(``benchmarks/nsd_crop.py``: on the clinical phantom, whose body fills most of the field of view,
the transient memory drops 286 → 262 MiB subvoxel and 154 → 99 MiB voxel).

Labels must be non-negative integers (integral floats and bools are accepted and converted);
torch tensors are accepted and converted to numpy. Bad input raises ``MetricInputError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import KDTree

from harness.errors import HarnessError
from harness.scoring.definitions import DEFAULT_NSD_DEFINITION, NsdDefinition
from harness.scoring.surfaces import (
    CaseSurfaces,
    class_box,
    surfaces_of,
    union_box,
)
from harness.scoring.surfels import Surfels, corner_grid_shape

if TYPE_CHECKING:
    import torch


__all__ = [
    "DEFAULT_NSD_DEFINITION",
    "EMPTY_BOTH_SCORE",
    "EMPTY_ONE_SCORE",
    "MetricInputError",
    "NsdDefinition",
    "dice_per_class",
    "mean_over_classes",
    "nsd_per_class",
]

#: Score of a class absent from both prediction and reference (DSC and NSD).
EMPTY_BOTH_SCORE: float = 1.0
#: Score of a class present in exactly one of prediction and reference (DSC and NSD).
EMPTY_ONE_SCORE: float = 0.0


# Voxels processed per chunk in the counting passes: bounds temporary memory on large volumes.
_CHUNK = 1 << 22
# KDTree leaf size as in MONAI (monai.metrics.utils.get_surface_distance). Tree shape options only
# change speed: the nearest distance and its float arithmetic are the same for any tree.
_KDTREE_LEAFSIZE = 32


class MetricInputError(HarnessError, ValueError):
    """Label maps, class ids, spacing or tolerance unusable for computing metrics."""


def dice_per_class(
    pred: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor, class_ids: Sequence[int]
) -> dict[int, float]:
    """Dice similarity coefficient DSC = 2|P∩G| / (|P|+|G|) for each class id.

    ``pred`` and ``label`` are integer label maps of the same shape; P and G are the voxels equal
    to the class id. Both empty → ``EMPTY_BOTH_SCORE`` (1.0); exactly one empty → 0.0.
    """
    pred_a, label_a = _check_pair(pred, label)
    ids = _check_class_ids(class_ids)
    if not ids:
        return {}
    n_pred, n_label, n_both = _class_counts(pred_a, label_a, max(ids))
    out: dict[int, float] = {}
    for c in ids:
        denom = int(n_pred[c]) + int(n_label[c])
        out[c] = EMPTY_BOTH_SCORE if denom == 0 else 2.0 * int(n_both[c]) / denom
    return out


def nsd_per_class(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    class_ids: Sequence[int],
    spacing: Sequence[float],
    tolerance_mm: float,
    definition: NsdDefinition | str = DEFAULT_NSD_DEFINITION,
    surfaces: CaseSurfaces | None = None,
) -> dict[int, float]:
    """Normalised surface Dice at ``tolerance_mm`` for each class id.

    NSD = (|∂P within τ of ∂G| + |∂G within τ of ∂P|) / (|∂P| + |∂G|), with |·| the surfel area
    (``subvoxel``, default) or the edge-voxel count (``voxel``) and distances Euclidean in mm
    using ``spacing`` (mm per voxel along each array axis). Both empty → ``EMPTY_BOTH_SCORE``
    (1.0); exactly one empty → 0.0. See the module docstring. ``surfaces``: the two maps'
    surfaces found already (``harness.scoring.surfaces.case_surfaces``; HD95 uses them too).
    """
    pred_a, label_a = _check_pair(pred, label)
    ids = _check_class_ids(class_ids)
    spacing_a = _check_spacing(spacing, pred_a.ndim)
    tau = _check_tolerance(tolerance_mm)
    kind = _check_definition(definition)
    if not ids:
        return {}
    found = surfaces_for(pred_a, label_a, ids, spacing_a, kind, surfaces)
    out: dict[int, float] = {}
    corners = corner_grid_shape(found.shape)
    for c in ids:
        surf_p, surf_g = found.pred.get(c), found.label.get(c)
        if surf_p is None and surf_g is None:
            out[c] = EMPTY_BOTH_SCORE
        elif surf_p is None or surf_g is None:
            out[c] = EMPTY_ONE_SCORE
        elif kind is NsdDefinition.SUBVOXEL:
            within = _area_within(surf_p, surf_g, corners, spacing_a, tau) + _area_within(
                surf_g, surf_p, corners, spacing_a, tau
            )
            out[c] = float(within / (surf_p.areas.sum() + surf_g.areas.sum()))
        else:
            out[c] = _nsd_from_surfaces(surf_p, surf_g, found.shape, spacing_a, tau)
    return out


def surfaces_for(
    pred: np.ndarray,
    label: np.ndarray,
    ids: Sequence[int],
    spacing: np.ndarray,
    definition: NsdDefinition,
    surfaces: CaseSurfaces | None = None,
) -> CaseSurfaces:
    """``surfaces`` (checked to be by ``definition``), or the surfaces of both maps found on
    their common crop (``_crop_to_classes``)."""
    if surfaces is not None:
        if surfaces.definition is not definition:
            raise MetricInputError(
                f"surfaces found by the {surfaces.definition.value} definition, asked for "
                f"{definition.value}"
            )
        return surfaces
    pred, label = _crop_to_classes(pred, label, ids)
    return CaseSurfaces(
        tuple(pred.shape),
        definition,
        surfaces_of(pred, ids, spacing, definition),
        surfaces_of(label, ids, spacing, definition),
    )


def mean_over_classes(values: Mapping[int, float]) -> float:
    """Arithmetic mean of per-class scores: sum(values) / len(values).

    The per-class functions here never return NaN; a NaN, an infinite value or an empty mapping
    raises ``MetricInputError`` instead of being silently skipped.
    """
    if not values:
        raise MetricInputError("cannot average metrics over an empty set of classes")
    scores = [float(v) for v in values.values()]
    bad = [c for c, v in zip(values.keys(), scores, strict=True) if not math.isfinite(v)]
    if bad:
        raise MetricInputError(f"non-finite metric value for class(es) {bad}")
    return math.fsum(scores) / len(scores)


# --------------------------------------------------------------------------------------------
# internals


def _crop_to_classes(
    pred: np.ndarray, label: np.ndarray, ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Both maps cut to the bounding box of the voxels of any class in ``ids`` in either map
    (views, no copy). NSD is unchanged: a surfel or edge voxel of class c lies within c's own
    box; a voxel cut away is no class in ``ids``, just as the outside of the volume is; and every
    distance is computed from coordinate differences, which the shift leaves exactly as they
    were. Both maps free of every class: nothing to cut. Each map is read in slabs
    (``harness.scoring.surfaces.class_box``), so the masks it forms stay small whatever the
    volume."""
    box = union_box(class_box(pred, ids), class_box(label, ids))
    if box is None:
        return pred, label
    return pred[box], label[box]


def _nsd_from_surfaces(
    surf_p: np.ndarray, surf_g: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray, tau: float
) -> float:
    """NSD from the sorted flat indices of the surface voxels of two non-empty masks."""
    # A surface voxel shared by both surfaces is at distance 0: counted without a tree query.
    shared_p = np.isin(surf_p, surf_g, assume_unique=True)
    shared_g = np.isin(surf_g, surf_p, assume_unique=True)
    n_shared = int(np.count_nonzero(shared_p))
    coords_p = np.stack(np.unravel_index(surf_p, shape), axis=1)
    coords_g = np.stack(np.unravel_index(surf_g, shape), axis=1)
    # Express coordinates relative to MONAI's crop origin (start of the bounding box of P ∪ G
    # minus the 1-voxel margin; a mask's box equals its surface's box) so that the float
    # arithmetic, and hence every distance, is bit-identical to MONAI's.
    origin = np.minimum(coords_p.min(axis=0), coords_g.min(axis=0)) - 1
    pts_p = (coords_p - origin).astype(np.float64) * spacing
    pts_g = (coords_g - origin).astype(np.float64) * spacing
    n_within = (
        2 * n_shared
        + _count_within(pts_p[~shared_p], pts_g, tau)
        + _count_within(pts_g[~shared_g], pts_p, tau)
    )
    return n_within / (len(pts_p) + len(pts_g))


def _area_within(
    query: Surfels, ref: Surfels, corners: tuple[int, ...], spacing: np.ndarray, tau: float
) -> float:
    """Σ area of the ``query`` surfels whose nearest ``ref`` surfel corner is within ``tau`` mm,
    the distance computed as ``scipy.ndimage.distance_transform_edt`` does (float64, per-axis
    offsets scaled by the spacing, squared and summed in axis order)."""
    shared = np.isin(query.corners, ref.corners, assume_unique=True)
    total = float(query.areas[shared].sum())
    rest = ~shared
    if not rest.any():
        return total
    points_q = np.stack(np.unravel_index(query.corners[rest], corners), axis=1)
    points_r = np.stack(np.unravel_index(ref.corners, corners), axis=1)
    # the tree only finds the nearest corner: a relative slack far above float rounding keeps
    # every corner whose recomputed distance can be <= tau
    bound = tau * (1.0 + 1e-9)
    tree = KDTree(points_r * spacing, leafsize=_KDTREE_LEAFSIZE)
    dist, nearest = tree.query(points_q * spacing, k=1, distance_upper_bound=bound)
    found = np.isfinite(dist)
    offsets = (points_r[nearest[found]] - points_q[found]).astype(np.float64) * spacing
    squared = offsets[:, 0] * offsets[:, 0]
    for axis in range(1, offsets.shape[1]):
        squared = squared + offsets[:, axis] * offsets[:, axis]
    exact = np.sqrt(squared)
    return total + float(query.areas[rest][found][exact <= tau].sum())


def _count_within(query: np.ndarray, ref: np.ndarray, tau: float) -> int:
    """Count ``query`` points whose nearest ``ref`` point is within ``tau`` (float32 compare)."""
    tau32 = np.float32(tau)
    # Any float64 distance whose float32 rounding is <= tau32 is below this bound; points farther
    # away come back as inf, which prunes the tree search without changing any counted distance.
    bound = float(np.nextafter(tau32, np.float32(np.inf))) * (1.0 + 1e-9)
    if len(query) == 0:
        return 0
    tree = KDTree(ref, leafsize=_KDTREE_LEAFSIZE, balanced_tree=False, compact_nodes=False)
    dist = tree.query(query, k=1, distance_upper_bound=bound)[0]
    return int(np.count_nonzero(dist.astype(np.float32) <= tau32))


def _class_counts(
    pred: np.ndarray, label: np.ndarray, max_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts per value 0..max_id of pred, of label, and of voxels where pred == label.

    Values above ``max_id`` are folded into one overflow bin so memory does not depend on them.
    """
    n_bins = max_id + 2
    cap = max_id + 1
    n_pred = np.zeros(n_bins, np.int64)
    n_label = np.zeros(n_bins, np.int64)
    n_both = np.zeros(n_bins, np.int64)
    flat_p = pred.reshape(-1)
    flat_g = label.reshape(-1)
    for start in range(0, flat_p.size, _CHUNK):
        p = _capped(flat_p[start : start + _CHUNK], cap)
        g = _capped(flat_g[start : start + _CHUNK], cap)
        n_pred += np.bincount(p, minlength=n_bins)
        n_label += np.bincount(g, minlength=n_bins)
        n_both += np.bincount(g[p == g], minlength=n_bins)
    return n_pred, n_label, n_both


def _capped(values: np.ndarray, cap: int) -> np.ndarray:
    """``min(values, cap)`` as intp for bincount (no clipping if the dtype cannot exceed cap)."""
    if cap < np.iinfo(values.dtype).max:
        values = np.minimum(values, values.dtype.type(cap))
    return values.astype(np.intp, copy=False)


def _to_label_array(x: Any, name: str) -> np.ndarray:
    """Convert a label map (numpy array, torch tensor, array-like) to a non-negative int array."""
    if not isinstance(x, np.ndarray) and hasattr(x, "detach"):  # torch tensor, without importing
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr.view(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not np.all(np.isfinite(arr)):
            raise MetricInputError(f"{name} contains NaN or infinite values")
        if arr.size and not np.array_equal(arr, np.round(arr)):
            raise MetricInputError(f"{name} must hold integer class ids, got non-integral values")
        if arr.size and arr.max() > np.iinfo(np.int32).max:
            raise MetricInputError(f"{name} holds a class id too large for a label map")
        arr = arr.astype(np.int32)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise MetricInputError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    if arr.dtype == np.uint64:
        if arr.size and arr.max() > np.iinfo(np.int64).max:
            raise MetricInputError(f"{name} holds a class id too large for a label map")
        arr = arr.astype(np.int64)
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise MetricInputError(f"{name} contains negative class ids")
    return arr


def _check_pair(pred: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    pred_a = _to_label_array(pred, "prediction")
    label_a = _to_label_array(label, "label")
    if pred_a.shape != label_a.shape:
        raise MetricInputError(
            f"prediction shape {pred_a.shape} does not match label shape {label_a.shape}"
        )
    if pred_a.ndim not in (2, 3):
        raise MetricInputError(f"label maps must be 2D or 3D, got shape {pred_a.shape}")
    return pred_a, label_a


def _check_class_ids(class_ids: Sequence[int]) -> list[int]:
    ids: list[int] = []
    for c in class_ids:
        if isinstance(c, bool) or not isinstance(c, int | np.integer):
            raise MetricInputError(f"class ids must be integers, got {c!r}")
        if c < 0:
            raise MetricInputError(f"class ids must be non-negative, got {c}")
        ids.append(int(c))
    return ids


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    try:
        sp = np.asarray([float(s) for s in spacing], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"spacing must be a sequence of numbers, got {spacing!r}") from exc
    if sp.shape != (ndim,):
        raise MetricInputError(f"spacing needs {ndim} values (one per axis), got {len(sp)}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise MetricInputError(f"spacing values must be finite and > 0, got {sp.tolist()}")
    return sp


def _check_definition(definition: NsdDefinition | str) -> NsdDefinition:
    try:
        return NsdDefinition(definition)
    except ValueError:
        allowed = ", ".join(d.value for d in NsdDefinition)
        raise MetricInputError(
            f"unknown NSD definition {definition!r} (expected one of: {allowed})"
        ) from None


def _check_tolerance(tolerance_mm: float) -> float:
    try:
        tau = float(tolerance_mm)
    except (TypeError, ValueError) as exc:
        raise MetricInputError(f"tolerance must be a number, got {tolerance_mm!r}") from exc
    if not math.isfinite(tau) or tau <= 0:
        raise MetricInputError(f"tolerance must be finite and > 0 mm, got {tolerance_mm!r}")
    return tau
