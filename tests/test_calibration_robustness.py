"""Calibration robustness (harness.analysis.calibration_robustness): re-runs on calibration sets
resampled from the track's pool, the spread of mean DSC as ± calibration, in ``harness study
--calibration-resamples K`` beside the activation-calibration rows (max / percentile / MSE)."""

import json
import shutil

import jsonschema
import numpy as np
import pytest

from harness.analysis.calibration_robustness import (
    baseline_calibration_spread,
    calibration_spread,
    resampled_calibration_sets,
    with_calibration,
)
from harness.analysis.study import format_table, study_schemes
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.cli import main
from harness.entry.baseline import INT8_QDQ, compute_baseline
from harness.entry.upload import Submission, evaluate_submission, evaluate_untrusted
from harness.models.interface import ONNX_FILE
from harness.scoring.result import SCHEMA_PATH
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec


@pytest.fixture
def pooled_track(tiny_track, tmp_path):
    """The tiny track with its train cases added to its calibration pool (three cases)."""
    dataset, model = tiny_track
    copy = tmp_path / "dataset"
    shutil.copytree(dataset, copy)
    splits = json.loads((copy / "splits.json").read_text())
    splits["calibration"] += splits["train"]
    (copy / "splits.json").write_text(json.dumps(splits))
    assert len(splits["calibration"]) >= 3
    return copy, model


def test_resamples_are_bootstraps_of_the_pool_reproducible_for_a_seed():
    pool = tuple(f"case{i}" for i in range(4))
    sets = resampled_calibration_sets(pool, 3, seed=7)
    assert len(sets) == 3 and all(len(s) == 4 and set(s) <= set(pool) for s in sets)
    assert sets == resampled_calibration_sets(pool, 3, seed=7)
    assert sets != resampled_calibration_sets(pool, 3, seed=8)
    assert any(len(set(s)) < 4 for s in sets)  # with replacement
    assert len({tuple(sorted(s)) for s in sets}) == 3  # three different sets of cases
    assert len(resampled_calibration_sets(pool[:2], 5, seed=7)) == 3  # {a,a}, {a,b}, {b,b}
    assert resampled_calibration_sets(pool[:1], 3, seed=7) == []  # one case: nothing to resample
    with pytest.raises(ValueError, match=">= 0"):
        resampled_calibration_sets(pool, -1, seed=7)


def test_study_schemes_put_percentile_and_mse_calibrations_beside_max():
    assert study_schemes(["w4a4", "w4a16"], ["per-tensor"], ["symmetric", "asymmetric"],
                         ["max", "percentile", "mse"]) == [  # fmt: skip
        "w4a4-per-tensor", "w4a4-per-tensor-p99.99", "w4a4-per-tensor-mse",
        "w4a4-per-tensor-asym", "w4a4-per-tensor-asym-p99.99", "w4a4-per-tensor-asym-mse",
        "w4a16-per-tensor",  # weight-only: no activation scales to calibrate
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown activation calibration"):
        study_schemes(["w4a4"], ["per-tensor"], ["symmetric"], ["entropy"])


def test_a_rerun_on_the_pool_itself_reproduces_the_row(pooled_track):
    dataset, model = pooled_track
    track = LoadedTrack.open(TrackSpec(model_dir=model, dataset_dir=dataset))
    submission = Submission("scheme", scheme="w8a8-per-tensor")
    row = evaluate_submission(track, submission).result
    again = evaluate_submission(with_calibration(track, track.calibration_cases), submission).result
    assert again["cases"] == row["cases"]
    spread = calibration_spread(track, lambda t: evaluate_submission(t, submission).result, 2)
    assert spread["resamples"] == 2 and len(spread["mean_dsc"]) == 2
    assert spread["sd"] == pytest.approx(float(np.std(spread["mean_dsc"], ddof=1)))


def test_study_calibration_resamples_report_the_spread_per_row(pooled_track, tmp_path, capsys):
    dataset, model = pooled_track
    out = tmp_path / "study.json"
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(out),
            "--precisions", "w4a4", "--granularities", "per-tensor",
            "--activation-calibrations", "max,mse", "--calibration-resamples", "3"]  # fmt: skip
    assert main(["study", "--quiet", *args]) == 0
    table = capsys.readouterr().out
    assert "Calibration" in table and "± calibration" in table and "HD95 mm" in table
    study = json.loads(out.read_text())
    assert [(r["scheme"], r["activation_calibration"]) for r in study["rows"]] == [
        ("fp32", "none"), ("w4a4-per-tensor", "max"), ("w4a4-per-tensor-mse", "mse"),
    ]  # fmt: skip
    schema = json.loads(SCHEMA_PATH.read_text())
    pool = json.loads((dataset / "splits.json").read_text())["calibration"]
    for result, row in zip(study["results"][1:], study["rows"][1:], strict=True):
        jsonschema.validate(result, schema)
        spread = result["summary"]["calibration"]
        assert spread["resamples"] == 3 and len(spread["mean_dsc"]) == 3
        assert all(len(ids) == len(pool) and set(ids) <= set(pool)
                   for ids in spread["calibration_cases"])  # fmt: skip
        assert row["calibration_sd"] == spread["sd"] >= 0
        assert f"±{spread['sd']:.4f}" in table
    assert "calibration" not in study["results"][0]["summary"]  # FP32 is not quantized


