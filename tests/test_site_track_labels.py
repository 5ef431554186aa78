"""``manage.py create_track`` checks that the model's labels name the dataset's organs: the phantom
nnU-Net (1 = liver, 2 = spleen, ...) on an MSD spleen crop (1 = spleen) is refused naming both
label lists; with ``--label-map spleen=spleen`` the track is created and its FP32 row scores the
model's spleen against the spleen label -- exactly what the same network scores on the same case
labelled with the model's own ids (the network was trained on phantoms: on this real crop it
finds no spleen, DSC 0, where comparing ids would score its liver at 0.23). Real data:
``../shared/data/real``, skipped when absent."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from leaderboard_fixtures import site_storage

from harness.demo import DEMO_SOURCES_DIR
from harness.entry.baseline import compute_reference
from harness.models.importers import import_model
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from leaderboard.submissions import pipeline
from leaderboard.submissions.models import Evaluation, Status
from leaderboard.tracks.models import Track
from leaderboard.tracks.seeding import import_dataset, queue_reference

__all__ = ["site_storage"]
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
CROP = REAL / "msd-spleen-crop"
pytestmark = [
    pytest.mark.real_data,
    pytest.mark.slow,
    pytest.mark.skipif(not CROP.is_dir(), reason=f"{CROP} is absent"),
]


def _spleen_dataset(root: Path, labels: dict[int, str], spleen_id: int) -> Path:
    """An MSD-layout dataset of the spleen crop, its spleen voxels labelled ``spleen_id``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr/spleen_2.nii.gz").write_bytes((CROP / "spleen_2_ct.nii.gz").read_bytes())
    label = nib.load(CROP / "spleen_2_label.nii.gz")
    spleen = (np.asarray(label.dataobj) > 0).astype(np.int16) * spleen_id
    nib.save(nib.Nifti1Image(spleen, label.affine), root / "labelsTr/spleen_2.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in labels.items()},
        "training": [
            {"image": "./imagesTr/spleen_2.nii.gz", "label": "./labelsTr/spleen_2.nii.gz"}
        ],
    }))  # fmt: skip
    (root / "splits.json").write_text(
        json.dumps({"calibration": ["spleen_2"], "test": ["spleen_2"]})
    )
    return root


@pytest.fixture
def phantom_nnunet(tmp_path) -> Path:
    model_dir = tmp_path / "nnunet_phantom"
    import_model(DEMO_SOURCES_DIR / "nnunet_phantom", model_dir)
    spec = json.loads((model_dir / "model.json").read_text())  # a name short enough for a slug
    (model_dir / "model.json").write_text(json.dumps(spec | {"name": "phantom-nnunet"}))
    return model_dir


def test_a_label_mismatch_is_refused_and_a_mapping_scores_the_mapped_organ(
    db, client, site_storage, tmp_path, phantom_nnunet
):
    msd = _spleen_dataset(tmp_path / "MSDSpleenCrop", {0: "background", 1: "spleen"}, 1)
    import_dataset(msd, slug="msd-spleen-crop")
    args = ["--dataset", "msd-spleen-crop", "--model", str(phantom_nnunet), "--wbits", "8"]

    with pytest.raises(CommandError) as refused:  # manage.py exits 1 with this message
        call_command("create_track", *args)
    message = str(refused.value)
    assert (
        "model labels {0: background, 1: liver, 2: spleen, 3: kidneys, 4: aorta, 5: vertebra}"
        in message
    )
    assert "dataset labels {0: background, 1: spleen}" in message
    assert not Track.objects.exists()

    call_command("create_track", *args, "--label-map", "Spleen=spleen")
    track = Track.objects.get()
    assert track.label_map == {"Spleen": "spleen"}
    page = client.get(reverse("track", args=[track.slug])).content.decode()
    assert "model <em>Spleen</em> → dataset <em>spleen</em>" in page
    reference = queue_reference(track)
    assert pipeline.run(reference.pk) == Status.DONE
    result = Evaluation.objects.get(submission=reference).result
    assert [c["name"] for c in result["per_class"].values()] == ["spleen"]
    mapped = result["cases"][0]["dsc"]

    # the same case labelled with the model's own ids, scored without a mapping: the mapped row
    # is the model's spleen (id 2) against the spleen, not its liver (id 1), which a comparison
    # of ids would have scored
    model_labels = json.loads((phantom_nnunet / "model.json").read_text())["labels"]
    own_labels = {int(k): v for k, v in model_labels.items()}
    scores = {}
    for model_id in (1, 2):
        own = _spleen_dataset(tmp_path / f"OwnIds{model_id}", own_labels, model_id)
        plain = LoadedTrack.open(TrackSpec(model_dir=phantom_nnunet, dataset_dir=own))
        scores[model_id] = compute_reference(plain).result["cases"][0]["dsc"][str(model_id)]
    assert list(mapped.values()) == [scores[2]]
    assert scores[1] != scores[2]  # the mapping changed what is scored
