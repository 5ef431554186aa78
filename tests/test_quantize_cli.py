"""`harness quantize` for every reference method and `harness study --methods` (tiny track)."""

import json

import jsonschema
import pytest
import torch

from harness.artifacts.checkpoint.describe import describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.storage import MANIFEST_NAME
from harness.cli import main
from harness.models.reference import load_reference_model
from harness.scoring.result import SCHEMA_PATH

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _quantize(tiny_track, out, *args: str) -> int:
    dataset, model = tiny_track
    return main(
        ["quantize", "--quiet", "--dataset", str(dataset), "--model", str(model)]
        + ["--out", str(out), *args]
    )


@pytest.mark.parametrize(
    ("method", "args", "bits"),
    [
        ("rtn", ["--wbits", "4", "--abits", "8", "--granularity", "adaptive"], (4, 8)),
        (
            "gptq",
            ["--wbits", "3", "--act-order", "--damp", "0.05", "--block-size", "16"],
            (3, None),
        ),
        ("comq", ["--wbits", "4", "--abits", "8", "--sweeps", "2", "--update-scale"], (4, 8)),
        ("permutation-comq", ["--wbits", "2", "--scope", "channel", "--groups", "3"], (2, None)),
        ("smoothquant", ["--wbits", "8", "--abits", "8", "--alpha", "0.6"], (8, 8)),
        (
            "svd",
            ["--wbits", "4", "--rank", "5", "--skip", "model.0,model.1.submodule.residual"],
            (4, None),
        ),
        ("rotation", ["--wbits", "4", "--abits", "4", "--granularity", "per-tensor"], (4, 4)),
    ],
)
def test_every_method_writes_a_checkpoint_that_loads(
    tiny_track, tmp_path, capsys, method, args, bits
):
    out = tmp_path / "ckpt"
    assert _quantize(tiny_track, out, "--method", method, *args) == 0
    assert f"{method} w{bits[0]}" in capsys.readouterr().out
    _, model = load_reference_model(tiny_track[1])
    loaded = load_checkpoint(out, model)
    with torch.no_grad():
        assert torch.isfinite(loaded(torch.randn(1, 1, 16, 16, 16))).all()
    summary = describe_checkpoint(out)
    assert (summary["weight_bits"], summary["activation_bits"]) == bits
    reference = json.loads((out / MANIFEST_NAME).read_text())["reference"]
    assert reference["method"] == method and reference["model"] == "tiny-unet"
    assert len(reference["weights_sha256"]) == 64 and reference["calibration_cases"]


