"""Reference baselines: which ones a track starts with, and computing one — the harness entry point
a worker calls for a baseline row.

On a backend that scores checkpoints (the simulator) a baseline is a reference PTQ method under a
scheme, saved as a quantized checkpoint and evaluated as that artifact, so its precision is the
one read back from it. On a backend that scores ONNX it is the standard INT8 deployment (per-channel
RTN 8-bit weights, static per-tensor 8-bit activations) exported as Q/DQ ONNX in the placement the
backend's engine fuses best; where the backend profiles layers and the track allows float MACs,
also that export with the layers the engine runs slower in integer kept in float; and the engine
vendor's own PTQ tool where the backend has one (NNCF for OpenVINO). A reference that is an ONNX
graph (no torch network) gets the same INT8 scheme applied to its graph by ONNX Runtime's
quantizer (``harness.artifacts.onnx.graph_ptq``), and the engine's PTQ tool.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.onnx.graph import GraphIndex, infer_shapes, macs_per_sample, weighted_ops
from harness.artifacts.onnx.graph_ptq import TOOL as GRAPH_PTQ_TOOL
from harness.artifacts.onnx.graph_ptq import quantize_graph_int8
from harness.artifacts.onnx.int8_scheme import int8_model
from harness.artifacts.onnx.placement import QdqPlacement
from harness.backends import backend_names, get_backend
from harness.entry.engine_export import export_for_engine
from harness.entry.evaluated import Evaluated
from harness.entry.upload import StageCallback, Submission, evaluate_submission
from harness.models.interface import ONNX_FILE
from harness.models.reference import read_spec
from harness.scoring.evaluation import EvaluationRun
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec, precision_prefix
from reference_methods.methods import METHODS, describe, method_config, quantize_with
from reference_methods.simulator.scheme import QuantConfig

BASELINE_GRANULARITIES = ("per-tensor", "per-channel", "adaptive")
ASYMMETRIC_BASELINE_GRANULARITY = "per-tensor"
"""RTN with asymmetric (uint8-style, zero-point) activations runs at this granularity on tracks
that quantize activations: static per-tensor activations on the zero-point grid are what
deployment toolkits (ONNX Runtime, TensorRT, OpenVINO) run; the symmetric rows stay the study's."""
"""RTN runs at every granularity of the study (MedQuanBench's three schemes)."""
CALIBRATION_BASELINE_GRANULARITY = "per-tensor"
CALIBRATION_BASELINE_SUFFIXES = ("-p99.99", "-mse")
"""RTN with static activation scales calibrated at the 99.99th percentile and by least squared
error runs beside max calibration at this granularity on tracks that quantize activations: one
scale per tensor is where the calibration of a static scale matters most (the study's
activation-calibration rows)."""
LOW_BIT_METHODS = ("gptq", "comq", "permutation-comq", "smoothquant")
"""Methods run per-channel with default options on tracks of at most 4-bit weights, where RTN
loses accuracy and error-compensating methods matter."""
LOW_BIT_MAX_WEIGHT_BITS = 4
EIGHT_BIT_METHODS = ("smoothquant",)
"""At 8 bits only SmoothQuant (whose point is activation outliers) is run, per-tensor, on tracks
that quantize activations."""
INT8_QDQ = "int8-qdq"
"""Scheme name of the standard INT8 Q/DQ export, the baseline of ONNX backends."""
INT8_QDQ_DESCRIPTION = (
    "per-channel RTN 8-bit weights, static per-tensor 8-bit activations calibrated by max|x|, "
    "exported as Q/DQ ONNX"
)
INT8_QDQ_GRAPH_DESCRIPTION = (
    "per-channel RTN 8-bit weights, static per-tensor 8-bit activations calibrated by max|x|, "
    "applied to the FP32 ONNX graph by ONNX Runtime's quantize_static (Q/DQ)"
)
INT8_QDQ_PROFILED = "int8-qdq-profiled"
"""Scheme name of the standard INT8 export with the layers the backend runs slower in integer
than in float (profiled on the backend) kept in float, within the track's float-MAC allowance."""
INT8_QDQ_PROFILED_DESCRIPTION = (
    INT8_QDQ_DESCRIPTION + "; the layers the track's backend runs slower in integer than in float "
    "(each profiled on a patch batch) kept in float, slowest first, up to the track's float-MAC "
    "allowance"
)


@dataclass(frozen=True)
class Baseline:
    """A reference baseline: ``method`` (a registered reference method) quantizes under
    ``scheme``; ``label`` and ``description`` are what the board shows."""

    method: str
    scheme: str
    label: str
    description: str


def ptq_methods() -> dict[str, tuple[str, str]]:
    """The registered reference PTQ methods, name → (label, summary), for front ends that list
    them (the site's method pages and its submit form)."""
    return {name: (m.label, m.summary) for name, m in sorted(METHODS.items())}


