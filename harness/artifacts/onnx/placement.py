"""Q/DQ placements: how a harness export stores activation codes and where it requantizes them,
chosen per engine (a backend names the placement its engine fuses best).

The integers are the same symmetric codes q ∈ [-127, 127] in every placement; the storage type
and the requantization points decide what an engine fuses into integer kernels:

- ``ORT_PLACEMENT`` stores q + 128 as uint8 (zero-point 128), the x86 U8S8 form ONNX Runtime's
  QLinearConv runs fastest; ORT fuses a layer into an integer kernel only with a quantizer on
  its output too, so its INT8 scheme requantizes every quantized layer's output
  (``requantize_outputs``; the simulated model does the same, see ``int8_scheme``).
- ``OPENVINO_PLACEMENT`` stores q as int8 with zero-point 0, as NNCF does: OpenVINO's
  low-precision transformations move a dequantization without zero-point through reshapes and
  ConvTranspose (which then runs in int8; a zero-point keeps it in float), and run a layer in
  int8 from its input quantizers alone, so its outputs stay in float. A Conv input made by a
  Concat is the exception: stored as uint8 with zero-point 128 (``unsigned_concat_outputs``).

No placement quantizes a tensor the simulated model does not: an exported file computes what the
simulator scores (``harness.artifacts.onnx.agreement``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError

ACTIVATION_ZERO_POINT = 128
"""uint8 zero-point: code q ∈ [-127, 127] is stored as q + 128."""
ACTIVATION_DTYPES = ("uint8", "int8")
NON_NEGATIVE_OPS = ("Relu", "Sigmoid", "Softmax")
"""Ops whose output is never negative, so symmetric codes of it lie in 0..127."""
SIGNED_CONCAT_DEVIATION = 0.156
"""Why ``unsigned_concat_outputs``: OpenVINO 2026.4 (CPU) miscomputes an int8 Conv whose input is
a Concat of int8 codes (zero-point 0): mean |Δ| / mean |ORT output| of a Conv reading a Concat of
two int8 tensors of N(0, 2) values (``tests/test_qdq_placement.py``), against 0.0 when the Conv's
input quantizer is stored as uint8 with zero-point 128 (the same codes). A ConvTranspose reading
such a Concat is computed right, and a zero-point would keep it in float, so it stays int8."""


@dataclass(frozen=True)
class QdqPlacement:
    """``activation_dtype`` ``"uint8"`` (zero-point 128) or ``"int8"`` (zero-point 0);
    ``requantize_outputs``: the engine needs each quantized layer's output requantized to run it
    as an integer kernel (the INT8 scheme for it then models that requantization);
    ``unsigned_non_negative``: a layer input that is never negative is stored as uint8 with
    zero-point 0; ``unsigned_concat_outputs``: a signed Conv input made by a Concat is stored as
    uint8 with zero-point 128 (the same codes; see ``SIGNED_CONCAT_DEVIATION``). ``name`` is
    recorded in the file's metadata."""

    name: str
    activation_dtype: str
    requantize_outputs: bool
    unsigned_non_negative: bool = False
    unsigned_concat_outputs: bool = False

    def __post_init__(self) -> None:
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise HarnessError(
                f"activation dtype must be one of {ACTIVATION_DTYPES}, not {self.activation_dtype}"
            )

    @property
    def zero_point(self) -> np.ndarray:
        """The activation zero-point as a scalar of the storage type."""
        if self.activation_dtype == "uint8":
            return np.array(ACTIVATION_ZERO_POINT, np.uint8)
        return np.array(0, np.int8)

    def zero_point_for(self, *, non_negative: bool, conv_reads_concat: bool = False) -> np.ndarray:
        """The zero-point of a quantizer whose input is (or is not known to be) non-negative and
        is (or is not) a Conv input made by a Concat."""
        if non_negative and self.unsigned_non_negative:
            return np.array(0, np.uint8)
        if conv_reads_concat and self.unsigned_concat_outputs:
            return np.array(ACTIVATION_ZERO_POINT, np.uint8)
        return self.zero_point


ORT_PLACEMENT = QdqPlacement("uint8-zero-point-128", "uint8", requantize_outputs=True)
OPENVINO_PLACEMENT = QdqPlacement(
    "int8-symmetric", "int8", False, unsigned_non_negative=True, unsigned_concat_outputs=True
)
PLACEMENTS = {p.name: p for p in (ORT_PLACEMENT, OPENVINO_PLACEMENT)}
PLACEMENT_CHOICES = {"ort": ORT_PLACEMENT, "openvino": OPENVINO_PLACEMENT}
"""Each placement by the engine it is made for: what ``harness export-onnx --placement`` takes."""
