"""Importing an FP32 ONNX graph of a network no registry builds: the imported reference predicts
what the network itself predicts, its tracks run on ONNX backends only, its FP32 row and INT8
baselines are computed from the graph (ONNX Runtime's quantize_static, and NNCF on OpenVINO) and
verify as the track's network, and a graph that cannot be a reference is refused with the
reason."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from harness.cli import main
from harness.data.demo import make_phantoms
from harness.entry.baseline import INT8_QDQ, baselines_for, compute_baseline, compute_reference
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import ModelImportError, ModelSpecError, SubmissionError
from harness.models.importers import import_model
from harness.models.reference import load_reference_model, read_spec
from harness.onnxruntime_session import graph_reference
from harness.scoring.evaluation import evaluate_cases
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

LABELS = {"0": "background", "1": "liver", "2": "spleen", "3": "kidneys", "4": "aorta",
          "5": "vertebra"}  # fmt: skip
ROI = [16, 16, 16]
REFERENCE = {
    "name": "gated-net",
    "labels": LABELS,
    "preprocessing": {
        "orientation": "RAS",
        "spacing": [12.0, 12.0, 16.0],
        "intensity_window": [-200.0, 600.0],
    },
    "sliding_window": {"roi_size": ROI, "overlap": 0.0, "sw_batch_size": 2},
}


class GatedNet(nn.Module):
    """A network no registry knows: conv stem, a squeeze-and-excitation gate, a strided conv and a
    transposed-conv decoder with a skip connection."""

    def __init__(self, classes: int = 6, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.InstanceNorm3d(width),
                                  nn.LeakyReLU(0.01))  # fmt: skip
        self.gate = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Conv3d(width, width, 1),
                                  nn.Sigmoid())  # fmt: skip
        self.down = nn.Sequential(nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.head = nn.Conv3d(2 * width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        skip = skip * self.gate(skip)
        return self.head(torch.cat([skip, self.up(self.down(skip))], dim=1))


def write_source(folder: Path, network: nn.Module, reference: dict | None = None,
                 dynamic_spatial: bool = True) -> Path:  # fmt: skip
    """A maintainer's ONNX source folder: the network exported under its own tensor names."""
    folder.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch"} | ({2: "d", 3: "h", 4: "w"} if dynamic_spatial else {})
    torch.onnx.export(network.eval(), torch.zeros(1, 1, *ROI), str(folder / "model.onnx"),
                      input_names=["input.1"], output_names=["out"], opset_version=17,
                      dynamic_axes={"input.1": axes, "out": axes}, dynamo=False)  # fmt: skip
    (folder / "reference.json").write_text(json.dumps(reference or REFERENCE))
    return folder


@pytest.fixture(scope="module")
def network() -> nn.Module:
    torch.manual_seed(3)
    return GatedNet().eval()


@pytest.fixture(scope="module")
def imported(network, tmp_path_factory) -> tuple[Path, Path]:
    """(dataset dir, imported model dir)."""
    root = tmp_path_factory.mktemp("onnx_reference")
    dataset = make_phantoms(root / "dataset", cases=4, seed=1)
    import_model(write_source(root / "source", network), root / "model")
    return dataset, root / "model"


def graph_track(imported, backend: str = "onnxruntime-cpu") -> LoadedTrack:
    dataset, model_dir = imported
    spec = TrackSpec(model_dir=model_dir, dataset_dir=dataset, backend=backend, weight_bits=8,
                     activation_bits=8)  # fmt: skip
    return LoadedTrack.open(spec)


