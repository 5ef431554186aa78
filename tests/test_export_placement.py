"""``harness export-onnx --placement {ort,openvino}`` and ``--backend``: the Q/DQ placement of the
written INT8 file is the named engine's (``--backend`` takes the backend's own, the first of its
placements its engine runs as ONNX Runtime does, as the site's own INT8 baseline does; ONNX
Runtime's when nothing is named). The OpenVINO track page's worked example, run as printed,
writes a file that OpenVINO runs like the site's own OpenVINO INT8 baseline: the same activation
quantizers in the same storage, the same layers in integer on the engine (which is what decides
its speed); both × faster figures are measured in one process, interleaved, and reported."""

from __future__ import annotations

import contextlib
import html
import re
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
from django.urls import reverse
from leaderboard_fixtures import site_storage
from onnx import numpy_helper

from harness.artifacts.onnx.placement import (
    OPENVINO_PLACEMENT,
    ORT_PLACEMENT,
    PLACEMENT_CHOICES,
)
from harness.cli import build_parser, main
from harness.cli.evaluate import EXPORT_PLACEMENTS
from harness.demo import shipped_models
from harness.entry.baseline import INT8_QDQ, baselines_for, compute_baseline
from harness.entry.summary import ResultSummary
from harness.entry.upload import Submission, evaluate_submission
from harness.models.interface import METADATA_PREFIX, ONNX_FILE
from harness.track.loaded import LoadedTrack

pytest.importorskip("openvino")

__all__ = ["site_storage"]

EXAMPLE_HEADING = "Worked example (quantize with the harness, export Q/DQ ONNX"
ROUNDS = 2
"""File and baseline are each evaluated this many times, alternately, in one process."""
X_FASTER_TOLERANCE = 0.10
"""The issue's target for the file's × faster against the baseline's; reported, not asserted:
on this shared 2-core machine one file's × faster moves by up to 15% between evaluations (other
jobs' load), so the test asserts the placement that decides the speed instead."""


def _activation_quantizers(path: Path) -> dict[str, tuple[str, int]]:
    """Activation quantizers by the tensor they quantize (``<layer>.input`` or ``<layer>.output``,
    the export's QuantizeLinear names without ``_quantize``) → (zero-point dtype, zero-point)."""
    graph = onnx.load(str(path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            zero = initializers[node.input[2]]
            found[node.name.removesuffix("_quantize")] = (str(zero.dtype), int(zero))
    return found


def _placement(path: Path) -> str:
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return metadata[METADATA_PREFIX + "placement"]


def _export(tiny_track, out: Path, *extra: str) -> Path:
    dataset, model = tiny_track
    argv = ["export-onnx", "--dataset", str(dataset), "--model", str(model), "--int8"]
    assert main([*argv, *extra, "--out", str(out)]) == 0
    return out


def test_the_placement_choices_are_the_placements():
    assert set(EXPORT_PLACEMENTS) == set(PLACEMENT_CHOICES)
    args = build_parser().parse_args(
        ["export-onnx", "--dataset", "d", "--model", "m", "--out", "o", "--placement", "openvino"]
    )
    assert args.placement == "openvino" and args.backend == "onnxruntime-cpu"


def test_without_a_backend_the_export_is_in_onnx_runtimes_placement(tiny_track, tmp_path):
    path = _export(tiny_track, tmp_path / "int8.onnx")
    assert _placement(path) == ORT_PLACEMENT.name
    quantizers = _activation_quantizers(path)
    assert any(name.endswith(".output") for name in quantizers)  # outputs requantized for ORT
    assert {dtype for dtype, _ in quantizers.values()} == {"uint8"}


@pytest.mark.parametrize("flags", [("--placement", "openvino"), ("--backend", "openvino-cpu")])
def test_openvinos_placement_by_flag_or_by_backend(tiny_track, tmp_path, flags):
    path = _export(tiny_track, tmp_path / "int8.onnx", *flags)
    assert _placement(path) == OPENVINO_PLACEMENT.name
    quantizers = _activation_quantizers(path)
    assert quantizers and not any(name.endswith(".output") for name in quantizers)
    assert all(zero == 0 for _, zero in quantizers.values())  # int8, or uint8 after a ReLU
    assert "int8" in {dtype for dtype, _ in quantizers.values()}


def test_placement_overrides_the_backends(tiny_track, tmp_path):
    path = _export(tiny_track, tmp_path / "int8.onnx", "--backend", "openvino-cpu",
                   "--placement", "ort")  # fmt: skip
    assert _placement(path) == ORT_PLACEMENT.name


def test_placement_without_a_quantized_export_is_refused(tiny_track, tmp_path, capsys):
    dataset, model = tiny_track
    argv = ["export-onnx", "--dataset", str(dataset), "--model", str(model), "--placement", "ort"]
    assert main([*argv, "--out", str(tmp_path / "fp32.onnx")]) == 2
    assert "--placement places Q/DQ nodes" in capsys.readouterr().err
    assert not (tmp_path / "fp32.onnx").exists()


def _printed_example(page: str) -> list[str]:
    """The worked example's command lines as the page prints them (continuations joined)."""
    start = page.index(EXAMPLE_HEADING)
    block = re.search(r"<pre>(.*?)</pre>", page[start:], re.S)
    assert block, "the worked example has no <pre> block"
    text = html.unescape(block.group(1)).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.mark.django_db
@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "openvino-cpu"])
def test_an_onnx_track_pages_export_command_names_its_backend(
    client, tiny_track, site_storage, backend
):
    from leaderboard.tracks.seeding import create_track, import_dataset, import_model

    dataset_dir, model_dir = tiny_track
    track = create_track(
        import_dataset(dataset_dir, slug="tiny"), import_model(model_dir),
        weight_bits=8, activation_bits=8, backend=backend,
    )  # fmt: skip
    lines = _printed_example(client.get(reverse("track", args=[track.slug])).content.decode())
    (export,) = [line for line in lines if line.startswith("harness export-onnx")]
    args = build_parser().parse_args(shlex.split(export)[1:])
    assert args.backend == backend and args.checkpoint == "my_ckpt" and args.out == "q.onnx"


