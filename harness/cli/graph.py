"""``harness calibration-data`` and ``harness quantize-graph``: the routes to an INT8 ONNX file
that start from the track's FP32 graph rather than a torch network -- the only routes on a track
whose reference is an imported ONNX graph, and the peer toolkits' routes on any ONNX track.

``toolkit_recipes`` and ``quantize_graph_command`` are the command lines the site prints on each
ONNX track's page (ONNX Runtime ``quantize_static``, NNCF's ONNX backend, ModelOpt's ONNX INT8,
each starting from ``harness calibration-data``); ``tests/test_graph_recipes.py`` runs them as
printed. ``graph_reference_refusal`` is what the torch-only commands say on an ONNX-graph track.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from harness.cli.common import add_track_args, open_track
from harness.errors import HarnessError
from harness.models.interface import INPUT_NAME, ONNX_FILE

GRAPH_BACKEND = "onnxruntime-cpu"
"""The backend these commands open the track on: the calibration patches and the FP32 graph do
not depend on the backend, and an ONNX-graph reference opens on ONNX backends only."""


def cmd_calibration_data(args: argparse.Namespace) -> None:
    from harness.artifacts.onnx.calibration_data import write_calibration_data

    start = time.perf_counter()
    track = open_track(args)
    cases = [case.case_id for case in track.calibration_cases]
    manifest = write_calibration_data(track.calibration, track.fp32_onnx, cases, Path(args.out))
    shape = "×".join(str(d) for d in manifest["input_shape"])
    print(
        f"{manifest['patches']} calibration patches of {len(cases)} cases ({shape} float32, input "
        f"{manifest['input_name']!r}) → {args.out} in {time.perf_counter() - start:.1f} s"
    )


def cmd_quantize_graph(args: argparse.Namespace) -> None:
    from harness.artifacts.onnx.graph_ptq import TOOL, quantize_graph_int8

    start = time.perf_counter()
    track = open_track(args)
    path = quantize_graph_int8(track.fp32_onnx, track.calibration, Path(args.out))
    print(
        f"{TOOL}: per-channel INT8 weights, static per-tensor INT8 activations (MinMax, "
        f"symmetric) on {len(track.calibration_cases)} calibration cases → {path} in "
        f"{time.perf_counter() - start:.1f} s"
    )


def refuse_graph_reference(args: argparse.Namespace, command: str) -> None:
    """``HarnessError`` naming the graph routes when ``args.model`` is an ONNX-graph reference:
    ``command`` (``quantize``, ``export-onnx --int8``) works on a torch network only."""
    from harness.models.reference import read_spec

    spec = read_spec(Path(args.model))
    if not spec.has_torch_network:
        raise HarnessError(graph_reference_refusal(command, spec.name, args.dataset, args.model))


def graph_reference_refusal(command: str, name: str, dataset: str, model: str) -> str:
    """Why ``harness command`` cannot run on the ONNX-graph reference ``name``, and the two
    routes that can (with the user's ``dataset`` and ``model``)."""
    return (
        f"`harness {command}` works on a torch network; the reference model {name!r} is an ONNX "
        f"graph. Quantize its graph instead: `{quantize_graph_command(dataset, model, 'q.onnx')}` "
        "(ONNX Runtime's quantize_static with the track's INT8 settings), or write its "
        f"calibration patches with `{calibration_data_command(dataset, model, 'calib')}` and "
        "follow a toolkit's recipe on the track's page (ONNX Runtime quantize_static, NNCF, "
        "ModelOpt)"
    )


def calibration_data_command(dataset: str, model: str, out: str) -> str:
    """The ``harness calibration-data`` line, as printed."""
    return _line(
        "harness", "calibration-data", "--dataset", dataset, "--model", model, "--out", out
    )


def quantize_graph_command(
    dataset: str = "DATASET", model: str = "MODEL", out: str = "q.onnx"
) -> str:
    """The ``harness quantize-graph`` line, as printed."""
    return _line("harness", "quantize-graph", "--dataset", dataset, "--model", model, "--out", out)


def _line(*argv: str) -> str:
    return " ".join(shlex.quote(a) for a in argv)


@dataclass(frozen=True)
class ToolkitRecipe:
    """A peer toolkit's route to a Q/DQ ONNX file: a shell recipe (``lines``, run in one shell
    from the folder where ``calib`` and ``out`` are written) and when its file passes."""

    label: str
    lines: tuple[str, ...]
    note: str = ""

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def toolkit_recipes(
    *, dataset: str = "DATASET", model: str = "MODEL", calib: str = "calib", out: str = "q.onnx"
) -> dict[str, ToolkitRecipe]:
    """The peer toolkits' recipes, each starting from ``harness calibration-data`` (into
    ``calib``) and writing ``out``: ONNX Runtime's ``quantize_static`` over the folder's
    ``PatchReader``, NNCF's ONNX backend and ModelOpt's ONNX INT8 over its stacked patches."""
    first = calibration_data_command(dataset, model, calib)
    fp32, stacked = f"{calib}/{ONNX_FILE}", f"{calib}/calibration.npy"
    return {
        "ort": ToolkitRecipe(
            "ONNX Runtime quantize_static",
            (
                first,
                f"PYTHONPATH={shlex.quote(calib)} python - <<'EOF'",
                "from calibration_reader import PatchReader; "
                "from onnxruntime.quantization import QuantFormat, QuantType, quantize_static",
                f"quantize_static({fp32!r}, {out!r}, PatchReader(), quant_format=QuantFormat.QDQ, "
                "per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)",
                "EOF",
            ),
        ),
        "nncf": ToolkitRecipe(
            "NNCF (ONNX backend)",
            (
                first,
                "python - <<'EOF'",
                f"import nncf, numpy as np, onnx; patches = np.load({stacked!r})",
                f"onnx.save(nncf.quantize(onnx.load({fp32!r}), nncf.Dataset(patches[:, None], "
                f"lambda p: {{{INPUT_NAME!r}: p}}), subset_size=len(patches)), {out!r})",
                "EOF",
            ),
        ),
        "modelopt": ToolkitRecipe(
            "NVIDIA ModelOpt ONNX INT8",
            (
                first,
                "python - <<'EOF'",
                "import numpy as np; from modelopt.onnx.quantization import quantize",
                f"quantize({fp32!r}, quantize_mode='int8', calibration_data={{{INPUT_NAME!r}: "
                f"np.load({stacked!r})}}, calibration_eps=['cpu'], output_path={out!r})",
                "EOF",
            ),
            note="passes where the track's bits-per-weight budget and float-MAC allowance "
            "cover ModelOpt's fp16-stored weights and the convs it keeps in float (above)",
        ),
    }


def register(sub, common: argparse.ArgumentParser) -> None:
    """The ``calibration-data`` and ``quantize-graph`` commands."""
    p = sub.add_parser(
        "calibration-data",
        parents=[common],
        help="write the track's preprocessed calibration patches (.npy), its FP32 graph, an ONNX "
        "Runtime CalibrationDataReader and a stacked array for NNCF / ModelOpt",
    )
    add_track_args(p, out_help="new folder to write")
    p.set_defaults(func=cmd_calibration_data, backend=GRAPH_BACKEND)

    p = sub.add_parser(
        "quantize-graph",
        parents=[common],
        help="quantize the track's FP32 ONNX graph with ONNX Runtime's quantize_static (per-"
        "channel INT8 weights, static per-tensor INT8 activations) → Q/DQ ONNX",
    )
    add_track_args(p, out_help="ONNX file to write")
    p.set_defaults(func=cmd_quantize_graph, backend=GRAPH_BACKEND)
