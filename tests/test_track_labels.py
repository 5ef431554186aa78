"""A track's model and dataset must name the same organs: compared by name (case and spacing
ignored), refused with both label lists, or relabelled through an explicit mapping that the
evaluation applies."""

import json

import pytest

from harness.track.labels import LabelMismatchError, label_lut
from harness.track.spec import TrackSpec

PHANTOM = {0: "background", 1: "liver", 2: "spleen", 3: "kidneys", 4: "aorta", 5: "vertebra"}
MSD_SPLEEN = {0: "background", 1: "spleen"}


def test_the_same_names_at_the_same_ids_need_no_relabelling_whatever_their_case_and_spacing():
    dataset = {0: "Background", 1: "LIVER", 2: "Spleen", 3: " kidneys", 4: "Aorta", 5: "verte_bra"}
    assert label_lut(PHANTOM, dataset) is None


def test_a_mismatch_is_refused_naming_both_label_lists():
    with pytest.raises(LabelMismatchError) as error:
        label_lut(PHANTOM, MSD_SPLEEN)
    message = str(error.value)
    assert "model labels {0: background, 1: liver, 2: spleen, 3: kidneys" in message
    assert "dataset labels {0: background, 1: spleen}" in message
    assert "label mapping" in message


def test_the_same_names_at_other_ids_are_a_mismatch_too():
    with pytest.raises(LabelMismatchError):
        label_lut(
            {0: "background", 1: "spleen", 2: "liver"}, {0: "background", 1: "liver", 2: "spleen"}
        )


def test_a_mapping_relabels_model_classes_to_the_dataset_organs_others_to_background():
    assert label_lut(PHANTOM, MSD_SPLEEN, {"Spleen": "spleen"}) == [0, 0, 1, 0, 0, 0]
    merged = {0: "background", 1: "left kidney", 2: "right kidney"}
    assert label_lut(merged, {0: "background", 1: "kidneys"}, {
        "left_kidney": "kidneys", "Right Kidney": "kidneys"
    }) == [0, 1, 1]  # fmt: skip


@pytest.mark.parametrize(
    ("mapping", "problem"),
    [
        ({"pancreas": "spleen"}, "the mapping's 'pancreas' is not a model label"),
        ({"spleen": "liver"}, "the mapping's 'liver' is not a dataset label"),
        ({"spleen": "background"}, "no model label becomes dataset label(s) spleen"),
    ],
)
def test_a_mapping_naming_unknown_labels_or_leaving_an_organ_unpredicted_is_refused(
    mapping, problem
):
    with pytest.raises(LabelMismatchError) as error:
        label_lut(PHANTOM, MSD_SPLEEN, mapping)
    assert problem in str(error.value)
    assert "dataset labels {0: background, 1: spleen}" in str(error.value)


def test_the_track_spec_carries_the_mapping_through_json(tmp_path):
    spec = TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path, label_map={"spleen": "Spleen"})
    assert spec.label_map == (("spleen", "Spleen"),)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert TrackSpec.from_json(path) == spec
