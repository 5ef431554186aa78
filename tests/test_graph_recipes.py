"""The routes from a track's FP32 graph, on an imported-ONNX-graph track (the demo's trained
SegResNet imported as an ONNX graph): ``harness calibration-data`` writes exactly the harness's
calibration patches with a working ONNX Runtime reader; each peer toolkit's recipe printed on the
track page (ONNX Runtime ``quantize_static``, NNCF's ONNX backend, ModelOpt ONNX INT8), run as
printed in a shell, and the page's worked example ``harness quantize-graph`` each write a file
the track accepts (closed W8A8; ModelOpt's where the budget and float-MAC allowance cover its
fp16 weights and float convs) within 1% of FP32's mean DSC, and the ONNX Runtime recipe does so
on the torch reference's track too; the torch-only commands name these routes instead."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from django.urls import reverse

from harness.cli import main
from harness.cli.graph import (
    calibration_data_command,
    quantize_graph_command,
    toolkit_recipes,
)
from harness.data.demo import make_phantoms
from harness.demo import DEMO_GRAPH_MODEL, DEMO_MODELS_DIR, shipped_models, write_onnx_source
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import SubmissionError
from harness.inference.latency import MIN_PAIRS
from harness.models.importers import import_model
from harness.models.interface import INPUT_NAME
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

pytestmark = pytest.mark.slow

MAX_DSC_DROP_PCT = 1.0
"""An INT8 file of a toolkit keeps mean DSC within 1% of FP32 (the real-INT8 study's finding)."""
MODELOPT_TRACK = {"bits_per_weight_budget": 16.2, "max_float_mac_fraction": 0.25}
"""The settings a ModelOpt file needs (its fp16-stored weights: 16.02 bits per weight on the
SegResNet; tests/test_peer_toolkits.py's figures), as the recipe's note on the page says."""
RECIPE_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def graph_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset dir, model dir): 4 phantom cases and the demo's trained SegResNet imported as an
    FP32 ONNX graph (no torch network)."""
    root = tmp_path_factory.mktemp("graph_recipes")
    dataset = make_phantoms(root / "dataset", cases=4, seed=1)
    source = write_onnx_source(DEMO_MODELS_DIR / DEMO_GRAPH_MODEL, root / "source")
    import_model(source, root / "model")
    return dataset, root / "model"


@pytest.fixture(scope="module")
def track(graph_dirs) -> LoadedTrack:
    """The closed W8A8 ONNX Runtime track of the graph, its FP32 run made once."""
    dataset, model = graph_dirs
    spec = TrackSpec(model_dir=model, dataset_dir=dataset, backend="onnxruntime-cpu",
                     weight_bits=8, activation_bits=8, division="closed",
                     latency_pairs=MIN_PAIRS, latency_burst=1)  # fmt: skip
    loaded = LoadedTrack.open(spec)
    assert not loaded.model_spec.has_torch_network
    loaded.reference_run()
    return loaded


@pytest.fixture(scope="module")
def torch_track(graph_dirs) -> LoadedTrack:
    """The same network as a torch reference (the shipped SegResNet folder) on the closed W8A8
    ONNX Runtime track: the recipes start from its FP32 export."""
    dataset, _ = graph_dirs
    spec = TrackSpec(model_dir=shipped_models()[DEMO_GRAPH_MODEL], dataset_dir=dataset,
                     backend="onnxruntime-cpu", weight_bits=8, activation_bits=8,
                     division="closed", latency_pairs=MIN_PAIRS, latency_burst=1)  # fmt: skip
    loaded = LoadedTrack.open(spec)
    assert loaded.model_spec.has_torch_network
    return loaded


def _shell(text: str, cwd: Path) -> str:
    """Run ``text`` as a bash script in ``cwd`` (the ``harness`` command on the PATH, as after
    installing the package), failing on the first failing line; its output."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-e", "-c", text], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=RECIPE_TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, f"{text}\n---\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    return done.stdout


def _accepted(track: LoadedTrack, path: Path, **settings) -> dict:
    """The result of ``path`` uploaded to ``track`` (with ``settings`` changed): it must be
    verified as the track's network at W8A8 on the closed division, within 1% of FP32."""
    spec = replace(track.spec, **settings)
    variant = LoadedTrack(spec, track.dataset, track.model_spec, track.model)
    result = evaluate_submission(variant, Submission("onnx", onnx=path), fp32=track.fp32_run).result
    precision = result["submission"]["precision"]
    assert (precision["weight_bits"], precision["activation_bits"]) == (8, 8)
    assert precision["division"] == "closed" and precision["reference_network"] == "matched"
    fp32 = result["summary"]["fp32_mean_dsc"]
    assert fp32 > 0.5  # a trained network: the drop is a measurement, not noise
    drop = 100 * (fp32 - result["summary"]["mean_dsc"]) / fp32
    assert drop <= MAX_DSC_DROP_PCT, f"{path.name}: mean DSC drop {drop:.2f}% of FP32"
    return result


