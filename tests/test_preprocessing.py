"""Reading cases safely (grids, corruption, label values) and preprocessing them: orientation,
resampling, intensity normalisation, and restoring predictions onto the original grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from harness.data.dataset import Case, load_dataset
from harness.data.preprocessing import (
    LoadedCase,
    PreprocessSpec,
    preprocess,
    read_case,
    restore_to_original,
)
from harness.errors import DatasetError

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
SHAPE = (12, 10, 8)
LABELS = {0: "background", 1: "liver", 2: "spleen"}


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    """Tiny volumes: torch's thread pool only slows them down on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), signs=(1, 1, 1)) -> np.ndarray:
    affine = np.diag([*(s * d for s, d in zip(signs, spacing, strict=True)), 1.0])
    affine[:3, 3] = origin
    return affine


def _blocky_label(shape=SHAPE) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[2:7, 1:6, 1:5] = 1
    label[7:11, 5:9, 4:7] = 2
    return label


def _write_case(
    tmp_path: Path,
    image: np.ndarray | None = None,
    label: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
    label_affine: np.ndarray | None = None,
) -> Case:
    image = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) if image is None else image
    label = _blocky_label() if label is None else label
    affine = _affine() if affine is None else affine
    img = _save(tmp_path / "imagesTr" / "c1.nii.gz", image, affine)
    lab = _save(
        tmp_path / "labelsTr" / "c1.nii.gz", label, affine if label_affine is None else label_affine
    )
    return Case("c1", (img,), lab)


def _loaded(image: np.ndarray, affine: np.ndarray, label: np.ndarray | None = None) -> LoadedCase:
    image = image[None] if image.ndim == 3 else image
    tensor = MetaTensor(torch.from_numpy(image.astype(np.float32)), affine=torch.as_tensor(affine))
    lab = None if label is None else label.astype(np.int16)
    spacing = tuple(float(z) for z in nib.affines.voxel_sizes(affine))
    return LoadedCase("c1", tensor, lab, spacing)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------------------------------------
# read_case


def test_read_case_gives_channel_first_image_int_label_and_spacing(tmp_path: Path) -> None:
    affine = _affine((2.0, 1.5, 3.0), origin=(-5.0, 4.0, 1.0))
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    loaded = read_case(_write_case(tmp_path, image, affine=affine), LABELS)
    assert loaded.case_id == "c1"
    assert tuple(loaded.image.shape) == (1, *SHAPE)
    assert loaded.image.dtype == torch.float32
    np.testing.assert_array_equal(loaded.image[0].numpy(), image)
    np.testing.assert_allclose(loaded.image.affine.numpy(), affine)
    assert loaded.label.dtype == np.int16
    np.testing.assert_array_equal(loaded.label, _blocky_label())
    assert loaded.spacing == pytest.approx((2.0, 1.5, 3.0))


def test_image_label_shape_mismatch_is_refused(tmp_path: Path) -> None:
    case = _write_case(tmp_path, label=np.zeros((12, 10, 7), dtype=np.uint8))
    with pytest.raises(
        DatasetError, match=r"case c1: c1\.nii\.gz has shape \(12, 10, 7\), image has \(12, 10, 8\)"
    ):
        read_case(case, LABELS)


@pytest.mark.parametrize(
    "label_affine, detail",
    [
        (_affine((1.0, 1.0, 2.0)), r"spacing \[1\.0, 1\.0, 2\.0\] vs \[1\.0, 1\.0, 1\.0\]"),
        (_affine(origin=(0.0, 5.0, 0.0)), r"origin \[0\.0, 5\.0, 0\.0\] vs \[0\.0, 0\.0, 0\.0\]"),
    ],
)
def test_label_on_a_different_grid_is_refused(tmp_path: Path, label_affine, detail: str) -> None:
    case = _write_case(tmp_path, label_affine=label_affine)
    with pytest.raises(DatasetError, match=rf"c1\.nii\.gz has a different affine.*{detail}"):
        read_case(case, LABELS)