def test_imported_graph_predicts_what_the_network_predicts(network, imported):
    _, model_dir = imported
    spec = read_spec(model_dir)
    reference = graph_reference(model_dir / "model.onnx")
    assert (spec.architecture, spec.family, spec.in_channels) == ("ONNX", "cnn", 1)
    assert spec.sliding_window.roi_size == tuple(ROI) and len(spec.labels) == 6
    assert spec.source["input"] == "input.1" and spec.source["output"] == "out"
    graph = onnx.load(str(model_dir / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["image"]
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 1, *ROI]
    batch = torch.randn(3, 1, *ROI)
    with torch.no_grad():
        expected = network(batch)
        got = reference(batch)
    assert expected.std() > 1e-3
    assert float((got - expected).abs().max()) <= 1e-4


def test_fp32_row_of_a_graph_reference_is_the_networks_scores(network, imported):
    track = graph_track(imported)
    row = compute_reference(track)
    assert row.artifact == imported[1] / "model.onnx"
    precision = row.result["submission"]["precision"]
    assert precision["weight_bits"] == 32 and precision["reference_network"] == "matched"
    direct = evaluate_cases(network, track.model_spec, track.test_cases, track.dataset.labels,
                            track.spec.nsd_tolerance_mm)  # fmt: skip
    fp32 = {c.case_id: c.mean_dsc for c in track.fp32_run.cases}
    assert fp32 == pytest.approx({c.case_id: c.mean_dsc for c in direct.cases}, abs=1e-3)
    assert row.result["track"]["weights_sha256"] == track.weights_sha256


def test_int8_baseline_of_a_graph_reference_quantizes_the_graph_and_verifies(imported, tmp_path):
    track = graph_track(imported)
    assert [b.scheme for b in baselines_for(track.spec)] == [INT8_QDQ]
    baseline = compute_baseline(track, method="rtn", scheme=INT8_QDQ, workdir=tmp_path)
    result = baseline.result
    precision = result["submission"]["precision"]
    assert (precision["weight_bits"], precision["activation_bits"]) == (8, 8)
    assert precision["reference_network"] == "matched" and precision["division"] == "closed"
    assert result["submission"]["export"]["tool"] == "onnxruntime.quantization.quantize_static"
    assert result["efficiency"]["kernels"]["integer_ops"]["QLinearConv"] >= 1
    # the same scheme as the harness's export: 8-bit codes close to the float logits
    from harness.onnxruntime_session import OrtNetwork, create_session

    int8 = OrtNetwork(create_session(baseline.artifact))
    batch = track.calibration[0]
    with torch.no_grad():
        fp32, quantized = track.model(batch), int8(batch)
    assert float((quantized - fp32).abs().mean() / fp32.abs().mean()) < 0.1


def test_openvino_track_of_a_graph_reference_gets_nncf_and_the_int8_graph(imported, tmp_path):
    track = graph_track(imported, backend="openvino-cpu")
    schemes = [b.scheme for b in baselines_for(track.spec)]
    assert schemes == [INT8_QDQ, "nncf-int8"]
    for scheme in schemes:
        result = compute_baseline(track, method="rtn", scheme=scheme, workdir=tmp_path / scheme)
        precision = result.result["submission"]["precision"]
        assert precision["weight_bits"] == 8 and precision["reference_network"] == "matched"


def test_a_graph_reference_is_not_evaluated_on_the_simulator(imported):
    dataset, model_dir = imported
    with pytest.raises(ModelSpecError, match="has no torch network"):
        load_reference_model(model_dir)
    with pytest.raises(ModelSpecError, match="evaluated on ONNX backends, not simulated"):
        LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset, weight_bits=8))


def test_torch_only_tools_name_why_they_cannot_run_on_a_graph(imported):
    track = graph_track(imported)
    with pytest.raises(ModelSpecError, match="GPTQ needs a torch network.*is an ONNX graph"):
        track.torch_model("GPTQ")