def test_calibration_data_writes_the_harness_calibration_patches(track, graph_dirs, tmp_path):
    dataset, model = graph_dirs
    out = _shell(calibration_data_command(str(dataset), str(model), "calib"), tmp_path)
    folder = tmp_path / "calib"
    expected = torch.cat(track.calibration).numpy()
    files = sorted((folder / "patches").glob("*.npy"))
    assert len(files) == len(expected) and f"{len(expected)} calibration patches" in out
    for path, patch in zip(files, expected, strict=True):
        array = np.load(path, allow_pickle=False)
        assert array.dtype == np.float32 and array.shape == (1, *patch.shape)
        assert np.array_equal(array[0], patch)
    stacked = np.load(folder / "calibration.npy", allow_pickle=False)
    assert stacked.dtype == np.float32 and np.array_equal(stacked, expected)
    assert (folder / "model.onnx").read_bytes() == track.fp32_onnx.read_bytes()
    graph_input = onnx.load(str(folder / "model.onnx")).graph.input[0].name

    spec = importlib.util.spec_from_file_location(
        "calibration_reader", folder / "calibration_reader.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reader = module.PatchReader()
    for _ in range(2):  # a calibrator may read the data twice
        feeds = list(iter(reader.get_next, None))
        assert [set(feed) for feed in feeds] == [{graph_input}] * len(expected)
        assert np.array_equal(np.concatenate([f[graph_input] for f in feeds]), expected)
        reader.rewind()


def test_calibration_data_refuses_a_folder_that_holds_files(graph_dirs, tmp_path, capsys):
    dataset, model = graph_dirs
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "00099.npy").write_bytes(b"stale")
    argv = ["calibration-data", "--dataset", str(dataset), "--model", str(model),
            "--out", str(tmp_path / "calib")]  # fmt: skip
    assert main(argv) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


@pytest.mark.parametrize("toolkit", ["ort", "nncf", "modelopt"])
def test_each_toolkit_recipe_as_printed_writes_a_file_the_track_accepts(
    toolkit, track, graph_dirs, tmp_path
):
    dataset, model = graph_dirs
    recipe = toolkit_recipes(dataset=str(dataset), model=str(model), out="q.onnx")[toolkit]
    _shell(recipe.text, tmp_path)
    settings = MODELOPT_TRACK if toolkit == "modelopt" else {}
    result = _accepted(track, tmp_path / "q.onnx", **settings)
    if toolkit == "modelopt":
        # fp16-stored weights (TensorRT's input; ONNX Runtime runs those convs in float): refused
        # on the track's default budget (weight bits + 0.5)
        with pytest.raises(SubmissionError, match="effective bits per weight.*budget"):
            _accepted(track, tmp_path / "q.onnx")
    else:
        assert result["efficiency"]["kernels"]["integer_ops"]


def test_the_ort_recipe_as_printed_on_a_torch_reference_track(torch_track, tmp_path):
    spec = torch_track.spec
    recipe = toolkit_recipes(dataset=str(spec.dataset_dir), model=str(spec.model_dir))["ort"]
    _shell(recipe.text, tmp_path)
    exported = onnx.load(str(tmp_path / "calib/model.onnx"))  # the torch reference's FP32 export
    assert [i.name for i in exported.graph.input] == [INPUT_NAME]
    result = _accepted(torch_track, tmp_path / "q.onnx")
    assert result["efficiency"]["kernels"]["integer_ops"]


def test_quantize_graph_as_printed_writes_a_file_the_track_accepts(track, graph_dirs, tmp_path):
    dataset, model = graph_dirs
    _shell(quantize_graph_command(str(dataset), str(model), "q.onnx"), tmp_path)
    result = _accepted(track, tmp_path / "q.onnx")
    assert result["efficiency"]["kernels"]["integer_ops"]["QLinearConv"] >= 1


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["quantize", "--method", "gptq", "--wbits", "8", "--abits", "8"], "quantize"),
        (["export-onnx", "--int8"], "export-onnx --int8"),
    ],
)
def test_torch_only_commands_on_a_graph_name_the_graph_routes(argv, command, graph_dirs, tmp_path):
    dataset, model = graph_dirs
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", *argv, "--dataset", str(dataset), "--model",
         str(model), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=RECIPE_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode != 0
    message = done.stderr
    assert f"`harness {command}` works on a torch network" in message
    assert "is an ONNX graph" in message and "not simulated" not in message
    assert quantize_graph_command(str(dataset), str(model), "q.onnx") in message
    assert calibration_data_command(str(dataset), str(model), "calib") in message
    assert not (tmp_path / "out").exists()


def test_a_graph_tracks_page_prints_the_recipes_and_the_graph_example(graph_dirs, db, client):
    from leaderboard.tracks.seeding import create_track, import_dataset
    from leaderboard.tracks.seeding import import_model as register_model

    dataset_dir, model_dir = graph_dirs
    model = register_model(model_dir, slug="graph")
    dataset = import_dataset(dataset_dir, slug="phantom")
    track = create_track(dataset, model, weight_bits=8, activation_bits=8,
                         backend="onnxruntime-cpu")  # fmt: skip
    page = html.unescape(client.get(reverse("track", args=[track.slug])).content.decode())
    printed = dict(re.findall(r'<h4 id="recipe-(\w+)">.*?<pre>(.*?)</pre>', page, re.S))
    expected = toolkit_recipes(model=f"{model.slug}/")
    assert printed == {key: recipe.text for key, recipe in expected.items()}
    for text in printed.values():  # five lines, from the harness's calibration patches
        assert text.startswith("harness calibration-data") and len(text.splitlines()) == 5
    assert quantize_graph_command(model=f"{model.slug}/") in page
    commands = [line.strip() for block in re.findall(r"<pre>(.*?)</pre>", page, re.S)
                for line in block.splitlines()]  # fmt: skip
    assert "harness quantize-graph --dataset DATASET --model graph/ --out q.onnx" in commands
    assert not [c for c in commands if c.startswith(("harness quantize ", "harness export-onnx"))]
    assert f"{{{INPUT_NAME!r}: p}}" in printed["nncf"]