@pytest.mark.slow
@pytest.mark.django_db
def test_the_openvino_pages_example_runs_like_the_sites_own_baseline(
    client, demo_dataset, site_storage, tmp_path, capsys
):
    from leaderboard.tracks.seeding import create_track, import_dataset, import_model

    model_dir = shipped_models()["unet"]
    track = create_track(
        import_dataset(demo_dataset, slug="demo"), import_model(model_dir),
        weight_bits=8, activation_bits=8, backend="openvino-cpu",
    )  # fmt: skip
    lines = _printed_example(client.get(reverse("track", args=[track.slug])).content.decode())
    commands = [line for line in lines if line.startswith("harness ")]
    assert [c.split()[1] for c in commands] == ["quantize", "export-onnx", "submit"]
    slug_folder = f"{track.reference_model.slug}/"
    work = tmp_path / "participant"
    work.mkdir()
    with contextlib.chdir(work):
        for command in commands[:2]:  # `submit` uploads to a site; its file is scored below
            argv = [
                str(demo_dataset) if arg == "DATASET" else str(model_dir) if arg == slug_folder
                else arg
                for arg in shlex.split(command)[1:]
            ]  # fmt: skip
            assert main(argv) == 0, capsys.readouterr().err
    upload = work / "q.onnx"
    assert upload.is_file()

    loaded = LoadedTrack.open(track.to_spec())
    assert INT8_QDQ in {b.scheme for b in baselines_for(loaded.spec)}
    figures: dict[str, list[float]] = {"example": [], "baseline": []}
    baseline_file = tmp_path / "baseline" / ONNX_FILE
    for round_ in range(ROUNDS):
        uploaded = evaluate_submission(loaded, Submission("onnx", onnx=upload)).result
        baseline = compute_baseline(
            loaded, method="rtn", scheme=INT8_QDQ, workdir=baseline_file.parent
        ).result
        for name, result in (("example", uploaded), ("baseline", baseline)):
            summary = ResultSummary.of(result)
            assert summary.x_faster is not None
            figures[name].append(summary.x_faster)
        if round_ == 0:
            assert ResultSummary.of(uploaded).gate_passed
            kernels = [r["efficiency"]["kernels"] for r in (uploaded, baseline)]
    example, own = (float(np.median(figures[name])) for name in ("example", "baseline"))
    print(f"× faster on {loaded.spec.backend}: worked example {figures['example']} (median "
          f"{example:.2f}), site's INT8 baseline {figures['baseline']} (median {own:.2f}); "
          f"ratio {example / own:.3f} (target within {X_FASTER_TOLERANCE:.0%})")  # fmt: skip

    assert _placement(upload) == _placement(baseline_file) == OPENVINO_PLACEMENT.name
    assert _activation_quantizers(upload) == _activation_quantizers(baseline_file)
    assert kernels[0]["int8_mac_fraction"] == kernels[1]["int8_mac_fraction"] == 1.0
    assert kernels[0]["integer_ops"] == kernels[1]["integer_ops"]
    assert kernels[0]["float_layers"] == kernels[1]["float_layers"] == []
