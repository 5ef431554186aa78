"""Reference baselines: which ones a track starts with, and computing one — the harness entry point
a worker calls for a baseline row.

On a backend that scores checkpoints (the simulator) a baseline is a reference PTQ method under a
scheme, saved as a quantized checkpoint and evaluated as that artifact, so its precision is the
one read back from it. On a backend that scores ONNX it is the standard INT8 deployment (per-channel
RTN 8-bit weights, static per-tensor 8-bit activations) exported as Q/DQ ONNX.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from harness.artifacts.checkpoint import save_checkpoint
from harness.backends import get_backend
from harness.inference.evaluation import EvaluationRun
from harness.submission import StageCallback, Submission, evaluate_submission
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec
from reference_methods.methods import METHODS, describe, quantize_with
from reference_methods.simulator.scheme import QuantConfig

BASELINE_GRANULARITIES = ("per-tensor", "per-channel", "adaptive")
ASYMMETRIC_BASELINE_GRANULARITY = "per-tensor"
"""RTN with asymmetric (uint8-style, zero-point) activations runs at this granularity on tracks
that quantize activations: static per-tensor activations on the zero-point grid are what
deployment toolkits (ONNX Runtime, TensorRT, OpenVINO) run; the symmetric rows stay the study's."""
"""RTN runs at every granularity of the study (MedQuanBench's three schemes)."""
LOW_BIT_METHODS = ("gptq", "comq", "permutation-comq", "smoothquant")
"""Methods run per-channel with default options on tracks of at most 4-bit weights, where RTN
loses accuracy and error-compensating methods matter."""
LOW_BIT_MAX_WEIGHT_BITS = 4
EIGHT_BIT_METHODS = ("smoothquant",)
"""At 8 bits only SmoothQuant (whose point is activation outliers) is run, per-tensor, on tracks
that quantize activations."""
WEIGHT_LAYOUT_LABELS = {"permutation-comq": "column-permuted"}
"""Methods whose weights are not laid out by the scheme's rule table are labelled by their
layout (Permutation-COMQ's baseline shares one column reordering per layer)."""
INT8_QDQ = "int8-qdq"
"""Scheme name of the standard INT8 Q/DQ export, the baseline of ONNX backends."""
INT8_QDQ_DESCRIPTION = (
    "per-channel RTN 8-bit weights, static per-tensor 8-bit activations calibrated by max|x|, "
    "exported as Q/DQ ONNX"
)


@dataclass(frozen=True)
class Baseline:
    """A reference baseline: ``method`` (a registered reference method) quantizes under
    ``scheme``; ``label`` and ``description`` are what the board shows."""

    method: str
    scheme: str
    label: str
    description: str


@dataclass(frozen=True)
class BaselineResult:
    """The baseline's result document and the artifact it was scored as (kept for download;
    None for the FP32 reference on the simulator, which is the reference model itself)."""

    result: dict
    artifact: Path | None


def compute_reference(
    track: LoadedTrack, *, workdir: Path, on_stage: StageCallback | None = None
) -> BaselineResult:
    """The FP32 reference row of a board, on the track's backend: the float network itself on
    the simulator; on an ONNX backend its FP32 export, verified as the reference network and
    measured on the backend like any entry (precision limits do not apply to it)."""
    about = {"scheme": "fp32", "method": "FP32 reference"}
    if track.backend.scores("checkpoint"):
        result, _ = evaluate_submission(track, Submission("fp32"), about=about, on_stage=on_stage)
        return BaselineResult(result, None)
    from harness.artifacts.onnx.export import export_fp32

    path = export_fp32(track.model, track.model_spec, Path(workdir) / "model.onnx")
    unlimited = replace(
        track.spec, weight_bits=None, activation_bits=None, bits_per_weight_budget=None
    )
    reference = LoadedTrack(unlimited, track.dataset, track.model_spec, track.model, track.timer)
    result, _ = evaluate_submission(
        reference,
        Submission("onnx", onnx=path),
        fp32=track.fp32_run,
        about=about | {"kind": "fp32"},
        on_stage=on_stage,
    )
    return BaselineResult(result, path)