def test_a_single_calibration_case_leaves_the_spread_undetermined(tiny_track):
    dataset, model = tiny_track
    track = LoadedTrack.open(TrackSpec(model_dir=model, dataset_dir=dataset))
    assert len(track.calibration_cases) == 1
    spread = calibration_spread(track, lambda t: pytest.fail("nothing to re-run"), 3)
    assert spread == {"resamples": 3, "mean_dsc": [], "sd": None, "range": None,
                      "calibration_cases": []}  # fmt: skip
    row = {"precision": "W4A4", "granularity": "per-tensor", "mean_dsc": 0.5, "mean_nsd": 0.5,
           "dsc_drop_pct": 1.0, "nsd_drop_pct": 1.0, "calibration_sd": None}  # fmt: skip
    assert "±" not in format_table([row])


def test_a_real_backend_baselines_reruns_score_accuracy_without_timing_latency_again(
    pooled_track, tmp_path, monkeypatch
):
    dataset, model = pooled_track
    spec = TrackSpec(model_dir=model, dataset_dir=dataset, backend="onnxruntime-cpu")
    track = LoadedTrack.open(spec)
    measured = []
    original = OnnxRuntimeBackend.measure_efficiency

    def counted(self, *args, **kwargs):
        measured.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OnnxRuntimeBackend, "measure_efficiency", counted)
    row = compute_baseline(track, method="rtn", scheme=INT8_QDQ, workdir=tmp_path / "row").result
    assert len(measured) == 1 and row["efficiency"]["size_bytes"] > 0
    assert "efficiency" in row["timings"]

    spread = baseline_calibration_spread(track, "rtn", INT8_QDQ, 2, tmp_path / "spread")
    assert len(measured) == 1  # the two re-runs measured no latency
    assert len(spread["mean_dsc"]) == 2 and spread["sd"] is not None
    again = compute_baseline(
        track, method="rtn", scheme=INT8_QDQ, workdir=tmp_path / "again", efficiency=False
    ).result
    assert again.get("efficiency") is None and "efficiency" not in again["timings"]
    assert again["cases"] == row["cases"]
    assert len(measured) == 1
    # a container's re-run: its output evaluated as an untrusted file, in a child process
    upload = Submission("onnx", onnx=tmp_path / "again" / ONNX_FILE)
    untrusted = evaluate_untrusted(track, upload, efficiency=False)
    assert untrusted.get("efficiency") is None and untrusted["cases"] == row["cases"]
