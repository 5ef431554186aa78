"""Dataset folders: MSD and nnU-Net v2 layouts parsed alike, splits, and every bad input refused
with a specific message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harness.data.dataset import Case, load_dataset, write_splits
from harness.errors import DatasetError

SHAPE = (12, 10, 8)
MSD_LABELS = {"0": "background", "1": "liver", "2": "spleen"}


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


def _image() -> np.ndarray:
    return np.zeros(SHAPE, dtype=np.int16)


def _label() -> np.ndarray:
    return np.zeros(SHAPE, dtype=np.uint8)


def write_msd(
    root: Path,
    case_ids: tuple[str, ...] = ("case_a", "case_b", "case_c"),
    *,
    labels: object = None,
    modality: dict | None = None,
    **extra,
) -> Path:
    """A Decathlon-layout folder with one tiny image and label per case."""
    root.mkdir(parents=True, exist_ok=True)
    for cid in case_ids:
        _save(root / "imagesTr" / f"{cid}.nii.gz", _image())
        _save(root / "labelsTr" / f"{cid}.nii.gz", _label())
    meta = {
        "name": "Tiny",
        "modality": modality or {"0": "CT"},
        "labels": MSD_LABELS if labels is None else labels,
        "numTraining": len(case_ids),
        "training": [
            {"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"}
            for cid in case_ids
        ],
        **extra,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_nnunet(
    root: Path,
    case_ids: tuple[str, ...] = ("tiny_001", "tiny_002"),
    *,
    channels: tuple[str, ...] = ("T1", "T2"),
    labels: object = None,
    num_training: int | None = None,
) -> Path:
    """An nnU-Net v2 raw folder: ``imagesTr/<case>_<channel>.nii.gz`` and ``labelsTr/<case>``."""
    for cid in case_ids:
        for c in range(len(channels)):
            _save(root / "imagesTr" / f"{cid}_{c:04d}.nii.gz", _image())
        _save(root / "labelsTr" / f"{cid}.nii.gz", _label())
    meta = {
        "name": "TinyV2",
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": {"background": 0, "liver": 1, "spleen": 2} if labels is None else labels,
        "numTraining": len(case_ids) if num_training is None else num_training,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# ------------------------------------------------------------------------------------------------
# parsing


def test_msd_layout_gives_labels_channels_and_cases_in_listed_order(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task", ("case_b", "case_a"), modality={"0": "CT"})
    ds = load_dataset(root)
    assert ds.layout == "msd"
    assert ds.name == "Tiny"
    assert ds.labels == {0: "background", 1: "liver", 2: "spleen"}
    assert ds.foreground_classes == (1, 2)
    assert ds.channels == ("CT",)
    assert [c.case_id for c in ds.cases] == ["case_b", "case_a"]
    assert ds.cases[0] == Case(
        "case_b", (root / "imagesTr" / "case_b.nii.gz",), root / "labelsTr" / "case_b.nii.gz"
    )
    assert ds.splits == {}


def test_msd_multichannel_modalities_are_listed_in_numeric_key_order(tmp_path: Path) -> None:
    modality = {str(i): f"m{i}" for i in (10, 2, 0, 1)}
    ds = load_dataset(write_msd(tmp_path / "Task", modality=modality))
    assert ds.channels == ("m0", "m1", "m2", "m10")


def test_msd_case_without_label_entry_has_no_label(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task", ("case_a",))
    meta = json.loads((root / "dataset.json").read_text())
    del meta["training"][0]["label"]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert load_dataset(root).cases[0].label is None


def test_splits_json_names_case_lists_and_select_keeps_the_given_order(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task")
    write_splits(root, {"calibration": ["case_c"], "test": ["case_c", "case_a"]})
    ds = load_dataset(root)
    assert ds.splits == {"calibration": ("case_c",), "test": ("case_c", "case_a")}
    assert [c.case_id for c in ds.split("test")] == ["case_c", "case_a"]
    assert [c.case_id for c in ds.split("calibration")] == ["case_c"]
    assert [c.case_id for c in ds.select(["case_b", "case_c", "case_a"])] == [
        "case_b",
        "case_c",
        "case_a",
    ]


def test_nnunet_v2_layout_is_parsed_like_msd_with_one_file_per_channel(tmp_path: Path) -> None:
    root = write_nnunet(tmp_path / "Dataset001_Tiny", channels=("T1", "T2"))
    write_splits(root, {"test": ["tiny_002"]})
    ds = load_dataset(root)
    assert ds.layout == "nnunet-v2"
    assert ds.name == "TinyV2"
    assert ds.labels == {0: "background", 1: "liver", 2: "spleen"}
    assert ds.channels == ("T1", "T2")
    assert [c.case_id for c in ds.cases] == ["tiny_001", "tiny_002"]
    case = ds.cases[1]
    assert [p.name for p in case.images] == ["tiny_002_0000.nii.gz", "tiny_002_0001.nii.gz"]
    assert case.label == root / "labelsTr" / "tiny_002.nii.gz"
    assert [c.case_id for c in ds.split("test")] == ["tiny_002"]


def test_nnunet_v2_num_training_mismatch_is_refused(tmp_path: Path) -> None:
    root = write_nnunet(tmp_path / "Dataset001_Tiny", num_training=3)
    with pytest.raises(DatasetError, match="numTraining is 3 but labelsTr/ holds 2 labels"):
        load_dataset(root)


def test_nnunet_v2_missing_channel_file_is_named(tmp_path: Path) -> None:
    root = write_nnunet(tmp_path / "Dataset001_Tiny")
    (root / "imagesTr" / "tiny_002_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case tiny_002: missing file .*tiny_002_0001\.nii\.gz"):
        load_dataset(root)


def test_nnunet_v2_non_nifti_file_ending_is_refused(tmp_path: Path) -> None:
    root = write_nnunet(tmp_path / "Dataset001_Tiny")
    meta = json.loads((root / "dataset.json").read_text())
    meta["file_ending"] = ".mha"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="file_ending '.mha' is not NIfTI"):
        load_dataset(root)


# ------------------------------------------------------------------------------------------------
# refused folders and dataset.json files


def test_missing_dataset_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing dataset description: .*dataset\.json"):
        load_dataset(tmp_path)


def test_invalid_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text('{"name": "broken",')
    with pytest.raises(DatasetError, match=r"dataset\.json is not valid JSON"):
        load_dataset(tmp_path)


def test_json_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match="must hold a JSON object"):
        load_dataset(tmp_path)


def test_dataset_json_of_neither_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x", "labels": MSD_LABELS}))
    with pytest.raises(DatasetError, match="is neither MSD .* nor nnU-Net v2"):
        load_dataset(tmp_path)


def test_empty_training_list_is_refused(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task", ())
    with pytest.raises(DatasetError, match="lists no cases"):
        load_dataset(root)


@pytest.mark.parametrize("kind", ["imagesTr", "labelsTr"])
def test_missing_image_or_label_file_is_named(tmp_path: Path, kind: str) -> None:
    root = write_msd(tmp_path / "Task")
    (root / kind / "case_b.nii.gz").unlink()
    with pytest.raises(DatasetError, match=rf"case case_b: missing file .*{kind}/case_b\.nii\.gz"):
        load_dataset(root)


@pytest.mark.parametrize("field", ["image", "label"])
@pytest.mark.parametrize("rel", ["../x.nii.gz", "imagesTr/../../x.nii.gz", "ABSOLUTE"])
def test_path_escaping_the_dataset_folder_is_refused(tmp_path: Path, field: str, rel: str) -> None:
    root = write_msd(tmp_path / "Task", ("case_a",))
    outside = tmp_path / "x.nii.gz"
    _save(outside, _image())  # exists, so only the escape can be the problem
    rel = str(outside) if rel == "ABSOLUTE" else rel
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0][field] = rel
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        DatasetError, match=rf"training\[0\]: path '{re.escape(rel)}' points outside the dataset"
    ):
        load_dataset(root)


def test_symlinked_files_inside_the_folder_are_used_under_their_link_names(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _save(store / "scan_ct.nii.gz", _image())
    _save(store / "scan_seg.nii.gz", _label())
    root = write_msd(tmp_path / "Task", ("case_a",))
    for kind, target in (("imagesTr", "scan_ct"), ("labelsTr", "scan_seg")):
        (root / kind / "case_a.nii.gz").unlink()
        (root / kind / "case_a.nii.gz").symlink_to(store / f"{target}.nii.gz")
    ds = load_dataset(root)
    assert ds.cases == (
        Case("case_a", (root / "imagesTr" / "case_a.nii.gz",), root / "labelsTr" / "case_a.nii.gz"),
    )


def test_non_nifti_image_path_is_refused(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task", ("case_a",))
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["image"] = "./imagesTr/case_a.mha"
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"only NIfTI files \(\.nii, \.nii\.gz\)"):
        load_dataset(root)


# ------------------------------------------------------------------------------------------------
# case selection and splits


def test_an_empty_split_is_a_split_without_cases(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task")
    write_splits(root, {"train": ["case_a", "case_b"], "calibration": [], "test": ["case_c"]})
    ds = load_dataset(root)
    assert ds.select([]) == ()
    assert ds.split("calibration") == ()
    assert [c.case_id for c in ds.split("test")] == ["case_c"]


def test_unknown_case_ids_are_all_named(tmp_path: Path) -> None:
    ds = load_dataset(write_msd(tmp_path / "Task"))
    with pytest.raises(DatasetError, match=r"has no case\(s\) ghost, case_z \(it has 3 cases"):
        ds.select(["case_a", "ghost", "case_z"])


def test_unknown_split_name_is_refused_listing_the_defined_ones(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task")
    write_splits(root, {"train": ["case_a"], "calibration": ["case_b"]})
    ds = load_dataset(root)
    with pytest.raises(
        DatasetError, match=r"defines no 'test' split in splits\.json \(defined: calibration, train"
    ):
        ds.split("test")


def test_split_naming_an_unknown_case_is_refused_at_load_time(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task")
    write_splits(root, {"train": ["case_a"], "test": ["case_b", "ghost"]})
    with pytest.raises(DatasetError, match=r"splits\.json split 'test': .*no case\(s\) ghost"):
        load_dataset(root)


def test_split_that_is_not_a_list_of_ids_is_refused(tmp_path: Path) -> None:
    root = write_msd(tmp_path / "Task")
    (root / "splits.json").write_text(json.dumps({"test": "case_a"}))
    with pytest.raises(DatasetError, match="every split must be a list of case ids"):
        load_dataset(root)


# ------------------------------------------------------------------------------------------------
# label declarations


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"1": "liver", "2": "spleen"}, "labels must declare background as value 0"),
        ({"0": "background", "1": "liver", "01": "spleen"}, "label value 1 declared twice"),
        ({"0": "background", "300": "x"}, "label value 300 outside 0..255"),
        ({"0": "background", "liver": "1"}, "label 'liver' must map to an integer value"),
        ({}, "'labels' must be a non-empty object"),
        (["background", "liver"], "'labels' must be a non-empty object"),
    ],
)
def test_bad_msd_label_declarations_are_refused(tmp_path: Path, labels, message: str) -> None:
    root = write_msd(tmp_path / "Task", ("case_a",), labels=labels)
    with pytest.raises(DatasetError, match=message):
        load_dataset(root)


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"liver": 1, "spleen": 2}, "labels must declare background as value 0"),
        ({"background": 0, "liver": 1, "spleen": 1}, "label value 1 declared twice"),
        (
            {"background": 0, "whole_tumour": [1, 2, 3], "core": [2, 3]},
            r"label 'whole_tumour' must map to an integer value \(region-based nnU-Net labels",
        ),
    ],
)
def test_bad_nnunet_v2_label_declarations_are_refused(tmp_path: Path, labels, message) -> None:
    root = write_nnunet(tmp_path / "Dataset001_Tiny", ("tiny_001",), labels=labels)
    with pytest.raises(DatasetError, match=message):
        load_dataset(root)