def compute_reference(track: LoadedTrack, *, on_stage: StageCallback | None = None) -> Evaluated:
    """The FP32 reference row of a board, on the track's backend: the float network itself on
    the simulator (the track's cached FP32 run); on an ONNX backend its FP32 export, verified as
    the reference network and measured on the backend like any entry (precision limits do not
    apply to it)."""
    about = {"scheme": "fp32", "method": "FP32 reference"}
    onnx = None if track.backend.scores("checkpoint") else track.fp32_onnx
    return evaluate_submission(
        track, Submission("fp32", onnx=onnx), fp32=track.fp32_run, about=about, on_stage=on_stage
    )


def baselines_for(spec: TrackSpec) -> list[Baseline]:
    """The baselines a track starts with. On a checkpoint backend: RTN at the track's precision
    for every granularity (symmetric activations, the study's), RTN with asymmetric activations
    at ``ASYMMETRIC_BASELINE_GRANULARITY`` and RTN with percentile and MSE activation calibration
    at ``CALIBRATION_BASELINE_GRANULARITY`` when the track quantizes activations, plus
    ``LOW_BIT_METHODS`` per-channel at ≤ 4-bit weights or ``EIGHT_BIT_METHODS`` per-tensor
    otherwise (when the track allows that granularity). On an ONNX backend, when the track allows
    8 bits: the standard INT8 Q/DQ export; with a float-MAC allowance on a backend that profiles
    layers, also that export with its slower integer layers in float; and the backend's engine
    PTQ tool, if any. An ONNX graph reference: the INT8 scheme on its graph and the engine's
    PTQ tool."""
    bits_w, bits_a = spec.weight_bits or 8, spec.activation_bits
    backend = get_backend(spec.backend)
    if not backend.scores("checkpoint"):
        if bits_w < 8 or (bits_a or 8) < 8:
            return []
        graph = not read_spec(spec.model_dir).has_torch_network
        description = INT8_QDQ_GRAPH_DESCRIPTION if graph else INT8_QDQ_DESCRIPTION
        baselines = [Baseline("rtn", INT8_QDQ, "RTN INT8 Q/DQ", description)]
        if backend.profiles_layers and spec.max_float_mac_fraction > 0 and not graph:
            label = "RTN INT8 Q/DQ, slower layers float"
            baselines.append(
                Baseline("rtn", INT8_QDQ_PROFILED, label, INT8_QDQ_PROFILED_DESCRIPTION)
            )
        if backend.engine_ptq is not None:
            ptq = backend.engine_ptq
            baselines.append(Baseline(ptq.method, ptq.scheme, ptq.label, ptq.description))
        return baselines
    precision = precision_prefix(bits_w, bits_a)
    baselines = [_baseline("rtn", f"{precision}-{g}", g) for g in BASELINE_GRANULARITIES]
    asymmetric = ASYMMETRIC_BASELINE_GRANULARITY
    if bits_a and (not spec.granularities or asymmetric in spec.granularities):
        baselines.append(_baseline("rtn", f"{precision}-{asymmetric}-asym", asymmetric))
    calibrated = CALIBRATION_BASELINE_GRANULARITY
    if bits_a and (not spec.granularities or calibrated in spec.granularities):
        baselines += [
            _baseline("rtn", f"{precision}-{calibrated}{suffix}", calibrated)
            for suffix in CALIBRATION_BASELINE_SUFFIXES
        ]
    if bits_w <= LOW_BIT_MAX_WEIGHT_BITS:
        methods, granularity = LOW_BIT_METHODS, "per-channel"
    else:
        methods, granularity = (EIGHT_BIT_METHODS if bits_a else ()), "per-tensor"
    if spec.granularities and granularity not in spec.granularities:
        return baselines
    scheme = f"{precision}-{granularity}"
    return baselines + [_baseline(m, scheme, granularity) for m in methods if _fits(m, scheme)]


def _fits(method: str, scheme: str) -> bool:
    """Whether ``method`` takes ``scheme`` with its default options (SmoothQuant, say, needs a
    scheme that quantizes activations): a baseline that could only fail is not offered."""
    try:
        method_config(method, QuantConfig.from_scheme(scheme))
    except ValueError:
        return False
    return True


def baseline_methods() -> tuple[str, ...]:
    """Every method name a baseline can have: the reference PTQ methods and each backend's engine
    PTQ tool (for front ends that check a maintainer's choice)."""
    engines = [get_backend(name).engine_ptq for name in backend_names()]
    return tuple(sorted({*METHODS, *(e.method for e in engines if e is not None)}))


