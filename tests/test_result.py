"""Result helpers: bootstrap CI, relative drop, TrackSpec round trip."""

import json

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.scoring.result import bootstrap_ci, relative_drop_pct
from harness.track.spec import TrackSpec


def test_bootstrap_ci_brackets_the_mean_and_is_reproducible():
    values = list(np.random.default_rng(0).uniform(0.7, 0.95, size=12))
    low, high = bootstrap_ci(values, seed=1)
    assert low < float(np.mean(values)) < high
    assert bootstrap_ci(values, seed=1) == [low, high]
    assert bootstrap_ci(values, seed=2) != [low, high]


def test_bootstrap_ci_of_identical_values_is_a_point():
    assert bootstrap_ci([0.8] * 5, seed=0) == pytest.approx([0.8, 0.8])


def test_relative_drop_is_positive_when_worse():
    assert relative_drop_pct(0.45, 0.9) == pytest.approx(50.0)
    assert relative_drop_pct(0.9, 0.9) == 0.0
    assert relative_drop_pct(0.95, 0.9) < 0


def test_track_spec_round_trips_through_json(tmp_path):
    spec = TrackSpec(model_dir=tmp_path / "m", dataset_dir=tmp_path / "d", weight_bits=4)
    path = tmp_path / "track.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert TrackSpec.from_json(path) == spec


def test_track_spec_refuses_unknown_backend_and_bad_tolerance(tmp_path):
    with pytest.raises(HarnessError, match="unknown backend 'openvino'"):
        TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path, backend="openvino")
    for backend in ("onnxruntime-cpu", "tensorrt"):  # tensorrt: runs only on a GPU worker
        assert TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path, backend=backend).backend
    with pytest.raises(HarnessError, match="nsd_tolerance_mm must be positive"):
        TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path, nsd_tolerance_mm=0)


def test_track_spec_nsd_definition_defaults_to_the_publications_and_refuses_unknown(tmp_path):
    spec = TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path)
    assert spec.nsd_definition == "subvoxel"
    voxel = TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path, nsd_definition="voxel")
    path = tmp_path / "track.json"
    path.write_text(json.dumps(voxel.to_dict()))
    assert TrackSpec.from_json(path).nsd_definition == "voxel"
    with pytest.raises(HarnessError, match="unknown nsd_definition 'area'.*subvoxel, voxel"):
        TrackSpec(model_dir=tmp_path, dataset_dir=tmp_path, nsd_definition="area")


def _document(with_hd95: bool) -> dict:
    from harness.scoring.evaluation import CaseMetrics, EvaluationRun
    from harness.scoring.result import build_result

    cases = [
        CaseMetrics(f"c{i}", {1: 0.8 + i / 100, 2: 0.7}, {1: 0.9, 2: 0.6},
                    hd95={1: 2.0 + i, 2: 5.5} if with_hd95 else {})
        for i in range(3)
    ]  # fmt: skip
    track = {
        "model": "m", "architecture": "UNet", "family": "cnn", "weights_sha256": "0" * 64,
        "dataset": "d", "test_cases": ["c0", "c1", "c2"], "nsd_tolerance_mm": 2.0,
        "nsd_definition": "subvoxel", "backend": "simulated",
    }  # fmt: skip
    return build_result(
        EvaluationRun(cases), labels={0: "bg", 1: "liver", 2: "spleen"}, track=track,
        submission={"kind": "fp32", "precision": {}}, fp32=None, seed=0, accuracy_gate=0.99,
    )  # fmt: skip


def test_result_version_3_holds_hd95_per_case_class_and_summary_and_version_2_stays_valid():
    import jsonschema

    from harness.scoring.result import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    document = _document(with_hd95=True)
    jsonschema.validate(document, schema)
    assert document["schema_version"] == 4
    assert document["cases"][1]["hd95"] == {"1": 3.0, "2": 5.5}
    assert document["cases"][1]["mean_hd95"] == pytest.approx(4.25)
    assert document["per_class"]["1"]["mean_hd95"] == pytest.approx(3.0)
    assert document["summary"]["mean_hd95"] == pytest.approx((3.75 + 4.25 + 4.75) / 3)
    assert document["summary"]["fp32_mean_hd95"] == document["summary"]["mean_hd95"]
    older = _document(with_hd95=False)
    assert "mean_hd95" not in older["summary"]
    with pytest.raises(jsonschema.ValidationError, match="mean_hd95"):
        jsonschema.validate(older, schema)  # version 3 must hold HD95
    jsonschema.validate(older | {"schema_version": 2}, schema)  # a version-2 document is valid
