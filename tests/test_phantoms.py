"""Synthetic abdominal CT phantoms: determinism, anatomy, intensities, geometry and MSD layout."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from harness.data import phantoms as phantom_module
from harness.data.dataset import load_dataset
from harness.data.phantoms import (
    CLINICAL_LABELS,
    PHANTOM_LABELS,
    make_phantom,
    phantom_labels,
    write_phantom_dataset,
)

CASES = 4


@pytest.fixture(scope="module")
def phantoms() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [make_phantom(0, index) for index in range(CASES)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms") / "Phantom", cases=3, seed=0)


def test_same_seed_and_index_give_identical_arrays(phantoms) -> None:
    image, label, affine = make_phantom(0, 2)
    ref_image, ref_label, ref_affine = phantoms[2]
    assert image.tobytes() == ref_image.tobytes()
    assert label.tobytes() == ref_label.tobytes()
    assert affine.tobytes() == ref_affine.tobytes()


def test_case_written_in_a_dataset_equals_the_case_made_alone(phantoms, dataset: Path) -> None:
    image, label, affine = phantoms[2]
    on_disk_image = nib.load(dataset / "imagesTr" / "phantom_002.nii.gz")
    on_disk_label = nib.load(dataset / "labelsTr" / "phantom_002.nii.gz")
    np.testing.assert_array_equal(np.asarray(on_disk_image.dataobj), image)
    np.testing.assert_array_equal(np.asarray(on_disk_label.dataobj), label)
    np.testing.assert_allclose(on_disk_image.affine, affine, atol=1e-4)


def test_different_index_or_seed_gives_a_different_case(phantoms) -> None:
    (image0, label0, _), (image1, label1, _) = phantoms[:2]
    assert image0.shape != image1.shape or not np.array_equal(image0, image1)
    assert label0.shape != label1.shape or not np.array_equal(label0, label1)
    other_seed_image, _, _ = make_phantom(1, 0)
    assert other_seed_image.shape != image0.shape or not np.array_equal(other_seed_image, image0)


def test_arrays_have_declared_dtypes_and_matching_shapes(phantoms) -> None:
    for image, label, affine in phantoms:
        assert image.dtype == np.int16 and label.dtype == np.uint8 and affine.dtype == np.float64
        assert image.shape == label.shape and image.ndim == 3 and affine.shape == (4, 4)


def test_every_class_is_present_in_every_case_and_no_undeclared_value(phantoms) -> None:
    assert len(PHANTOM_LABELS) >= 6 and PHANTOM_LABELS[0] == "background"
    for _, label, _ in phantoms:
        assert set(np.unique(label).tolist()) == set(PHANTOM_LABELS)


def test_labels_lie_inside_the_body(phantoms) -> None:
    for image, label, _ in phantoms:
        tissue = image > -500
        body = np.stack(
            [ndimage.binary_fill_holes(tissue[..., k]) for k in range(image.shape[2])], -1
        )
        assert not np.any((label > 0) & ~body)
        assert np.median(image[~body]) < -950  # air outside the body


def test_each_class_has_a_distinct_ordered_median_hu(phantoms) -> None:
    for image, label, _ in phantoms:
        medians = [float(np.median(image[label == value])) for value in sorted(PHANTOM_LABELS)]
        # background (mostly air) < liver < spleen < kidneys < aorta < vertebra
        assert medians == sorted(medians)
        for a, b in itertools.combinations(medians, 2):
            assert abs(a - b) > 30, medians
        liver = medians[1]
        assert 40 < liver < 80


def test_spacing_is_anisotropic_plausible_and_varies_between_cases(phantoms) -> None:
    spacings = []
    for image, _, affine in phantoms:
        spacing = nib.affines.voxel_sizes(affine)
        assert 1.45 <= spacing[0] == spacing[1] <= 1.85
        assert 4.45 <= spacing[2] <= 5.05
        fov = np.array(image.shape) * spacing
        assert np.all(np.abs(fov - [180, 180, 170]) <= spacing)
        assert nib.aff2axcodes(affine) == ("L", "P", "S")  # scanner-like, flipped from RAS
        spacings.append(tuple(spacing))
    assert len(set(spacings)) == len(spacings)


def test_dataset_json_is_msd_style_and_files_load_on_matching_grids(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert "synthetic" in meta["description"].lower()
    assert meta["labels"] == {str(k): v for k, v in PHANTOM_LABELS.items()}
    assert meta["numTraining"] == 3 and meta["numTest"] == 0 and meta["test"] == []
    assert meta["training"][1] == {
        "image": "./imagesTr/phantom_001.nii.gz",
        "label": "./labelsTr/phantom_001.nii.gz",
    }
    parsed = load_dataset(dataset)
    assert [c.case_id for c in parsed.cases] == ["phantom_000", "phantom_001", "phantom_002"]
    assert parsed.labels == PHANTOM_LABELS
    for entry in meta["training"]:
        image = nib.load(dataset / entry["image"])
        label = nib.load(dataset / entry["label"])
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape
        np.testing.assert_allclose(image.affine, label.affine)
        for img in (image, label):
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
            np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)


def test_writing_no_cases_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        write_phantom_dataset(tmp_path / "empty", cases=0)


#: sha256 of the image, label and affine bytes of ``make_phantom(0, 0)`` as first generated: the
#: demo data, its boards and its shipped models rest on these exact arrays.
DEMO_CASE_0_SHA256 = "46a5da853db5f224bfaa221775056e1c353c55f940c7d4a27d6c54c095520a4e"


def test_demo_phantoms_stay_byte_identical() -> None:
    digest = hashlib.sha256()
    for array in make_phantom(0, 0):
        digest.update(array.tobytes())
    assert digest.hexdigest() == DEMO_CASE_0_SHA256


@pytest.fixture(scope="module")
def coarse_clinical() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clinical-size case on a 4x coarser grid over the same field of view (the full
    512x512x200 case takes minutes to draw): same code path, same anatomy scale."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(phantom_module, "CLINICAL_SHAPE", (128, 128, 50))
        patch.setattr(phantom_module, "CLINICAL_SPACING_MM", (3.2, 3.2, 10.0))
        return make_phantom(0, 0, "clinical")


def test_clinical_phantoms_have_fourteen_classes_on_the_clinical_grid(coarse_clinical) -> None:
    image, label, affine = coarse_clinical
    assert len(CLINICAL_LABELS) == 14 and phantom_labels("clinical") == CLINICAL_LABELS
    assert image.shape == label.shape == (128, 128, 50)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), (3.2, 3.2, 10.0))
    assert set(np.unique(label).tolist()) == set(CLINICAL_LABELS)
    # the body fills the wider field of view as it fills the demo's
    demo_image = make_phantom(0, 0)[0]
    fraction = (image > -500).mean()
    assert abs(fraction - (demo_image > -500).mean()) < 0.1


def test_clinical_parts_keep_left_and_right_on_the_patients_sides(coarse_clinical) -> None:
    _, label, _ = coarse_clinical
    name = {v: k for k, v in CLINICAL_LABELS.items()}
    # array axis 0 runs towards the patient's left
    x = {k: np.nonzero(label == name[k])[0].mean() for k in ("kidney_right", "kidney_left",
         "paraspinal_right", "paraspinal_left", "liver_right_lobe", "spleen")}  # fmt: skip
    assert x["kidney_right"] < x["kidney_left"]
    assert x["paraspinal_right"] < x["paraspinal_left"]
    assert x["liver_right_lobe"] < x["spleen"]


def test_an_unknown_phantom_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown phantom size"):
        write_phantom_dataset(tmp_path / "x", cases=1, size="huge")
