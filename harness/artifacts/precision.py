"""The one precision check: what an artifact really uses (read from it by its verifier, which
measures and decides nothing) against what the track allows — weight bits, activation bits,
granularity, effective bits per weight and, for ONNX files, layer by layer (so the message names
the node): codes within the weight limit, quantized inputs under an activation limit, float
weights within the float-MAC allowance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.artifacts.checks import TrackChecks
from harness.errors import SubmissionError

FLOAT_ACTIVATION_BITS = 32
"""Float activations (a report's ``activation_bits`` None) are float32: a 32-bit limit admits
them, as an FP32 model on an FP32 track."""


@dataclass(frozen=True)
class PrecisionReport:
    """A precision report read as the typed figures every reader needs, whatever produced it
    (the checkpoint describer, the ONNX verifier, a named scheme, the FP32 reference): bits,
    the honest granularity label, effective bits per weight and size as stored, the artifact's
    digest. ``of`` is the one place that knows the verifiers' report layouts (a checkpoint's
    layers by name with its weight and activation granularities; an ONNX file's layers in graph
    order with its activation quantizers)."""

    weight_bits: int | None
    activation_bits: int | None
    granularity: str
    bits_per_weight: float | None
    size_bytes: int | None
    artifact_sha256: str
    onnx_layers: tuple[dict, ...]
    """An ONNX report's layers (node, op, weight bits and code range, input), for messages."""
    onnx_activation_quantizers: tuple[dict, ...]

    @classmethod
    def of(cls, precision: dict) -> PrecisionReport:
        layers = precision.get("layers")
        onnx = isinstance(layers, list)
        return cls(
            weight_bits=precision.get("weight_bits"),
            activation_bits=precision.get("activation_bits"),
            granularity=granularity_label(precision),
            bits_per_weight=precision.get("bits_per_weight"),
            size_bytes=precision.get("size_bytes"),
            artifact_sha256=precision.get("artifact_sha256", ""),
            onnx_layers=tuple(layers) if onnx else (),
            onnx_activation_quantizers=tuple(precision.get("activation_quantizer_nodes", ())),
        )


def granularity_label(precision: dict) -> str:
    """Short, honest granularity name of a verified artifact: the weight layout when it is not
    the rule table's (``column-permuted``, ``permuted``, ``group-wise g<size>``), else adaptive,
    per-channel or per-tensor (a checkpoint's weight and activation scales); or the ONNX
    verifier's weight granularity."""
    if "weight_granularities" not in precision:
        return precision.get("granularity", "")
    acts = set(precision.get("activation_granularities") or [])
    weights = set(precision.get("weight_granularities") or [])
    layers = list((precision.get("layers") or {}).values())
    if any(layer.get("weight_group_ids_shared") for layer in layers):
        return "column-permuted"
    if weights & {"permuted", "permuted-per-channel"}:
        return "permuted"
    if "group-wise" in weights:
        sizes = sorted(
            {layer["weight_group_size"] for layer in layers if layer.get("weight_group_size")}
        )
        return "group-wise " + "/".join(f"g{size}" for size in sizes)
    if "per-voxel" in acts:
        return "adaptive"
    if weights <= {"per-tensor"} and acts <= {"per-tensor"}:
        return "per-tensor"
    if "per-channel" in weights or "per-channel" in acts:
        return "per-channel"
    return "+".join(sorted(weights | acts))


def check_for_track(precision: dict, checks: TrackChecks) -> None:
    """``check_precision`` against everything a track allows."""
    check_precision(
        precision,
        weight_bits=checks.limits.weight_bits,
        activation_bits=checks.limits.activation_bits,
        granularities=checks.granularities,
        bits_per_weight_budget=checks.bits_per_weight_budget,
        max_float_mac_fraction=checks.limits.max_float_mac_fraction,
    )