@pytest.mark.parametrize("which", ["imagesTr", "labelsTr"])
def test_truncated_gzip_file_is_refused_naming_the_file(tmp_path: Path, which: str) -> None:
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)  # ~3.5 kB gzipped
    case = _write_case(tmp_path, image)
    path = case.images[0] if which == "imagesTr" else case.label
    data = path.read_bytes()
    # The image is cut in half; the label (~100 bytes gzipped) loses only its end, since cut in
    # half it would lose the header and be reported as unreadable (as the garbage file below).
    path.write_bytes(data[: len(data) // 2] if which == "imagesTr" else data[:-16])
    with pytest.raises(
        DatasetError, match=rf"case c1: \S*{which}/c1\.nii\.gz is truncated or not valid gzip"
    ):
        read_case(case, LABELS)


def test_gzip_cut_inside_the_header_is_refused_naming_the_file(tmp_path: Path) -> None:
    case = _write_case(tmp_path)
    data = case.label.read_bytes()
    case.label.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"case c1: \S*labelsTr/c1\.nii\.gz is not a readable"):
        read_case(case, LABELS)


def test_garbage_file_named_nii_gz_is_refused_naming_the_file(tmp_path: Path) -> None:
    case = _write_case(tmp_path)
    case.images[0].write_bytes(b"this is not a NIfTI volume at all\n" * 20)
    with pytest.raises(
        DatasetError, match=r"case c1: \S*imagesTr/c1\.nii\.gz is not a readable NIfTI file"
    ):
        read_case(case, LABELS)


def test_label_values_outside_the_declared_set_are_listed(tmp_path: Path) -> None:
    label = _blocky_label()
    label[0, 0, 0], label[1, 1, 1] = 7, 3
    case = _write_case(tmp_path, label=label)
    with pytest.raises(
        DatasetError, match=r"label values \[3, 7\] are not declared .*\(declared: \[0, 1, 2\]\)"
    ):
        read_case(case, LABELS)


def test_label_values_are_not_checked_without_a_declaration(tmp_path: Path) -> None:
    label = _blocky_label()
    label[0, 0, 0] = 7
    assert read_case(_write_case(tmp_path, label=label)).label[0, 0, 0] == 7


def test_non_integer_float_label_values_are_refused(tmp_path: Path) -> None:
    label = _blocky_label().astype(np.float32)
    label[0, 0, 0] = 0.5
    case = _write_case(tmp_path, label=label)
    with pytest.raises(DatasetError, match=r"label c1\.nii\.gz holds non-integer values"):
        read_case(case, LABELS)


def test_float_label_with_whole_values_is_read_as_integers(tmp_path: Path) -> None:
    case = _write_case(tmp_path, label=_blocky_label().astype(np.float32))
    loaded = read_case(case, LABELS)
    assert loaded.label.dtype == np.int16
    np.testing.assert_array_equal(loaded.label, _blocky_label())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_image_values_are_refused(tmp_path: Path, bad: float) -> None:
    image = np.zeros(SHAPE, dtype=np.float32)
    image[3, 4, 5] = bad
    with pytest.raises(DatasetError, match="case c1: image contains NaN or infinite values"):
        read_case(_write_case(tmp_path, image), LABELS)


def test_four_dimensional_msd_image_gives_one_channel_per_volume(tmp_path: Path) -> None:
    image = np.stack([np.full(SHAPE, 10.0 * c, dtype=np.float32) for c in range(3)], axis=-1)
    loaded = read_case(_write_case(tmp_path, image), LABELS)
    assert tuple(loaded.image.shape) == (3, *SHAPE)
    assert [float(loaded.image[c].mean()) for c in range(3)] == [0.0, 10.0, 20.0]


def test_nnunet_channel_files_are_stacked_in_channel_order(tmp_path: Path) -> None:
    paths = tuple(
        _save(tmp_path / f"c1_{c:04d}.nii.gz", np.full(SHAPE, c + 1.0, dtype=np.float32))
        for c in range(2)
    )
    label = _save(tmp_path / "c1.nii.gz", _blocky_label())
    loaded = read_case(Case("c1", paths, label), LABELS)
    assert tuple(loaded.image.shape) == (2, *SHAPE)
    assert [float(loaded.image[c].mean()) for c in range(2)] == [1.0, 2.0]


def test_channel_file_on_a_different_grid_is_refused(tmp_path: Path) -> None:
    first = _save(tmp_path / "c1_0000.nii.gz", np.zeros(SHAPE, dtype=np.float32))
    second = _save(tmp_path / "c1_0001.nii.gz", np.zeros((12, 10, 9), dtype=np.float32))
    with pytest.raises(DatasetError, match=r"c1_0001\.nii\.gz has shape \(12, 10, 9\)"):
        read_case(Case("c1", (first, second), None), with_label=False)


def test_without_label_the_label_file_is_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "Task"
    case = _write_case(root)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "liver", "2": "spleen"},
                "training": [{"image": "imagesTr/c1.nii.gz", "label": "labelsTr/c1.nii.gz"}],
            }
        )
    )
    ds = load_dataset(root)
    case.label.unlink()
    loaded = read_case(ds.cases[0], ds.labels, with_label=False)
    assert loaded.label is None
    assert tuple(loaded.image.shape) == (1, *SHAPE)
    with pytest.raises(DatasetError, match=r"case c1: missing file .*labelsTr/c1\.nii\.gz"):
        read_case(ds.cases[0], ds.labels)


