"""The pipelined evaluation loop: same numbers as scoring case by case, errors surface, no leaks."""

import shutil
import threading

import pytest
import torch

from harness.data.dataset import load_dataset
from harness.data.preprocessing import preprocess, read_case, restore_to_original
from harness.errors import DatasetError
from harness.inference.sliding_window import (
    SlidingWindowSpec,
    predict_labels,
    predict_probabilities,
)
from harness.models.reference import load_reference_model
from harness.scoring.evaluation import PIPELINE_DEPTH, evaluate_cases
from harness.scoring.metrics import dice_per_class, nsd_per_class


def _harness_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("harness-")]


def test_pipelined_evaluation_equals_scoring_each_case_in_turn(tiny_track):
    dataset_dir, model_dir = tiny_track
    dataset = load_dataset(dataset_dir)
    spec, model = load_reference_model(model_dir)
    cases = dataset.cases
    assert len(cases) > PIPELINE_DEPTH + 1  # exercises read-ahead and the scoring bound

    run = evaluate_cases(model, spec, cases, dataset.labels, 2.0)

    classes = dataset.foreground_classes
    assert [c.case_id for c in run.cases] == [c.case_id for c in cases]
    for case, got in zip(cases, run.cases, strict=True):
        loaded = read_case(case, dataset.labels)
        image = preprocess(loaded, spec.preprocessing)
        pred = restore_to_original(
            predict_labels(model, image, spec.sliding_window), image, loaded.image
        )
        assert got.dsc == dice_per_class(pred, loaded.label, classes)
        assert got.nsd == nsd_per_class(pred, loaded.label, classes, loaded.spacing, 2.0)
    stages = {"io", "preprocess", "inference", "postprocess", "metrics"}
    assert set(run.timer.seconds) == stages
    assert 0 < run.timer.seconds["inference"] <= run.wall_seconds
    for stage in stages:  # the run's busy seconds are the sum of its cases' own
        total = sum(c.seconds[stage] for c in run.cases)
        assert total == pytest.approx(run.timer.seconds[stage], rel=1e-9)
    peaks = [c.peak_rss_mb for c in run.cases]
    assert all(p > 0 for p in peaks) and peaks == sorted(peaks)  # a high-water mark
    assert _harness_threads() == []


def test_a_corrupt_case_mid_list_raises_its_error_and_leaves_no_thread(tiny_track, tmp_path):
    dataset_dir, model_dir = tiny_track
    copy = shutil.copytree(dataset_dir, tmp_path / "dataset")
    dataset = load_dataset(copy)
    broken = dataset.cases[2]
    data = broken.images[0].read_bytes()
    broken.images[0].write_bytes(data[: len(data) // 2])
    spec, model = load_reference_model(model_dir)

    with pytest.raises(DatasetError, match=f"case {broken.case_id}: .* truncated"):
        evaluate_cases(model, spec, dataset.cases, dataset.labels, 2.0)
    assert _harness_threads() == []


def test_labels_are_the_argmax_of_the_probabilities():
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 4, 3, padding=1)
    image = torch.rand(1, 20, 18, 11)
    window = SlidingWindowSpec((16, 16, 16), overlap=0.5)
    labels = predict_labels(model, image, window)
    assert labels.shape == (20, 18, 11)
    assert torch.equal(labels, predict_probabilities(model, image, window).argmax(dim=0))
    assert len(labels.unique()) > 1


def test_a_track_scores_nsd_by_its_definition_and_names_it_in_the_result(tiny_track):
    from dataclasses import replace

    from harness.entry.upload import Submission, evaluate_submission
    from harness.scoring.metrics import NsdDefinition
    from harness.track.loaded import LoadedTrack
    from harness.track.spec import TrackSpec

    dataset_dir, model_dir = tiny_track
    default = LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset_dir))
    assert default.spec.nsd_definition == "subvoxel"
    voxel = LoadedTrack(
        replace(default.spec, nsd_definition="voxel"),
        default.dataset,
        default.model_spec,
        default.model,
    )
    results = {}
    for track in (default, voxel):
        evaluated = evaluate_submission(track, Submission("fp32"))
        result, run = evaluated.result, evaluated.run
        assert result["track"]["nsd_definition"] == track.spec.nsd_definition
        case = track.test_cases[0]
        loaded = read_case(case, track.dataset.labels)
        image = preprocess(loaded, track.model_spec.preprocessing)
        window = track.model_spec.sliding_window
        pred = restore_to_original(predict_labels(track.model, image, window), image, loaded.image)
        classes = track.dataset.foreground_classes
        definition = NsdDefinition(track.spec.nsd_definition)
        expected = nsd_per_class(pred, loaded.label, classes, loaded.spacing, 2.0, definition)
        assert run.cases[0].nsd == expected
        results[definition] = result["summary"]["mean_nsd"]
    assert results[NsdDefinition.SUBVOXEL] != results[NsdDefinition.VOXEL]


def test_empty_calibration_split_serves_weight_only_schemes_and_an_empty_test_split_is_named(
    tiny_track, tmp_path
):
    from harness.data.dataset import write_splits
    from harness.entry.upload import Submission, evaluate_submission
    from harness.track.loaded import LoadedTrack
    from harness.track.spec import TrackSpec

    dataset_dir, model_dir = tiny_track
    copy = shutil.copytree(dataset_dir, tmp_path / "dataset")
    cases = [c.case_id for c in load_dataset(copy).cases]
    write_splits(copy, {"train": cases[:2], "calibration": [], "test": cases[2:3], "none": []})
    track = LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=copy))
    assert track.calibration_cases == () and track.calibration == []
    result = evaluate_submission(track, Submission("scheme", scheme="w8a16-per-channel")).result
    assert result["track"]["calibration_cases"] == []
    with pytest.raises(ValueError, match="static activation scales need at least one calibration"):
        evaluate_submission(track, Submission("scheme", scheme="w8a8-per-channel"))
    empty = LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=copy, test_split="none"))
    with pytest.raises(DatasetError, match="test split 'none' .* holds no cases"):
        evaluate_submission(empty, Submission("fp32"))
