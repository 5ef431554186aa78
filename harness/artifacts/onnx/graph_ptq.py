"""The standard INT8 scheme applied to an FP32 ONNX graph by ONNX Runtime's post-training
quantizer, for a reference that has no torch network (``harness.models.onnx_graph``).

The scheme is the harness export's (``harness.artifacts.onnx.int8_scheme``): per-channel symmetric
8-bit weights (s_w = max|w| / 127 per output channel), static per-tensor symmetric 8-bit
activations with s_x = max|x| / 127 over the calibration patches, on the inputs and outputs of the
weighted ops (Conv, ConvTranspose, MatMul, Gemm), written as Q/DQ ONNX. ORT's ``quantize_static``
with MinMax calibration and symmetric activations and weights computes exactly these scales; its
graph pre-processing (``quant_pre_process``) is not run, so the graph stays the reference's node
for node and verifies as the track's network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from harness.artifacts.onnx.export import set_metadata
from harness.artifacts.onnx.graph import WEIGHTED_OPS
from harness.errors import HarnessError
from harness.models.interface import INPUT_NAME

"""The ops quantized: those that carry the weights the track's bit limits count."""
TOOL = "onnxruntime.quantization.quantize_static"


class _Patches(CalibrationDataReader):
    """The calibration patch batches, one feed each, for ORT's calibrator."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self._feeds = iter(
            [{INPUT_NAME: np.ascontiguousarray(b.numpy(), dtype=np.float32)} for b in batches]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_graph_int8(fp32: Path, calibration: list[torch.Tensor], out: Path) -> Path:
    """Write the standard INT8 Q/DQ form of the FP32 graph ``fp32`` (calibrated on the unlabeled
    ``calibration`` patch batches) to ``out``."""
    if not calibration:
        raise HarnessError("INT8 quantization of the graph needs calibration patches")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32),
        str(out),
        _Patches(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(WEIGHTED_OPS),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    model = onnx.load(str(out))
    set_metadata(model, {"source": TOOL, "weight_bits": "8", "activation_bits": "8"})
    onnx.save(model, str(out))
    return out
