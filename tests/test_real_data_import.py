"""Real CT through an imported model, end to end: the TotalSegmentator CT example and the MSD
spleen case (``../shared/data/real``) converted into an MSD-layout dataset with the demo's label
set, and the shipped nnU-Net v2 demo folder, imported, evaluated on them in FP32 and at W8A8.
Skipped when the folder is absent. The demo network was trained on phantoms, so its accuracy on
real CT is not the point: the geometry (3 mm iso and 0.8 × 0.8 × 5 mm, other orientations),
intensities, restoration to the label grid and metrics are."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from harness.data.phantoms import PHANTOM_LABELS
from harness.demo import DEMO_SOURCES_DIR
from harness.entry.baseline import compute_baseline, compute_reference
from harness.models.importers import import_model
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
pytestmark = [
    pytest.mark.real_data,
    pytest.mark.slow,
    pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is absent"),
]
#: TotalSegmentator class names → the demo's classes (kidneys and vertebrae merged).
TOTALSEG_TO_DEMO = {"liver": "liver", "spleen": "spleen", "kidney_left": "kidneys",
                    "kidney_right": "kidneys", "aorta": "aorta"}  # fmt: skip


def convert(root: Path) -> Path:
    """An MSD-layout dataset of the two real cases, labels mapped onto the demo's classes (the
    spleen case labels only the spleen: its other organs count as background)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    ids = {name: value for value, name in PHANTOM_LABELS.items()}
    totalseg = json.loads((REAL / "totalsegmentator/labels_total_ct.json").read_text())
    seg = nib.load(REAL / "totalsegmentator/example_seg_fast_force_split.nii.gz")
    raw = np.asarray(seg.dataobj).astype(np.int16)
    mapped = np.zeros_like(raw)
    for name, value in totalseg.items():
        target = TOTALSEG_TO_DEMO.get(name, "vertebra" if name.startswith("vertebrae") else None)
        if target is not None:
            mapped[raw == value] = ids[target]
    cases = {
        "totalseg_example": (REAL / "totalsegmentator/example_ct.nii.gz",
                             nib.Nifti1Image(mapped, seg.affine)),
        "msd_spleen_2": (REAL / "msd-spleen-crop/spleen_2_ct.nii.gz",
                         _spleen_label(REAL / "msd-spleen-crop/spleen_2_label.nii.gz", ids)),
    }  # fmt: skip
    training = []
    for case_id, (image, label) in cases.items():
        (root / "imagesTr" / f"{case_id}.nii.gz").write_bytes(image.read_bytes())
        nib.save(label, root / "labelsTr" / f"{case_id}.nii.gz")
        training.append({"image": f"./imagesTr/{case_id}.nii.gz",
                         "label": f"./labelsTr/{case_id}.nii.gz"})  # fmt: skip
    (root / "dataset.json").write_text(json.dumps({
        "name": "RealAbdomenCT", "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in PHANTOM_LABELS.items()}, "training": training,
    }))  # fmt: skip
    (root / "splits.json").write_text(
        json.dumps({"calibration": ["totalseg_example"], "test": list(cases)})
    )
    return root


def _spleen_label(path: Path, ids: dict[str, int]) -> nib.Nifti1Image:
    img = nib.load(path)
    spleen = (np.asarray(img.dataobj) > 0).astype(np.int16) * ids["spleen"]
    return nib.Nifti1Image(spleen, img.affine)


def test_real_ct_runs_through_an_imported_nnunet_in_fp32_and_w8a8(tmp_path):
    dataset = convert(tmp_path / "real")
    import_model(DEMO_SOURCES_DIR / "nnunet_phantom", tmp_path / "model")
    track = LoadedTrack.open(TrackSpec(model_dir=tmp_path / "model", dataset_dir=dataset,
                                       weight_bits=8, activation_bits=8))  # fmt: skip
    fp32 = compute_reference(track).result
    w8a8 = compute_baseline(
        track, method="rtn", scheme="w8a8-per-channel", workdir=tmp_path / "rtn"
    ).result
    for result in (fp32, w8a8):
        cases = {c["case_id"]: c for c in result["cases"]}
        assert set(cases) == {"totalseg_example", "msd_spleen_2"}
        for case in cases.values():
            values = [*case["dsc"].values(), *case["nsd"].values()]
            assert values and all(0.0 <= v <= 1.0 for v in values)
    fp32_cases = {c["case_id"]: c for c in fp32["cases"]}
    w8a8_cases = {c["case_id"]: c for c in w8a8["cases"]}
    for case_id in fp32_cases:  # W8A8 of a CNN stays close to its FP32 on every case
        assert (
            abs(
                np.mean(list(w8a8_cases[case_id]["dsc"].values()))
                - np.mean(list(fp32_cases[case_id]["dsc"].values()))
            )
            < 0.05
        )
