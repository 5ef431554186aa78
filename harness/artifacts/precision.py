"""The one precision check: what an artifact really uses (read from it by its verifier) against
what the track allows — weight bits, activation bits and granularity."""

from __future__ import annotations

from collections.abc import Sequence

from harness.errors import SubmissionError

FLOAT_ACTIVATION_BITS = 32
"""Float activations (a report's ``activation_bits`` None) are float32: a 32-bit limit admits
them, as an FP32 model on an FP32 track."""


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


def check_precision(
    precision: dict,
    *,
    weight_bits: int | None,
    activation_bits: int | None,
    granularities: Sequence[str] = (),
    bits_per_weight_budget: float | None = None,
) -> None:
    """SubmissionError unless ``precision`` (a verifier's report) fits the limits: at most
    ``weight_bits`` / ``activation_bits`` (None: no limit / weight-only tracks admit float
    activations), one of ``granularities`` (empty: any) and at most ``bits_per_weight_budget``
    effective bits per weight (when the report has them: artifacts do, named schemes do not)."""
    used_w, used_a = precision.get("weight_bits"), precision.get("activation_bits")
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
    bpw = precision.get("bits_per_weight")
    if bits_per_weight_budget is not None and bpw is not None and bpw > bits_per_weight_budget:
        raise SubmissionError(
            f"the artifact stores {bpw:.2f} effective bits per weight (codes, scales, zero-points, "
            f"group ids and side branches of its quantized layers); this track's budget is "
            f"{bits_per_weight_budget:.2f} bits per weight"
        )
    label = granularity_label(precision)
    if granularities and label not in granularities:
        raise SubmissionError(
            f"granularity {label!r} is not allowed on this track; "
            f"allowed: {', '.join(granularities)}"
        )
