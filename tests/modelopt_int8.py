"""NVIDIA ModelOpt's standard ONNX INT8 (``modelopt.onnx.quantization.quantize(quantize_mode=
"int8")`` calibrated on CPU), run in a child process: importing ModelOpt patches ONNX Runtime's
quantization module (``modelopt/onnx/quantization/ort_patching.py``), after which ORT's own
``quantize_static`` fails in the same process ("Quantization parameters are not specified for
param image"); a researcher runs each toolkit on its own anyway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

_CHILD = """
import sys
import numpy as np
from modelopt.onnx.quantization import quantize

fp32, patches, input_name, out = sys.argv[1:]
quantize(fp32, quantize_mode="int8", calibration_data={input_name: np.load(patches)},
         calibration_eps=["cpu"], output_path=out, log_level="ERROR")
"""


def modelopt_int8(fp32: Path, batches: list[np.ndarray], input_name: str, out: Path) -> Path:
    """ModelOpt's INT8 file of ``fp32`` at ``out``, calibrated on the patch ``batches`` (a copy
    of ``fp32`` goes beside ``out``: ModelOpt writes its intermediate files next to its input)."""
    source = out.with_suffix(".fp32.onnx")
    source.write_bytes(Path(fp32).read_bytes())
    patches = out.with_suffix(".patches.npy")
    np.save(patches, np.concatenate(batches).astype(np.float32))
    command = [sys.executable, "-c", _CHILD, str(source), str(patches), input_name, str(out)]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=out.parent
    )  # in the output's folder: the temporary files ORT's tools leave in the cwd go there
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"ModelOpt INT8 failed ({done.returncode}): {done.stderr[-2000:]}")
    return out