def check_precision(
    precision: dict,
    *,
    weight_bits: int | None,
    activation_bits: int | None,
    granularities: Sequence[str] = (),
    bits_per_weight_budget: float | None = None,
    max_float_mac_fraction: float = 0.0,
) -> None:
    """SubmissionError unless ``precision`` (a verifier's report) fits the limits: at most
    ``weight_bits`` / ``activation_bits`` (None: no limit / weight-only tracks admit float
    activations), one of ``granularities`` (empty: any) and at most ``bits_per_weight_budget``
    effective bits per weight (when the report has them: artifacts do, named schemes do not);
    an ONNX report's layers and activation quantizers first, each against the limits, with
    float weights covering at most ``max_float_mac_fraction`` of the weighted MACs."""
    report = PrecisionReport.of(precision)
    _check_onnx_layers(report, weight_bits, activation_bits, max_float_mac_fraction)
    used_w, used_a = report.weight_bits, report.activation_bits
    if weight_bits is not None and (used_w is None or used_w > weight_bits):
        raise SubmissionError(
            f"track allows at most {weight_bits}-bit weights; the submission uses {used_w}-bit"
        )
    effective_a = FLOAT_ACTIVATION_BITS if used_a is None else used_a
    if activation_bits is not None and effective_a > activation_bits:
        used = f"{used_a}-bit" if used_a is not None else "floating-point"
        raise SubmissionError(
            f"track allows at most {activation_bits}-bit activations; the submission uses "
            f"{used} activations"
        )
    bpw = report.bits_per_weight
    if bits_per_weight_budget is not None and bpw is not None and bpw > bits_per_weight_budget:
        raise SubmissionError(
            f"the artifact stores {bpw:.2f} effective bits per weight (codes, scales, zero-points, "
            f"group ids and side branches of its quantized layers); this track's budget is "
            f"{bits_per_weight_budget:.2f} bits per weight"
        )
    label = report.granularity
    if granularities and label not in granularities:
        raise SubmissionError(
            f"granularity {label!r} is not allowed on this track; "
            f"allowed: {', '.join(granularities)}"
        )


def _float_admitted(bits: int, limit: int | None) -> bool:
    """Whether a float tensor of ``bits`` fits a bit limit as it is (None: no limit): a 32-bit
    limit admits float32, as an FP32 model on an FP32 track."""
    return limit is None or bits <= limit


def _check_onnx_layers(
    report: PrecisionReport,
    weight_bits: int | None,
    activation_bits: int | None,
    max_float_mac_fraction: float,
) -> None:
    """The per-layer limits of an ONNX report (none for other reports), the first offending
    node named."""
    layers = report.onnx_layers
    for layer in layers:
        what = f"{layer['op']} node {layer['node']!r}"
        if layer["weight_granularity"] == "none":
            if (
                not _float_admitted(layer["weight_bits"], weight_bits)
                and not max_float_mac_fraction
            ):
                raise SubmissionError(
                    f"{what}: weight {layer['weight']!r} is a {layer['weight_dtype']} "
                    "initializer, not DequantizeLinear of an integer initializer; the track "
                    f"allows at most {weight_bits}-bit weights"
                )
            continue
        if weight_bits is not None and layer["weight_bits"] > weight_bits:
            raise SubmissionError(
                f"{what}: weight {layer['weight']!r} carries {layer['weight_bits']}-bit codes "
                f"({layer['weight_dtype']} in [{layer['code_min']}, {layer['code_max']}]); the "
                f"track allows at most {weight_bits}-bit weights"
            )
        float_input = layer["activation_bits"] is None
        if float_input and not _float_admitted(FLOAT_ACTIVATION_BITS, activation_bits):
            raise SubmissionError(
                f"{what}: its input {layer['input']!r} is not quantized; the track requires "
                f"activations of at most {activation_bits} bits"
            )
    _check_float_layers(layers, weight_bits, max_float_mac_fraction)
    for quantizer in report.onnx_activation_quantizers:
        if activation_bits is not None and quantizer["bits"] > activation_bits:
            raise SubmissionError(
                f"{quantizer['op']} node {quantizer['node']!r} quantizes activations to "
                f"{quantizer['bits']} bits ({quantizer['dtype']}); the track allows at most "
                f"{activation_bits}"
            )


def _check_float_layers(
    layers: tuple[dict, ...], weight_bits: int | None, max_float_mac_fraction: float
) -> None:
    """Under a weight limit, float-weight layers may cover at most ``max_float_mac_fraction``
    of the MACs; the largest offender is named."""
    if weight_bits is None:
        return
    floats = [
        layer
        for layer in layers
        if layer["weight_granularity"] == "none" and layer["weight_bits"] > weight_bits
    ]
    if not floats:
        return
    total = sum(layer["macs"] or 0 for layer in layers) or 1
    fraction = sum(layer["macs"] or 0 for layer in floats) / total
    if fraction > max_float_mac_fraction:
        worst = max(floats, key=lambda layer: layer["macs"] or 0)
        raise SubmissionError(
            f"{worst['op']} node {worst['node']!r}: weight {worst['weight']!r} is a "
            f"{worst['weight_dtype']} initializer, not DequantizeLinear of an integer "
            f"initializer; float weights cover {fraction:.1%} of the weighted MACs and the track "
            f"allows {max_float_mac_fraction:.1%}"
        )
