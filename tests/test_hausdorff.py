"""Tests for harness.scoring.hausdorff: HD95 equals DeepMind's ``compute_robust_hausdorff`` (the
subvoxel definition, the default) and MONAI's ``compute_hausdorff_distance(percentile=95)`` (the
voxel definition) to 1e-6 mm on random anisotropic masks and on real ones; spacing is honoured and
the empty-mask conventions are the documented ones."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import surface_distance
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage

from harness.scoring.hausdorff import EMPTY_BOTH_HD_MM, empty_one_hd_mm, hd95_per_class
from harness.scoring.metrics import MetricInputError, NsdDefinition

pytestmark = pytest.mark.filterwarnings("ignore:Please import .* from the `scipy.ndimage`")

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
TOL_MM = 1e-6
VOXEL = NsdDefinition.VOXEL


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def monai_hd(pred, label, class_ids, spacing, percentile=95.0) -> np.ndarray:
    def one_hot(x):
        return torch.from_numpy(np.stack([x == c for c in class_ids])[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about every empty class
        out = compute_hausdorff_distance(
            one_hot(pred),
            one_hot(label),
            include_background=True,
            percentile=percentile,
            spacing=[float(s) for s in spacing],
        )
    return out[0].numpy().astype(np.float64)


def deepmind_hd(pred, label, c, spacing, percent=95.0) -> float:
    distances = surface_distance.compute_surface_distances(
        label == c, pred == c, [float(s) for s in spacing]
    )
    return float(surface_distance.compute_robust_hausdorff(distances, percent))


def assert_matches_references(
    pred: np.ndarray, label: np.ndarray, class_ids: Sequence[int], spacing: Sequence[float]
) -> dict[int, float]:
    """Both definitions equal their reference on every class present in both maps; returns
    the default (subvoxel) values."""
    ours = hd95_per_class(pred, label, class_ids, spacing)
    ours_voxel = hd95_per_class(pred, label, class_ids, spacing, VOXEL)
    ref_voxel = monai_hd(pred, label, class_ids, spacing)
    compared = 0
    for i, c in enumerate(class_ids):
        if not ((pred == c).any() and (label == c).any()):
            continue
        compared += 1
        assert abs(ours_voxel[c] - ref_voxel[i]) <= TOL_MM, f"MONAI class {c}"
        assert abs(ours[c] - deepmind_hd(pred, label, c, spacing)) <= TOL_MM, f"DeepMind {c}"
    assert compared, "nothing compared"
    return ours


def random_labels(rng, shape, n_classes=4) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int16)
    for c in range(1, n_classes + 1):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
        out[noise > np.quantile(noise, 0.8)] = c
    return out


def degraded(rng, label, n_classes=4) -> np.ndarray:
    """Shifted by a voxel, with stray voxels of random classes (far outliers for HD)."""
    pred = np.roll(label, 1, axis=0).copy()
    stray = rng.random(label.shape) < 0.002
    pred[stray] = rng.integers(0, n_classes + 1, int(stray.sum()))
    return pred


@pytest.mark.parametrize(
    ("seed", "shape", "spacing"),
    [
        (0, (24, 20, 12), (0.8, 0.8, 5.0)),
        (1, (30, 16, 10), (1.5, 0.7, 3.0)),
        (2, (17, 23, 19), (1.0, 1.0, 1.0)),
        (3, (20, 26, 9), (0.795, 0.795, 5.0)),
        (4, (32, 28), (0.5, 2.0)),  # 2D
    ],
)
def test_hd95_equals_monai_and_deepmind_on_random_anisotropic_masks(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    label = random_labels(rng, shape)
    pred = degraded(rng, label)
    ours = assert_matches_references(pred, label, [1, 2, 3, 4], spacing)
    assert any(v > 0 for v in ours.values())


def test_percentile_100_is_the_plain_hausdorff_distance_of_monai():
    rng = np.random.default_rng(7)
    label = random_labels(rng, (20, 18, 10))
    pred = degraded(rng, label)
    spacing = (0.9, 0.9, 4.0)
    plain = monai_hd(pred, label, [1, 2, 3, 4], spacing, percentile=None)
    ours = hd95_per_class(pred, label, [1, 2, 3, 4], spacing, VOXEL, percentile=100)
    hd95 = hd95_per_class(pred, label, [1, 2, 3, 4], spacing, VOXEL)
    for i, c in enumerate([1, 2, 3, 4]):
        assert abs(ours[c] - plain[i]) <= TOL_MM
        assert hd95[c] <= ours[c]


def test_a_shift_along_thick_slices_costs_the_slice_thickness_not_one_voxel():
    label = np.zeros((20, 20, 12), np.uint8)
    label[5:15, 5:15, 3:9] = 1
    pred = np.roll(label, 1, axis=2)
    for definition in NsdDefinition:
        assert hd95_per_class(pred, label, [1], (0.8, 0.8, 5.0), definition)[1] == pytest.approx(
            5.0, abs=TOL_MM
        )
        assert hd95_per_class(pred, label, [1], (5.0, 0.8, 0.8), definition)[1] == pytest.approx(
            0.8, abs=TOL_MM
        )


@pytest.mark.parametrize("definition", list(NsdDefinition))
def test_empty_conventions_both_empty_zero_one_empty_the_volume_diagonal(definition):
    shape, spacing = (10, 12, 6), (1.0, 2.0, 5.0)
    label = np.zeros(shape, np.uint8)
    label[2:5, 2:5, 1:3] = 1
    pred = np.zeros(shape, np.uint8)
    pred[2:5, 2:5, 1:3] = 2  # class 1 missed, class 2 invented, class 3 absent from both
    out = hd95_per_class(pred, label, [1, 2, 3], spacing, definition)
    diagonal = math.sqrt(10**2 + 24**2 + 30**2)
    assert empty_one_hd_mm(shape, spacing) == pytest.approx(diagonal)
    assert out == {1: pytest.approx(diagonal), 2: pytest.approx(diagonal), 3: EMPTY_BOTH_HD_MM}


def test_the_brats_diagonal_of_a_240_240_155_millimetre_volume():
    assert empty_one_hd_mm((240, 240, 155), (1.0, 1.0, 1.0)) == pytest.approx(373.1287, abs=1e-4)


def test_identical_masks_score_zero_and_torch_input_is_accepted():
    label = random_labels(np.random.default_rng(3), (16, 16, 8))
    out = hd95_per_class(torch.from_numpy(label), label, [1, 2, 3, 4], (1.0, 1.0, 3.0))
    assert out == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}


@pytest.mark.parametrize(
    ("spacing", "percentile", "message"),
    [((1.0, 1.0), 95, "spacing needs 3"), ((1.0, 1.0, 1.0), 0, "percentile"),
     ((1.0, 1.0, 1.0), 101, "percentile"), ((1.0, 1.0, 1.0), "x", "percentile")],
)  # fmt: skip
def test_bad_spacing_or_percentile_raise_a_metric_input_error(spacing, percentile, message):
    x = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(MetricInputError, match=message):
        hd95_per_class(x, x, [1], spacing, percentile=percentile)


# ------------------------------------------------------------------------------------------------
# real volumes (../shared/data/real), skipped when absent

needs_real_data = pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason=f"real data not available at {REAL_DATA}"
)


def _load_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    nib = pytest.importorskip("nibabel")
    if not path.is_file():
        pytest.skip(f"{path} not available")
    img = nib.load(path)
    return np.asanyarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3])


@pytest.mark.real_data
@needs_real_data
def test_real_spleen_perturbations_equal_monai_and_deepmind():
    """Manual spleen at 0.795 × 0.795 × 5 mm: one-slice shift, erosion, in-plane shift."""
    label, spacing = _load_labels(REAL_DATA / "msd-spleen-crop" / "spleen_2_label.nii.gz")
    label = label.astype(np.uint8)
    slice_shift = np.zeros_like(label)
    slice_shift[:, :, 1:] = label[:, :, :-1]
    in_plane = np.zeros_like(label)
    in_plane[2:] = label[:-2]
    eroded = label & ndimage.binary_erosion(label, iterations=2).astype(np.uint8)
    values = {
        name: assert_matches_references(pred, label, [1], spacing)[1]
        for name, pred in [("slice", slice_shift), ("in_plane", in_plane), ("eroded", eroded)]
    }
    assert values["slice"] == pytest.approx(5.0)
    assert values["in_plane"] == pytest.approx(2 * 0.795, abs=1e-3)


@pytest.mark.real_data
@needs_real_data
def test_real_totalsegmentator_models_equal_monai_and_deepmind_on_every_shared_organ():
    ts = REAL_DATA / "totalsegmentator"
    label, spacing = _load_labels(ts / "example_seg.nii.gz")
    pred, _ = _load_labels(ts / "example_seg_fast.nii.gz")
    common = sorted((set(np.unique(label).tolist()) & set(np.unique(pred).tolist())) - {0})
    assert len(common) > 20
    ours = assert_matches_references(pred, label, common, spacing)
    ids = json.loads((ts / "labels_total_ct.json").read_text())
    assert ours[ids["spleen"]] <= ours[ids["pancreas"]]  # spleen DSC 0.98, pancreas 0.81
    only_one = sorted((set(np.unique(label).tolist()) ^ set(np.unique(pred).tolist())) - {0})
    missed = hd95_per_class(pred, label, only_one, spacing)
    diagonal = empty_one_hd_mm(label.shape, spacing)
    assert missed and all(v == pytest.approx(diagonal) for v in missed.values())
