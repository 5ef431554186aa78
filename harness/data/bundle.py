"""The calibration bundle: a track's calibration cases as one ready dataset folder in Medical
Segmentation Decathlon layout, zipped — ``imagesTr/<case>.nii.gz``, a ``dataset.json`` listing
them without labels, and a ``splits.json`` naming them ``calibration`` (``train`` and ``test``
empty). Unzipped, it is the ``--dataset`` of ``harness quantize``; no label and no test case is
ever in it. The archive is deterministic (fixed member order and timestamps): the same cases give
the same bytes.
"""

from __future__ import annotations

import json
import zipfile
from typing import BinaryIO

from harness.data.dataset import SPLITS_FILE, Dataset
from harness.errors import DatasetError

FIXED_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
"""The earliest time a zip can store: members carry no build time, so bytes repeat."""
IMAGE_SUFFIXES = (".nii.gz", ".nii")


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_TIMESTAMP)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def write_calibration_bundle(dataset: Dataset, split: str, out: BinaryIO, folder: str) -> list[str]:
    """Write the bundle of ``dataset``'s ``split`` to ``out`` under the top folder ``folder``;
    returns the case ids. Cases must have one image file each (MSD holds one image per case);
    a DatasetError says which does not."""
    cases = dataset.split(split)
    images = []
    for case in cases:
        if len(case.images) != 1:
            raise DatasetError(
                f"case {case.case_id} has {len(case.images)} channel files; the MSD bundle holds "
                "one image per case"
            )
        suffix = next((s for s in IMAGE_SUFFIXES if case.images[0].name.endswith(s)), None)
        if suffix is None:
            raise DatasetError(f"{case.images[0]}: only NIfTI images (.nii, .nii.gz) are bundled")
        images.append((case, f"imagesTr/{case.case_id}{suffix}"))
    meta = {
        "name": dataset.name,
        "description": f"calibration cases ({split!r} split) of {dataset.name}; unlabeled",
        "labels": {str(value): name for value, name in sorted(dataset.labels.items())},
        "modality": {str(i): name for i, name in enumerate(dataset.channels)},
        "numTraining": len(images),
        "training": [{"image": f"./{member}"} for _, member in images],
    }
    ids = [case.case_id for case in cases]
    splits = {"train": [], "calibration": ids, "test": []}
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(_member(f"{folder}/dataset.json"), json.dumps(meta, indent=2))
        archive.writestr(_member(f"{folder}/{SPLITS_FILE}"), json.dumps(splits, indent=2))
        for case, member in images:
            archive.writestr(_member(f"{folder}/{member}"), case.images[0].read_bytes())
    return ids
