"""Does a backend's engine run an ONNX file as ONNX Runtime does?

ONNX Runtime is the reference executor of Q/DQ semantics. Another engine (OpenVINO, TensorRT)
may fold scales into its kernels and round a requantized value to the neighbouring code now and
then, which moves the logits a little; but it may also run a placement it does not fuse in a way
that changes the result (the NNCF ONNX-backend file of the demo UNETR: OpenVINO's logits 19% off
ORT's, mean DSC 5% lower). The deviation is mean |Δ logit| / mean |ORT logit| of the engine
against ONNX Runtime, both running the same file; at most ``ENGINE_DEVIATION`` is admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from harness.errors import SubmissionError
from harness.onnxruntime_session import OrtNetwork, create_session

REFERENCE_ENGINE = "onnxruntime-cpu"
"""The backend whose engine is the reference executor (its uploads need no comparison)."""
ENGINE_DEVIATION = 0.1
"""Most a backend's logits may deviate from ONNX Runtime's (the reference executor of Q/DQ
semantics) on the same file, mean |Δ logit| / mean |logit|: for the standard export to use a
placement (over the calibration patches) and for an upload to be scored (on the first
calibration patch). Measured on OpenVINO 2026.4: 0.026-0.044 for the demo UNet and SegResNet in
either placement, 0.021 for UNETR in ORT's, 0.050 in OpenVINO's and 0.04 for the untrained test
UNet; 0.16 for UNETR in OpenVINO's placement while its Concat-fed Conv inputs were stored as int8
(``harness.artifacts.onnx.placement.SIGNED_CONCAT_DEVIATION``), which then lost 7% of its mean
DSC where ORT running the same file lost 1%; 0.19 for NNCF's ONNX-backend file of the UNet."""


def engine_deviation(
    network: nn.Module, path: Path, batches: Sequence[torch.Tensor], threads: int = 1
) -> float:
    """mean |Δ logit| / mean |logit| between ``network`` (an engine running the file at ``path``)
    and ONNX Runtime running the same file, over ``batches``."""
    reference = OrtNetwork(create_session(path, threads))
    difference = magnitude = 0.0
    with torch.no_grad():
        for batch in batches:
            expected = reference(batch)
            difference += float((network(batch) - expected).abs().sum())
            magnitude += float(expected.abs().sum())
    return difference / magnitude if magnitude else 0.0


def check_engine_agreement(
    backend: str,
    network: nn.Module,
    path: Path,
    patch: torch.Tensor,
    threads: int = 1,
    *,
    enforce: bool = True,
) -> float | None:
    """The deviation of ``backend``'s engine from ONNX Runtime on ``patch`` (one calibration
    patch, batch of 1) for the file at ``path`` (None on ONNX Runtime itself); with
    ``enforce``, ``SubmissionError`` naming it beyond ``ENGINE_DEVIATION``."""
    if backend == REFERENCE_ENGINE:
        return None
    deviation = engine_deviation(network, path, [patch], threads)
    if enforce and deviation > ENGINE_DEVIATION:
        raise SubmissionError(
            f"{backend} does not run this file faithfully: on the first calibration patch its "
            f"logits deviate from ONNX Runtime's on the same file by {deviation:.3f} (mean "
            f"|Δ logit| / mean |logit|; at most {ENGINE_DEVIATION} is admitted), so its score "
            "would not be the file's; place the Q/DQ nodes as the engine fuses them (e.g. "
            "`harness export-onnx`, or NNCF on OpenVINO written back with openvino_to_qdq)"
        )
    return deviation