def _baseline(method: str, scheme: str, granularity: str) -> Baseline:
    label = f"{METHODS[method].label} {METHODS[method].weight_layout or granularity}"
    config = QuantConfig.from_scheme(scheme)
    if config.activation_quantizer == "asymmetric":
        label += ", asymmetric activations"
    if config.activation_calibration.value != "max":
        label += f", {config.activation_calibration.value} activation calibration"
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
    efficiency: bool = True,
) -> Evaluated:
    """Quantize the track's reference model by ``method`` (its default ``options`` unless given)
    under ``scheme`` — or, on ONNX backends, the INT8 Q/DQ export (``INT8_QDQ``,
    ``INT8_QDQ_PROFILED``) or the backend's engine PTQ tool — write the artifact in ``workdir``
    and evaluate it as an upload (the engine's deviation from ONNX Runtime recorded, not
    enforced: see ``open_submission``). The result records the method and scheme (and, profiled,
    which layers stayed float and why); its timings the method's seconds. ``efficiency``: as in
    ``evaluate_submission``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    backend = track.backend
    extra: dict = {}
    if scheme == INT8_QDQ and not track.model_spec.has_torch_network:
        path = quantize_graph_int8(track.fp32_onnx, track.calibration, workdir / ONNX_FILE)
        extra["export"] = {"tool": GRAPH_PTQ_TOOL}
        submission = Submission("onnx", onnx=path)
    elif scheme in (INT8_QDQ, INT8_QDQ_PROFILED):
        skip = ()
        if scheme == INT8_QDQ_PROFILED:
            skip, extra["float_layers_profiled"] = _slower_layers_within_allowance(track, workdir)
        path, extra["export"] = _int8_export(track, workdir / ONNX_FILE, skip)
        submission = Submission("onnx", onnx=path)
    elif backend.engine_ptq is not None and scheme == backend.engine_ptq.scheme:
        path = backend.engine_quantize(track.fp32_onnx, track.calibration, workdir / ONNX_FILE)
        submission = Submission("onnx", onnx=path)
    else:
        config = QuantConfig.from_scheme(scheme)
        network = track.torch_model(method)
        model = quantize_with(method, network, config, track.calibration, options)
        reference = {"method": method, "scheme": scheme}
        if options:
            reference["options"] = dict(options)
        path = save_checkpoint(model, workdir / "checkpoint", reference=reference)
        submission = Submission("checkpoint", checkpoint=path)
    seconds = time.perf_counter() - start
    return evaluate_submission(
        track,
        submission,
        fp32=fp32,
        progress=progress,
        about={"scheme": scheme, "method": method} | extra | dict(about or {}),
        timings={"method": seconds},
        on_stage=on_stage,
        own_file=True,
        efficiency=efficiency,
    )


def _int8_export(track: LoadedTrack, path: Path, skip: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """The standard INT8 export of the track's model (``skip`` layers in float) in the first of
    the backend's placements that its engine runs faithfully (``export_for_engine``; the INT8
    scheme for each placement requantizes outputs where its engine needs it), with the placement
    chosen and each deviation measured."""
    network = track.torch_model("the harness's INT8 export")

    def model_for(placement: QdqPlacement) -> nn.Module:
        return int8_model(
            network, track.calibration, skip=skip, requantize_outputs=placement.requantize_outputs
        )

    _, export = export_for_engine(track, model_for, path)
    return path, export


def _slower_layers_within_allowance(
    track: LoadedTrack, workdir: Path
) -> tuple[tuple[str, ...], dict[str, dict[str, float]]]:
    """The layers (module names) to keep in float: those the backend runs slower in integer than
    in float on a patch batch of the track, the largest slowdown first, while the float-weight
    MACs stay within the track's ``max_float_mac_fraction``; with their profiled times."""
    fp32_path = track.fp32_onnx
    int8_path, _ = _int8_export(track, workdir / "int8-all.onnx")
    window = track.model_spec.sliding_window
    batch = torch.cat(track.calibration)[: window.sw_batch_size]
    slower = track.backend.slower_integer_layers(
        fp32_path, int8_path, batch, threads=track.spec.latency_threads
    )
    macs = _weight_macs(fp32_path)
    total = sum(macs.values()) or 1
    modules = dict(track.torch_model("layer profiling").named_modules())
    chosen: dict[str, dict[str, float]] = {}
    budget = track.spec.max_float_mac_fraction * total
    for weight, times in sorted(
        slower.items(), key=lambda item: item[1]["float_ms"] / item[1]["integer_ms"]
    ):
        module = weight.removesuffix(".weight")
        if module not in modules or weight not in macs or macs[weight] > budget:
            continue
        budget -= macs[weight]
        chosen[module] = times | {"mac_fraction": macs[weight] / total}
    return tuple(chosen), chosen


def _weight_macs(path: Path) -> dict[str, int]:
    """MACs per sample of each weighted op of an ONNX graph, by its weight tensor's name."""
    model = onnx.load(str(path), load_external_data=False)
    index = GraphIndex(model, infer_shapes(model))
    return {
        op.weight: macs_per_sample(op, index, index.shapes.get(op.weight) or [1]) or 0
        for op in weighted_ops(index)
    }