def baselines_for(spec: TrackSpec) -> list[Baseline]:
    """The baselines a track starts with. On a checkpoint backend: RTN at the track's precision
    for every granularity (symmetric activations, the study's), RTN with asymmetric activations
    at ``ASYMMETRIC_BASELINE_GRANULARITY`` when the track quantizes activations, plus
    ``LOW_BIT_METHODS`` per-channel at ≤ 4-bit weights or ``EIGHT_BIT_METHODS`` per-tensor
    otherwise (when the track allows that granularity). On an ONNX backend: the standard INT8 Q/DQ
    export, when the track allows 8 bits."""
    bits_w, bits_a = spec.weight_bits or 8, spec.activation_bits
    if not get_backend(spec.backend).scores("checkpoint"):
        if bits_w < 8 or (bits_a or 8) < 8:
            return []
        return [Baseline("rtn", INT8_QDQ, "RTN INT8 Q/DQ", INT8_QDQ_DESCRIPTION)]
    precision = f"w{bits_w}a{bits_a or 16}"
    baselines = [_baseline("rtn", f"{precision}-{g}", g) for g in BASELINE_GRANULARITIES]
    asymmetric = ASYMMETRIC_BASELINE_GRANULARITY
    if bits_a and (not spec.granularities or asymmetric in spec.granularities):
        baselines.append(_baseline("rtn", f"{precision}-{asymmetric}-asym", asymmetric))
    if bits_w <= LOW_BIT_MAX_WEIGHT_BITS:
        methods, granularity = LOW_BIT_METHODS, "per-channel"
    else:
        methods, granularity = (EIGHT_BIT_METHODS if bits_a else ()), "per-tensor"
    if spec.granularities and granularity not in spec.granularities:
        return baselines
    return baselines + [_baseline(m, f"{precision}-{granularity}", granularity) for m in methods]


def _baseline(method: str, scheme: str, granularity: str) -> Baseline:
    label = f"{METHODS[method].label} {WEIGHT_LAYOUT_LABELS.get(method, granularity)}"
    if QuantConfig.from_scheme(scheme).activation_quantizer == "asymmetric":
        label += ", asymmetric activations"
    return Baseline(method, scheme, label, f"{describe(method)}, scheme {scheme}, default options")


def compute_baseline(
    track: LoadedTrack,
    *,
    method: str,
    scheme: str,
    workdir: Path,
    options: Mapping | None = None,
    fp32: EvaluationRun | None = None,
    progress: bool = False,
    about: Mapping | None = None,
    on_stage: StageCallback | None = None,
) -> BaselineResult:
    """Quantize the track's reference model by ``method`` (its default ``options`` unless given)
    under ``scheme`` — or
    the INT8 Q/DQ export on ONNX backends — write the artifact in ``workdir`` and evaluate it as
    an upload. The result records the method and scheme; its timings the method's seconds."""
    workdir = Path(workdir)
    start = time.perf_counter()
    if scheme == INT8_QDQ:
        from harness.artifacts.onnx.export import export_qdq, int8_model

        model = int8_model(track.model, track.calibration)
        path = export_qdq(model, track.model_spec, track.calibration, workdir / "model.onnx")
        submission = Submission("onnx", onnx=path)
    else:
        config = QuantConfig.from_scheme(scheme)
        model = quantize_with(method, track.model, config, track.calibration, options)
        reference = {"method": method, "scheme": scheme}
        if options:
            reference["options"] = dict(options)
        path = save_checkpoint(model, workdir / "checkpoint", reference=reference)
        submission = Submission("checkpoint", checkpoint=path)
    seconds = time.perf_counter() - start
    result, _ = evaluate_submission(
        track,
        submission,
        fp32=fp32,
        progress=progress,
        about={"scheme": scheme, "method": method} | dict(about or {}),
        timings={"method": seconds},
        on_stage=on_stage,
    )
    return BaselineResult(result, path)
