"""Progress of quantization: the methods report each fitted and quantized layer and each
calibration batch; ``harness quantize`` and ``harness study`` draw them as bars (none with
``--quiet``)."""

from harness.cli import main
from harness.data.dataset import load_dataset
from harness.models.calibration import calibration_batches
from harness.models.reference import load_reference_model
from harness.track import run_cache
from reference_methods.methods import quantize_with
from reference_methods.simulator.progress import reporting
from reference_methods.simulator.scheme import QuantConfig, target_layers


def test_gptq_reports_every_layer_it_fits_and_quantizes_and_every_batch(tiny_track):
    dataset_dir, model_dir = tiny_track
    spec, model = load_reference_model(model_dir)
    batches = calibration_batches(load_dataset(dataset_dir).split("calibration"), spec)
    scheme = QuantConfig.from_scheme("w4a4-per-channel")
    steps = []
    with reporting(lambda stage, item, done, total: steps.append((stage, item, done, total))):
        quantize_with("gptq", model, scheme, batches)
    layers = list(target_layers(model, scheme))
    for stage in ("fit layers", "quantize layers"):
        ours = [s for s in steps if s[0] == stage]
        assert [s[1] for s in ours] == layers
        assert [(s[2], s[3]) for s in ours] == [(i, len(layers)) for i in range(1, len(layers) + 1)]
    calibrated = [s for s in steps if s[0] == "calibrate activations"]
    assert [s[2] for s in calibrated] == list(range(1, len(batches) + 1))


def test_quantize_and_study_draw_progress_bars_unless_quiet(
    tiny_track, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv(run_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))  # the FP32 run
    # is computed here (with its bar), not read from a run an earlier test cached
    dataset, model = tiny_track
    common = ["--dataset", str(dataset), "--model", str(model)]
    assert main(["quantize", *common, "--method", "comq", "--wbits", "4",
                 "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "fit layers" in err and "quantize layers" in err
    assert main(["quantize", "--quiet", *common, "--method", "comq", "--wbits", "4",
                 "--out", str(tmp_path / "d")]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""
    assert main(["study", *common, "--precisions", "w4a16", "--granularities", "per-channel",
                 "--methods", "gptq", "--out", str(tmp_path / "s.json")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "study rows" in err and "fit layers" in err and "fp32" in err