def test_label_requested_for_a_case_without_one_is_refused(tmp_path: Path) -> None:
    case = _write_case(tmp_path)
    with pytest.raises(DatasetError, match="case c1: no label file"):
        read_case(Case("c1", case.images, None), LABELS)


# ------------------------------------------------------------------------------------------------
# PreprocessSpec


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"intensity_window": (100.0, 100.0)}, r"intensity_window must be \(low, high\)"),
        ({"intensity_window": (240.0, -160.0)}, r"intensity_window must be \(low, high\)"),
        ({"normalisation": "window"}, "normalisation 'window' needs intensity_window"),
        ({"normalisation": "softmax"}, "unknown normalisation 'softmax'"),
        ({"normalisation": "percentile"}, "'percentile' needs intensity_percentiles"),
        (
            {"normalisation": "minmax", "intensity_percentiles": (1.0, 99.0)},
            "'percentile' needs intensity_percentiles .* only it",
        ),
        (
            {"normalisation": "percentile", "intensity_percentiles": (99.0, 1.0)},
            "0 <= low < high <= 100",
        ),
        ({"normalisation": "none", "spacing": (1.0, 0.0, 1.0)}, "three positive numbers"),
        ({"normalisation": "none", "spacing": (1.0, -2.0, 1.0)}, "three positive numbers"),
        ({"normalisation": "none", "spacing": (1.0, 1.0)}, "three positive numbers"),
    ],
)
def test_invalid_preprocess_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessSpec(**kwargs)


def test_spec_round_trips_through_a_dict() -> None:
    spec = PreprocessSpec("RAS", (1.5, 1.5, 5.0), (-160.0, 240.0), "window")
    data = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_dict(data) == spec


# ------------------------------------------------------------------------------------------------
# preprocess


def test_orientation_to_ras_flips_an_lps_volume_keeping_world_positions() -> None:
    affine = _affine((2.0, 2.0, 2.0), origin=(30.0, 20.0, -7.0), signs=(-1, -1, 1))
    image = np.zeros(SHAPE, dtype=np.float32)
    image[1, 2, 3] = 1.0
    out = preprocess(_loaded(image, affine), PreprocessSpec(normalisation="none"))
    assert tuple(out.shape) == (1, *SHAPE)
    assert nib.aff2axcodes(out.affine.numpy()) == ("R", "A", "S")
    marker = tuple(int(i) for i in np.argwhere(out[0].numpy() == 1.0)[0])
    assert marker == (SHAPE[0] - 1 - 1, SHAPE[1] - 1 - 2, 3)
    world_before = affine @ np.array([1, 2, 3, 1.0])
    world_after = out.affine.numpy() @ np.array([*marker, 1.0])
    np.testing.assert_allclose(world_after, world_before, atol=1e-4)


def test_resampling_from_2_to_4_mm_halves_the_size() -> None:
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    spec = PreprocessSpec(spacing=(4.0, 4.0, 4.0), normalisation="none")
    out = preprocess(_loaded(image, _affine((2.0, 2.0, 2.0))), spec)
    assert out.shape[0] == 1
    for got, before in zip(out.shape[1:], SHAPE, strict=True):
        assert abs(got - before / 2) <= 1
    assert nib.affines.voxel_sizes(out.affine.numpy()) == pytest.approx((4.0, 4.0, 4.0))


