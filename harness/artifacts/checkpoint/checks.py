"""Checks of a checkpoint's tensors shared by the loader and the verifier; each refusal is a
CheckpointError naming the layer and the tensor."""

from __future__ import annotations

import torch

from harness.errors import CheckpointError
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, LayerSpec
from reference_methods.simulator.quantizer import bits_for_affine_code, bits_for_code

DECLARES = {
    "weight_zero_point": "affine weights",
    "weight_group_ids": "permuted weights",
    "input_scale": "an explicit input scale",
    "lowrank_u": "a low-rank branch",
    "lowrank_v": "a low-rank branch",
    "act_zero_point": "static asymmetric activations",
}
"""What a layer declares when it holds each optional layout / extras tensor."""


def check_extras(name: str, spec: LayerSpec, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse extras tensors that the manifest entry does not declare, declared ones missing, and
    low-rank factors that are not (m, r) and (r, n) for the declared rank r and the codes' m x n."""
    layout_tensor(name, tensors, "input_scale", spec.input_scale)
    u, v = (
        layout_tensor(name, tensors, buffer, spec.lowrank_rank is not None)
        for buffer in ("lowrank_u", "lowrank_v")
    )
    codes = tensors.get(f"{name}.weight_codes")
    if u is None or codes is None:
        return
    rows = codes.shape[QUANT_LAYER_TYPES[spec.kind].weight_channel_axis]
    expected = ((rows, spec.lowrank_rank), (spec.lowrank_rank, codes.numel() // rows))
    if (tuple(u.shape), tuple(v.shape)) != expected:
        raise CheckpointError(
            f"layer {name!r} declares a rank-{spec.lowrank_rank} branch of its {expected[0][0]}x"
            f"{expected[1][1]} weight, (m, r) and (r, n), but holds lowrank_u {tuple(u.shape)} "
            f"and lowrank_v {tuple(v.shape)}"
        )


def layout_tensor(
    name: str, tensors: dict[str, torch.Tensor], buffer: str, declared: bool
) -> torch.Tensor | None:
    """The layer's ``buffer`` tensor, refused unless it is present exactly when ``declared``."""
    tensor = tensors.get(f"{name}.{buffer}")
    if (tensor is not None) != declared:
        declares = "declares" if declared else "does not declare"
        holds = "holds no" if tensor is None else "holds"
        raise CheckpointError(f"layer {name!r} {declares} {DECLARES[buffer]} but {holds} {buffer}")
    return tensor


def code_bits(name: str, spec: LayerSpec, codes: torch.Tensor) -> tuple[int, int]:
    """(fewest bits holding the codes, largest code magnitude); affine codes must be >= 0."""
    low, high = integer_range(name, "weight_codes", codes)
    if not spec.weight_zero_point:
        max_code = max(-low, high)
        return bits_for_code(max_code), max_code
    if low < 0:
        raise CheckpointError(
            f"layer {name!r}: affine weight_codes must be non-negative, found {low}"
        )
    return bits_for_affine_code(high), high


def check_activation_zero_point(name: str, spec: LayerSpec, zero: torch.Tensor) -> None:
    """An activation zero-point must be an integer code of the layer's asymmetric grid."""
    low, high = integer_range(name, "act_zero_point", zero)
    top = 2**spec.activation_bits - 1
    if low < 0 or high > top:
        raise CheckpointError(
            f"layer {name!r}: act_zero_point must lie in [0, {top}] for its "
            f"{spec.activation_bits}-bit asymmetric activations, found {low if low < 0 else high}"
        )


def check_code_bits(name: str, spec: LayerSpec, codes: torch.Tensor) -> None:
    bits, max_code = code_bits(name, spec, codes)
    if bits > spec.weight_bits:
        layout = " affine" if spec.weight_zero_point else ""
        magnitude = "" if spec.weight_zero_point else " in magnitude"
        raise CheckpointError(
            f"layer {name!r} declares {spec.weight_bits}-bit{layout} weights but holds codes up "
            f"to {max_code}{magnitude} (needs {bits} bits)"
        )


def integer_range(name: str, buffer: str, values: torch.Tensor) -> tuple[int, int]:
    """(min, max) of an integer tensor, (0, 0) when empty; non-integer dtypes are refused."""
    dtype = values.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise CheckpointError(f"layer {name!r}: {buffer} must be integers, got {dtype}")
    if values.numel() == 0:
        return 0, 0
    return int(values.min()), int(values.max())


def check_finite(label: str, tensor: torch.Tensor, positive: bool) -> None:
    """Finite (and positive) as the float32 the simulator computes in: a float64 1e300 is inf
    there, a 1e-320 is 0."""
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        raise CheckpointError(f"{label} has non-finite values")
    if positive and not (tensor > 0).all():
        raise CheckpointError(f"{label} has non-positive values")


def preview(names: list[str], limit: int = 5) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
