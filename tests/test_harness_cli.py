"""End to end through the `harness` CLI on the demo bundle: demo → evaluate → study."""

import json

import jsonschema
import pytest

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.cli import main
from harness.data.demo import DEMO_CASES
from harness.demo import shipped_models
from harness.models.reference import load_reference_model
from harness.scoring.result import SCHEMA_PATH
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.simulator.scheme import QuantConfig, quantize

SCHEMA = json.loads(SCHEMA_PATH.read_text())
SHIPPED = ["unet", "segresnet", "unetr"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quiet", "--out", str(out)]) == 0
    return out


def run_cli(*args: str) -> int:
    return main([args[0], "--quiet", *args[1:]])


def test_demo_writes_the_dataset_splits_and_every_shipped_model(demo):
    meta = json.loads((demo / "dataset" / "dataset.json").read_text())
    assert meta["numTraining"] == DEMO_CASES
    splits = json.loads((demo / "dataset" / "splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 16, "calibration": 4, "test": 8}
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["calibration"]))
    assert sorted(shipped_models()) == sorted(SHIPPED)
    for name in SHIPPED:
        assert (demo / "models" / name / "model.safetensors").is_file()
    families = {load_reference_model(demo / "models" / n)[0].family for n in SHIPPED}
    assert families == {"cnn", "hybrid"}


def test_evaluate_fp32_writes_a_valid_result(demo, tmp_path):
    out = tmp_path / "fp32.json"
    assert (
        run_cli(
            "evaluate",
            "--dataset",
            str(demo / "dataset"),
            "--model",
            str(demo / "models" / "unet"),
            "--out",
            str(out),
        )
        == 0
    )
    result = json.loads(out.read_text())
    jsonschema.validate(result, SCHEMA)
    summary = result["summary"]
    assert summary["dsc_drop_pct"] == 0.0
    assert summary["dsc_ci95"][0] <= summary["mean_dsc"] <= summary["dsc_ci95"][1]
    assert len(result["cases"]) == 8 and set(result["classes"]) == {"1", "2", "3", "4", "5"}
    stages = {"io", "preprocess", "inference", "postprocess", "metrics"}
    assert stages <= set(result["timings"])
    assert [c["case_id"] for c in result["case_costs"]] == [c["case_id"] for c in result["cases"]]
    for case in result["case_costs"]:
        assert set(case["seconds"]) == stages and case["peak_rss_mb"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_study_fp32_reaches_085_and_w8a8_stays_within_one_percent(demo, tmp_path, name, capsys):
    out = tmp_path / "study.json"
    assert (
        run_cli(
            "study",
            "--dataset",
            str(demo / "dataset"),
            "--model",
            str(demo / "models" / name),
            "--out",
            str(out),
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "Precision" in table and "DSC (↓Δ%)" in table
    study = json.loads(out.read_text())
    rows = study["rows"]
    assert [(r["precision"], r["granularity"]) for r in rows] == [
        ("FP32", "none"),
        *[(p, g) for p in ("W8A8", "W4A4") for g in ("per-tensor", "per-channel", "adaptive")],
    ]
    for result in study["results"]:
        jsonschema.validate(result, SCHEMA)
    fp32 = rows[0]
    assert fp32["mean_dsc"] >= 0.85, f"{name} FP32 mean DSC {fp32['mean_dsc']:.3f}"
    for row in rows[1:4]:
        assert row["dsc_drop_pct"] <= 1.0, (
            f"{name} {row['scheme']} drops {row['dsc_drop_pct']:.2f}%"
        )
        assert row["mean_dsc"] == pytest.approx(fp32["mean_dsc"] * (1 - row["dsc_drop_pct"] / 100))


@pytest.mark.slow
def test_sensitivity_on_the_hybrid_names_its_worst_layers_and_keeping_them_fp_raises_w4a4(
    demo, tmp_path, capsys
):
    out = tmp_path / "sensitivity"
    args = ["--dataset", str(demo / "dataset"), "--model", str(demo / "models" / "unetr")]
    assert run_cli("sensitivity", *args, "--scheme", "w4a4-per-tensor", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "sensitivity.json").read_text())
    assert report["track"]["family"] == "hybrid"
    worst = report["groups"][0]
    assert worst["rank"] == 1 and f"1  {worst['group']}" in printed
    recovered = [g["dsc_recovered"] for g in report["groups"]]
    assert recovered == sorted(recovered, reverse=True)
    kept = report["keep_top_k"][0]
    assert kept["groups"] == [worst["group"]]
    assert kept["dsc"] > report["quantized_dsc"], "keeping the worst group in FP must raise W4A4"
    assert f"{report['quantized_dsc']:.4f} → {kept['dsc']:.4f}" in printed
    assert (out / "sensitivity.html").stat().st_size > 0


def test_checkpoint_submission_scores_exactly_like_the_scheme_it_was_made_with(demo, tmp_path):
    track = LoadedTrack.open(
        TrackSpec(model_dir=demo / "models" / "unet", dataset_dir=demo / "dataset")
    )
    quantized = quantize(
        track.model, QuantConfig.from_scheme("w4a4-per-channel"), track.calibration
    )
    save_checkpoint(quantized, tmp_path / "ckpt")
    args = ["--dataset", str(demo / "dataset"), "--model", str(demo / "models" / "unet")]
    assert (
        run_cli(
            "evaluate",
            *args,
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "c.json"),
        )
        == 0
    )
    assert (
        run_cli(
            "evaluate", *args, "--scheme", "w4a4-per-channel", "--out", str(tmp_path / "s.json")
        )
        == 0
    )
    from_ckpt = json.loads((tmp_path / "c.json").read_text())
    from_scheme = json.loads((tmp_path / "s.json").read_text())
    assert from_ckpt["cases"] == from_scheme["cases"]
    assert from_ckpt["submission"]["kind"] == "checkpoint"
    assert from_ckpt["submission"]["precision"]["weight_bits"] == 4


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scheme", "w9a8-per-tensor"], "weight_bits"),
        (["--scheme", "int4"], "malformed scheme 'int4'"),
        (["--test-split", "validation"], "defines no 'validation' split"),
    ],
)
def test_bad_requests_exit_2_with_a_specific_message(demo, tmp_path, capsys, extra, message):
    code = run_cli(
        "evaluate",
        "--dataset",
        str(demo / "dataset"),
        "--model",
        str(demo / "models" / "unet"),
        "--out",
        str(tmp_path / "r.json"),
        *extra,
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = run_cli(
        "evaluate",
        "--dataset",
        str(tmp_path / "nope"),
        "--model",
        str(tmp_path / "m"),
        "--out",
        str(tmp_path / "r.json"),
    )
    assert code == 2
    assert "missing dataset description" in capsys.readouterr().err


def test_evaluate_takes_the_tracks_settings_from_the_command_line(demo, tmp_path, capsys):
    """Budget, granularities, division and accuracy gate given to ``harness evaluate`` are the
    track's: a W8A8 per-channel checkpoint (8 bits + a float32 scale per channel) is refused
    under a budget of 8.01 bits per weight and on a per-tensor-only track, and scored on an open
    track with a 0.5 gate."""
    track = LoadedTrack.open(
        TrackSpec(model_dir=demo / "models" / "unet", dataset_dir=demo / "dataset")
    )
    quantized = quantize(
        track.model, QuantConfig.from_scheme("w8a8-per-channel"), track.calibration
    )
    save_checkpoint(quantized, tmp_path / "ckpt")
    args = ["--dataset", str(demo / "dataset"), "--model", str(demo / "models" / "unet"),
            "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "r.json"),
            "--weight-bits", "8", "--activation-bits", "8"]  # fmt: skip
    for extra, message in [
        (["--bits-per-weight-budget", "8.01"], "this track's budget is 8.01 bits per weight"),
        (["--granularities", "per-tensor"], "allowed: per-tensor"),
    ]:
        assert run_cli("evaluate", *args, *extra) == 2
        assert message in capsys.readouterr().err
    assert run_cli("evaluate", *args, "--division", "open", "--accuracy-gate", "0.5") == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["submission"]["precision"]["division"] == "open"
    assert result["summary"]["accuracy_gate"]["min_fraction_of_fp32"] == 0.5