def test_window_maps_low_high_to_zero_one_and_clips_outside() -> None:
    image = np.linspace(-500.0, 600.0, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    spec = PreprocessSpec(intensity_window=(-100.0, 300.0), normalisation="window")
    out = preprocess(_loaded(image, _affine()), spec)[0].numpy()
    np.testing.assert_allclose(out, np.clip((image + 100.0) / 400.0, 0.0, 1.0), atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_zscore_gives_zero_mean_unit_std_per_channel() -> None:
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(50.0, 20.0, SHAPE), rng.normal(-3.0, 0.1, SHAPE)])
    out = preprocess(_loaded(image, _affine()), PreprocessSpec(normalisation="zscore"))
    assert out.dtype == torch.float32
    for c in range(2):
        assert float(out[c].mean()) == pytest.approx(0.0, abs=1e-4)
        assert float(out[c].std(unbiased=False)) == pytest.approx(1.0, abs=1e-3)


def test_zscore_with_a_window_clips_before_normalising() -> None:
    image = np.random.default_rng(0).normal(0.0, 50.0, SHAPE).astype(np.float32)
    image[0, 0, 0] = 1e6
    spec = PreprocessSpec(intensity_window=(-100.0, 100.0), normalisation="zscore")
    out = preprocess(_loaded(image, _affine()), spec)[0].numpy()
    clipped = np.clip(image, -100.0, 100.0)
    np.testing.assert_allclose(out, (clipped - clipped.mean()) / clipped.std(), atol=1e-4)


def test_minmax_maps_each_channels_range_to_zero_one() -> None:
    rng = np.random.default_rng(3)
    image = np.stack([rng.normal(40.0, 300.0, SHAPE), rng.uniform(2.0, 3.0, SHAPE)])
    out = preprocess(_loaded(image, _affine()), PreprocessSpec(normalisation="minmax")).numpy()
    for c in range(2):
        lo, hi = image[c].min(), image[c].max()
        np.testing.assert_allclose(out[c], (image[c] - lo) / (hi - lo), atol=1e-6)


def test_percentile_scaling_maps_the_percentiles_to_zero_one_and_clips_the_tails() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(0.0, 100.0, SHAPE).astype(np.float32)
    image[0, 0, 0], image[1, 1, 1] = 1e5, -1e5  # outliers a min-max scaling would be ruled by
    spec = PreprocessSpec(normalisation="percentile", intensity_percentiles=(0.5, 99.5))
    out = preprocess(_loaded(image, _affine()), spec)[0].numpy()
    lo, hi = np.percentile(image, [0.5, 99.5])
    np.testing.assert_allclose(out, np.clip((image - lo) / (hi - lo), 0.0, 1.0), atol=1e-5)
    assert 0.4 < float(np.median(out)) < 0.6
    data = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_dict(data) == spec


def test_preprocessed_label_is_resampled_nearest_keeping_integer_declared_values() -> None:
    affine = _affine((1.0, 1.0, 3.0), signs=(-1, -1, 1))
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    label = _blocky_label()
    label[label == 1] = 0  # only 0 and 2: any interpolation would create 1s at the edges
    spec = PreprocessSpec(spacing=(1.7, 1.3, 1.9), normalisation="none")
    image_out, label_out = preprocess(_loaded(image, affine, label), spec, with_label=True)
    assert label_out.dtype == torch.int64
    assert tuple(label_out.shape) == tuple(image_out.shape[1:])
    assert set(torch.unique(label_out).tolist()) == {0, 2}


def test_restore_brings_a_preprocessed_label_back_onto_the_original_grid() -> None:
    shape = (24, 20, 8)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:14, 3:15, 1:5] = 1
    label[12:22, 8:19, 3:8] = 2
    affine = _affine((0.8, 0.8, 3.0), origin=(10.0, -4.0, 2.0), signs=(-1, -1, 1))
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    loaded = _loaded(image, affine, label)
    spec = PreprocessSpec(spacing=(1.2, 1.2, 1.5), normalisation="none")
    image_out, label_out = preprocess(loaded, spec, with_label=True)
    assert tuple(label_out.shape) != shape  # really resampled
    restored = restore_to_original(label_out, image_out, loaded.image)
    assert restored.shape == shape
    assert restored.dtype == np.int16
    for cls in (1, 2):
        assert _dice(restored == cls, label == cls) > 0.9, cls