def test_a_quantized_checkpoint_evaluates(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    assert _quantize(tiny_track, tmp_path / "ckpt", "--method", "gptq", "--wbits", "4") == 0
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(tmp_path / "r.json")]
    assert main(["evaluate", "--quiet", *args, "--checkpoint", str(tmp_path / "ckpt")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(result, SCHEMA)
    assert result["submission"]["precision"]["weight_bits"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "awq", "--wbits", "4"], "unknown method 'awq'"),
        (["--method", "rtn", "--wbits", "9"], "weight_bits must be an integer from 2 to 8"),
        (["--method", "rtn", "--wbits", "4", "--abits", "1"], "activation_bits must be an"),
        (
            ["--method", "gptq", "--wbits", "4", "--rank", "2"],
            "method 'gptq' takes no option(s) rank",
        ),
        (["--method", "gptq", "--wbits", "4", "--damp", "0"], "damp must be a number > 0"),
        (
            ["--method", "comq", "--wbits", "4", "--shrink", "0"],
            "shrink (lambda) must be a number > 0",
        ),
        (["--method", "comq", "--wbits", "4", "--group-size", "9"], "COMQ grids are per output"),
        (["--method", "permutation-comq", "--wbits", "4", "--scope", "row"], "unknown scope 'row'"),
        (
            ["--method", "smoothquant", "--wbits", "8", "--abits", "8", "--alpha", "1.5"],
            "alpha must",
        ),
        (["--method", "smoothquant", "--wbits", "8"], "the scheme must quantize activations"),
        (["--method", "svd", "--wbits", "4"], "method 'svd' needs the option(s) rank"),
        (["--method", "svd", "--wbits", "4", "--rank", "5"], "rank 5 exceeds min(m, n) = 4"),
        (["--method", "rtn", "--wbits", "4", "--granularity", "per-row"], "unknown granularity"),
        (["--method", "rtn", "--wbits", "4", "--skip", "model.9"], "skip names not found"),
        (
            ["--method", "gptq", "--wbits", "4", "--group-size", "9"],
            "layer 'model.1.submodule.residual': weight_group_size 9 does not divide the 4 weights",
        ),
    ],
)
def test_bad_requests_exit_2_with_a_specific_message(tiny_track, tmp_path, capsys, args, message):
    assert _quantize(tiny_track, tmp_path / "ckpt", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


def test_study_with_methods_has_a_row_per_method_and_scheme(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    out = tmp_path / "study.json"
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(out)]
    grid = ["--precisions", "w4a16,w8a8", "--granularities", "per-channel"]
    assert main(["study", "--quiet", *args, *grid, "--methods", "rtn,gptq"]) == 0
    table = capsys.readouterr().out
    assert "Method" in table and "gptq" in table
    study = json.loads(out.read_text())
    rows = [(r.get("method"), r["precision"], r["granularity"]) for r in study["rows"]]
    assert rows == [
        (None, "FP32", "none"),
        ("rtn", "W4A16", "per-channel"),
        ("rtn", "W8A8", "per-channel"),
        ("gptq", "W4A16", "per-channel"),
        ("gptq", "W8A8", "per-channel"),
    ]
    for result in study["results"]:
        jsonschema.validate(result, SCHEMA)
    rtn = study["results"][1]
    assert rtn["submission"]["kind"] == "checkpoint" and rtn["submission"]["method"] == "rtn"
    assert rtn["submission"]["scheme"] == "w4a16-per-channel" and "method" in rtn["timings"]

    assert main(["evaluate", "--quiet", *args[:4], "--scheme", "w4a16-per-channel", *args[4:]]) == 0
    assert json.loads(out.read_text())["cases"] == rtn["cases"]  # RTN rows score like the scheme


def test_study_without_methods_keeps_its_scheme_rows(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    out = tmp_path / "study.json"
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(out)]
    assert (
        main(["study", "--quiet", *args, "--precisions", "w8a8", "--granularities", "adaptive"])
        == 0
    )
    assert "Method" not in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["scheme"], r["granularity"]) for r in rows] == [
        ("fp32", "none"),
        ("w8a8-adaptive", "adaptive"),
    ]
    assert all("method" not in r for r in rows)


def test_study_refuses_a_bad_method_before_evaluating(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(tmp_path / "s.json")]
    grid = ["--precisions", "w4a16", "--granularities", "per-channel"]
    assert main(["study", "--quiet", *args, *grid, "--methods", "rtn,smoothquant"]) == 2
    assert "the scheme must quantize activations" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_study_puts_asymmetric_activation_rows_beside_the_symmetric_ones(
    tiny_track, tmp_path, capsys
):
    dataset, model = tiny_track
    out = tmp_path / "study.json"
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(out)]
    grid = ["--precisions", "w8a8,w4a16", "--granularities", "per-tensor,adaptive"]
    both = ["--activation-quantizers", "symmetric,asymmetric"]
    assert main(["study", "--quiet", *args, *grid, *both]) == 0
    table = capsys.readouterr().out
    assert "Activations" in table and "asymmetric" in table
    study = json.loads(out.read_text())
    rows = [(r["scheme"], r["activation_quantizer"]) for r in study["rows"]]
    assert rows == [
        ("fp32", "none"),
        ("w8a8-per-tensor", "symmetric"),
        ("w8a8-per-tensor-asym", "asymmetric"),
        ("w8a8-adaptive", "symmetric"),
        ("w8a8-adaptive-asym", "asymmetric"),
        ("w4a16-per-tensor", "none"),  # weight-only: no activation grid, one row
        ("w4a16-adaptive", "none"),
    ]
    for result in study["results"]:
        jsonschema.validate(result, SCHEMA)
    # the two grids are two different quantized networks
    sym, asym = study["results"][1], study["results"][2]
    assert sym["cases"] != asym["cases"]


def test_quantize_writes_asymmetric_percentile_calibrated_activations(tiny_track, tmp_path):
    ckpt = tmp_path / "ckpt"
    flags = ["--activation-quantizer", "asymmetric", "--activation-calibration", "percentile",
             "--activation-percentile", "99.9"]  # fmt: skip
    assert _quantize(tiny_track, ckpt, "--method", "rtn", "--wbits", "8", "--abits", "8",
                     "--granularity", "per-tensor", *flags) == 0  # fmt: skip
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert manifest["reference"]["scheme"] == "w8a8-per-tensor-asym-p99.9"
    assert all(entry["activation_zero_point"] for entry in manifest["layers"].values())
