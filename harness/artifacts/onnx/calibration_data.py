"""A track's calibration patches in the forms peer toolkits' calibration readers take, written by
``harness calibration-data``: what a researcher quantizing with ONNX Runtime, NNCF or ModelOpt
calibrates on, so that nobody rebuilds the harness's preprocessing by hand.

The folder holds:

* ``patches/00000.npy`` …: one float32 ``.npy`` per patch, shaped as the network's input
  ``(1, C, *roi)``: the patches the harness's own calibration uses
  (``harness.models.calibration.calibration_batches``: preprocessed, cut as sliding-window
  inference cuts them), in the same order;
* ``calibration.npy``: the same patches stacked, ``(N, C, *roi)``: the array ModelOpt's
  ``calibration_data`` takes and ``nncf.Dataset`` wraps;
* ``model.onnx``: the FP32 graph the track verifies uploads against (an ONNX reference's own
  graph, or the harness's FP32 export of a torch reference);
* ``calibration_reader.py``: ``PatchReader``, an ONNX Runtime ``CalibrationDataReader`` over
  ``patches/`` feeding the model's input (its name read from ``model.onnx`` when written);
* ``calibration.json``: the input name and shape, the patch count and the calibration cases.

Every array is written without pickling (``allow_pickle=False``) and holds no label.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from harness.errors import HarnessError
from harness.models.interface import ONNX_FILE

PATCHES_DIR = "patches"
STACKED_FILE = "calibration.npy"
READER_FILE = "calibration_reader.py"
MANIFEST_FILE = "calibration.json"

_READER_SOURCE = '''"""ONNX Runtime calibration reader over the track's calibration patches beside
this file (written by `harness calibration-data`): one feed {{INPUT_NAME: patch}} per
patches/*.npy, each a float32 array shaped as the network's input (1, C, D, H, W), in the
harness's own order.

    from calibration_reader import PatchReader
    quantize_static("model.onnx", "q.onnx", PatchReader(), ...)
"""

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

FOLDER = Path(__file__).resolve().parent
INPUT_NAME = {input_name!r}
"""The input of model.onnx (read from the graph when this folder was written)."""


class PatchReader(CalibrationDataReader):
    """One {{INPUT_NAME: patch}} feed per patch file of ``folder``/patches, then None."""

    def __init__(self, folder: Path = FOLDER) -> None:
        self._files = sorted(Path(folder, "patches").glob("*.npy"))
        self.rewind()

    def get_next(self) -> dict | None:
        path = next(self._pending, None)
        return None if path is None else {{INPUT_NAME: np.load(path, allow_pickle=False)}}

    def rewind(self) -> None:
        """Start again from the first patch (a calibrator may read the data twice)."""
        self._pending = iter(self._files)

    def __len__(self) -> int:
        return len(self._files)
'''


def graph_input_name(path: Path) -> str:
    """The name of the first input of the ONNX graph at ``path`` that is not an initializer."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    if not names:
        raise HarnessError(f"the graph {path} has no input to feed calibration patches to")
    return names[0]


def write_calibration_data(
    batches: Sequence[torch.Tensor], fp32_onnx: Path, cases: Sequence[str], out: Path
) -> dict:
    """Write the calibration folder described in the module docstring to ``out`` (a new or
    empty folder: stale patches would be read by the reader) from the track's calibration patch
    ``batches`` (B, C, *roi), its FP32 graph ``fp32_onnx`` and its calibration ``cases`` (ids);
    returns the manifest written."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"{out} exists and is not an empty folder: give a new folder")
    patches = [patch[None] for batch in batches for patch in batch]
    if not patches:
        raise HarnessError("the track has no calibration patches (its calibration split is empty)")
    (out / PATCHES_DIR).mkdir(parents=True)
    stacked = np.ascontiguousarray(torch.cat(patches).numpy(), dtype=np.float32)
    digits = max(5, len(str(len(patches) - 1)))
    for index, patch in enumerate(stacked):
        np.save(out / PATCHES_DIR / f"{index:0{digits}d}.npy", patch[None], allow_pickle=False)
    np.save(out / STACKED_FILE, stacked, allow_pickle=False)
    shutil.copyfile(fp32_onnx, out / ONNX_FILE)
    input_name = graph_input_name(out / ONNX_FILE)
    (out / READER_FILE).write_text(_READER_SOURCE.format(input_name=input_name))
    manifest = {
        "input_name": input_name,
        "input_shape": [1, *stacked.shape[1:]],
        "dtype": "float32",
        "patches": len(stacked),
        "calibration_cases": list(cases),
        "files": {
            "patches": f"{PATCHES_DIR}/*.npy",
            "stacked": STACKED_FILE,
            "model": ONNX_FILE,
            "reader": READER_FILE,
        },
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