def test_another_network_uploaded_to_a_graph_track_is_not_its_network(imported, tmp_path):
    loaded = graph_track(imported)
    open_track = replace(loaded.spec, weight_bits=None, activation_bits=None, division="open")
    track = LoadedTrack(open_track, loaded.dataset, loaded.model_spec, loaded.model)
    torch.manual_seed(0)
    other = write_source(tmp_path / "other", nn.Sequential(nn.Conv3d(1, 6, 3, padding=1)))
    import_model(other, tmp_path / "other-model")
    with pytest.raises(SubmissionError, match="not the track's reference: it has 1 weighted"):
        evaluate_submission(track, Submission("onnx", onnx=tmp_path / "other-model/model.onnx"))
    result = evaluate_submission(track, Submission("onnx", onnx=imported[1] / "model.onnx")).result
    assert result["submission"]["precision"]["reference_network"] == "matched"


def test_cli_imports_an_onnx_folder(network, tmp_path, capsys):
    source = write_source(tmp_path / "src", network, dynamic_spatial=False)
    assert main(["import-model", str(source), "--out", str(tmp_path / "m")]) in (0, None)
    assert "imported gated-net (ONNX, 6 classes, patch 16×16×16)" in capsys.readouterr().out
    assert read_spec(tmp_path / "m").weights_file == "model.onnx"


def _quantized(folder: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class One(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input.1": np.zeros((1, 1, *ROI), np.float32)}])

        def get_next(self):
            return next(self.feeds, None)

    fp32 = folder / "fp32.onnx"
    (folder / "model.onnx").rename(fp32)
    quantize_static(str(fp32), str(folder / "model.onnx"), One(), quant_format=QuantFormat.QDQ)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda f: (f / "reference.json").unlink(), "missing its reference.json"),
        (lambda f: (f / "model.onnx").write_bytes(b"not a graph"), "is not a readable ONNX"),
        (lambda f: (f / "reference.json").write_text("{"), "is not valid JSON"),
        (
            lambda f: (f / "reference.json").write_text(
                json.dumps(REFERENCE | {"labels": {"0": "bg", "1": "liver"}})
            ),
            "outputs 6 channels; reference.json names 2 labels",
        ),
        (
            lambda f: (f / "reference.json").write_text(
                json.dumps(REFERENCE | {"labels": {"0": "bg", "2": "liver"}})
            ),
            "numbered 0..1",
        ),
        (
            lambda f: (f / "reference.json").write_text(
                json.dumps(REFERENCE | {"sliding_window": {"roi_size": [16, 16]}})
            ),
            "roi_size must be 3 positive integers",
        ),
        (_quantized, "already quantized"),
    ],
    ids=["no-reference", "corrupt", "bad-json", "label-count", "label-ids", "roi", "quantized"],
)
def test_a_graph_that_cannot_be_a_reference_is_refused_with_the_reason(
    network, tmp_path, break_it, message
):
    source = write_source(tmp_path / "src", network)
    break_it(source)
    with pytest.raises(ModelImportError, match=message):
        import_model(source, tmp_path / "model")
    assert not (tmp_path / "model" / "model.json").exists()


def test_a_dynamic_graph_needs_its_roi(network, tmp_path):
    reference = REFERENCE | {"sliding_window": {"overlap": 0.0}}
    source = write_source(tmp_path / "src", network, reference)
    with pytest.raises(ModelImportError, match="no fixed spatial shape: give sliding_window"):
        import_model(source, tmp_path / "model")
    fixed = write_source(tmp_path / "fixed", network, reference, dynamic_spatial=False)
    assert import_model(fixed, tmp_path / "model").sliding_window.roi_size == tuple(ROI)


def test_a_quantizer_container_of_a_graph_track_gets_the_graph_and_no_weights_file(
    imported, tmp_path
):
    from harness.containers.protocol import build_container_input

    track = graph_track(imported)
    folder = build_container_input(track, tmp_path / "input")
    assert {p.name for p in folder.iterdir()} == {"model.json", "model.onnx", "calibration",
                                                   "track.json"}  # fmt: skip
    assert (folder / "model.onnx").read_bytes() == (imported[1] / "model.onnx").read_bytes()
    description = json.loads((folder / "track.json").read_text())
    assert description["architecture"] == "ONNX" and description["files"]["weights"] is None
    assert description["output"]["format"] == "onnx-qdq"