def test_restore_after_reorientation_alone_gives_back_the_exact_label() -> None:
    affine = _affine((0.8, 1.1, 3.0), origin=(10.0, -4.0, 2.0), signs=(-1, -1, 1))
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    loaded = _loaded(image, affine, _blocky_label())
    spec = PreprocessSpec(normalisation="none")
    image_out, label_out = preprocess(loaded, spec, with_label=True)
    assert not np.array_equal(label_out.numpy(), _blocky_label())  # really flipped
    restored = restore_to_original(label_out, image_out, loaded.image)
    np.testing.assert_array_equal(restored, _blocky_label())


# ------------------------------------------------------------------------------------------------
# real volume (../shared/data/real), skipped when absent

SPLEEN = REAL_DATA / "msd-spleen-crop"


@pytest.mark.real_data
@pytest.mark.skipif(not SPLEEN.is_dir(), reason=f"real data not available at {SPLEEN}")
def test_real_spleen_case_preprocesses_and_restores(tmp_path: Path) -> None:
    root = tmp_path / "Task09_Spleen"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "spleen_2.nii.gz").symlink_to(SPLEEN / "spleen_2_ct.nii.gz")
    (root / "labelsTr" / "spleen_2.nii.gz").symlink_to(SPLEEN / "spleen_2_label.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "name": "Spleen",
                "modality": {"0": "CT"},
                "labels": {"0": "background", "1": "spleen"},
                "training": [
                    {"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}
                ],
            }
        )
    )
    ds = load_dataset(root)
    loaded = read_case(ds.select(["spleen_2"])[0], ds.labels)
    assert tuple(loaded.image.shape) == (1, 164, 166, 26)
    assert loaded.spacing == pytest.approx((0.795, 0.795, 5.0), abs=1e-3)
    assert set(np.unique(loaded.label).tolist()) == {0, 1}

    spec = PreprocessSpec("RAS", (1.5, 1.5, 5.0), (-160.0, 240.0), "window")
    image, label = preprocess(loaded, spec, with_label=True)
    expected = (164 * 0.79492 / 1.5, 166 * 0.79492 / 1.5, 26)
    assert image.shape[0] == 1
    for got, want in zip(image.shape[1:], expected, strict=True):
        assert abs(got - want) <= 1
    assert tuple(label.shape) == tuple(image.shape[1:])
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert set(torch.unique(label).tolist()) == {0, 1}
    # the spleen (~100-150 HU) sits inside the window, neither clipped to 0 nor to 1
    spleen_values = image[0][label == 1]
    assert 0.4 < float(spleen_values.median()) < 0.85

    restored = restore_to_original(label, image, loaded.image)
    assert restored.shape == loaded.label.shape
    assert _dice(restored == 1, loaded.label == 1) > 0.9


def test_axis_aligned_restore_equals_monai_spatial_resample_on_phantoms(tmp_path):
    from monai.transforms import SpatialResample

    from harness.data.dataset import load_dataset
    from harness.data.demo import make_phantoms

    dataset = load_dataset(make_phantoms(tmp_path / "ds", cases=3, seed=4))
    spec = PreprocessSpec(spacing=(3.0, 3.0, 5.5), intensity_window=(-200.0, 600.0))
    for case in dataset.cases:
        loaded = read_case(case, dataset.labels)
        image, label = preprocess(loaded, spec, with_label=True)
        ours = restore_to_original(label, image, loaded.image)
        moving = MetaTensor(label.as_tensor()[None].float(), affine=image.affine)
        monai = SpatialResample(mode="nearest", padding_mode="border")(
            moving, dst_affine=loaded.image.affine, spatial_size=loaded.image.shape[1:]
        )
        assert np.array_equal(ours, monai.as_tensor()[0].round().numpy().astype(np.int16))
