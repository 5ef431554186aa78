"""Post-training only (a closed track): a quantized checkpoint loaded onto the reference
architecture must hold weights a post-training quantizer can reach from the FP32 ones.

For each quantized layer, the transforms the checkpoint declares are undone on the FP32 weight W:
an input scale s (explicit, or folded into the producer as SmoothQuant does: ``x / s`` feeds the
layer, so its quantized weight targets W·diag(s)) and an input rotation R (x ↦ R x, target
W·diag(s)·Rᵀ along the input-channel axis). The dequantized weight plus any low-rank branch must
lie within ``REACH_STEPS`` (4) of that target: RMS(ŵ + UV − target) ≤ REACH_STEPS · RMS(step), the
step being the scale of each weight's group. Every other parameter (norms, biases, float layers)
must equal FP32, divided by s per output channel where a producer absorbed a folded input scale.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.errors import CheckpointError
from reference_methods.simulator.layer_extras import FOLDED_INPUT_SCALES
from reference_methods.simulator.quantized_layers import QuantLayer
from reference_methods.simulator.scheme import quantized_layers
from reference_methods.simulator.weight_format import to_rows

REACH_STEPS = 4.0
"""RMS distance from FP32, in quantization steps, a post-training quantized weight may have.
Measured on the demo models: round-to-nearest 0.29, GPTQ up to 0.44, COMQ and Permutation-COMQ up
to 2.11 (SegResNet's 16-input output conv at W4A4, where coordinate descent trades rounding error
for output error); fine-tuning 20 Adam steps moves 8-bit weights by tens of steps. 4 leaves the
shipped methods a 2x margin."""
PARAMETER_RTOL = 1e-5
PARAMETER_ATOL = 1e-7
"""A parameter the quantizer does not own must equal FP32 up to float rounding."""


class NotPostTraining(CheckpointError):
    """The checkpoint's weights are not within a post-training quantizer's reach of FP32."""


def out_of_reach(where: str, steps: float) -> str:
    """The submitter's message for weights ``steps`` RMS quantization steps from FP32."""
    return (
        f"{where}: its weights are {steps:.1f} quantization steps (RMS) from the FP32 reference, "
        f"beyond the {REACH_STEPS:g} a post-training quantizer reaches; a closed track admits "
        "post-training quantization only (retrained or fine-tuned weights belong on an open track)"
    )


def reach_in_steps(quantized: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Per quantized layer, RMS(ŵ + UV − target) / RMS(step) (see module docstring)."""
    fp32 = reference.state_dict()
    folds: dict[str, tuple[str, torch.Tensor]] = getattr(quantized, FOLDED_INPUT_SCALES, {})
    absorbed = {producer: factors for producer, factors in folds.values()}
    distances = {}
    for name, layer in quantized_layers(quantized).items():
        target = fp32[f"{name}.weight"].to(torch.float32)
        if name in absorbed:
            target = _per_output_channel(target, 1 / absorbed[name], layer.weight_channel_axis)
        distances[name] = _steps(layer, target, folds.get(name, (None, None))[1])
    return distances


def check_post_training(quantized: nn.Module, reference: nn.Module) -> None:
    """NotPostTraining naming the first layer or parameter out of reach (see module docstring)."""
    for name, steps in reach_in_steps(quantized, reference).items():
        if steps > REACH_STEPS:
            raise NotPostTraining(out_of_reach(f"layer {name!r}", steps))
    fp32 = reference.state_dict()
    layers = quantized_layers(quantized)
    folds = getattr(quantized, FOLDED_INPUT_SCALES, {})
    absorbed = {producer: factors for producer, factors in folds.values()}
    state = quantized.state_dict()
    owned = {f"{name}.weight" for name in layers}
    for key, value in fp32.items():
        if key in owned:
            continue
        owner = key.rpartition(".")[0]
        expected = value
        if owner in absorbed and value.is_floating_point():
            axis = layers[owner].weight_channel_axis if owner in layers else 0
            axis = axis if value.ndim > 1 else 0
            expected = _per_output_channel(value.to(torch.float32), 1 / absorbed[owner], axis)
        got = state.get(key)
        if got is None or got.shape != expected.shape:
            raise NotPostTraining(f"parameter {key!r} of the reference network is missing")
        if not torch.allclose(
            got.to(torch.float32), expected.to(torch.float32), PARAMETER_RTOL, PARAMETER_ATOL
        ):
            difference = float((got.to(torch.float32) - expected.to(torch.float32)).abs().max())
            raise NotPostTraining(
                f"parameter {key!r} differs from the FP32 reference (max |Δ| = {difference:.3g}); "
                "a closed track admits post-training quantization only: parameters the quantizer "
                "does not own (norms, biases, float layers) keep their FP32 values"
            )


def _steps(layer: QuantLayer, target: torch.Tensor, folded: torch.Tensor | None) -> float:
    scale = layer.input_scale if layer.input_scale is not None else folded
    if scale is not None:
        target = _per_input_channel(target, scale, layer)
    if layer.rotation is not None:
        axis = _input_axis(layer)
        target = (target.movedim(axis, -1) @ layer.rotation.T).movedim(-1, axis)
    weight = layer.quantized_weight()
    held = weight.dequantize()
    branch = layer.lowrank_weight()
    if branch is not None:
        held = held + to_rows(branch, layer.weight_channel_axis)
    step = weight.per_weight(weight.scale).abs()
    distance = float((held - to_rows(target, layer.weight_channel_axis)).pow(2).mean().sqrt())
    return distance / float(step.pow(2).mean().sqrt())


def _input_axis(layer: QuantLayer) -> int:
    """Input-channel axis of the layer's weight: 0 for ConvTranspose3d, else 1."""
    return 1 - layer.weight_channel_axis


def _per_input_channel(
    weight: torch.Tensor, factors: torch.Tensor, layer: QuantLayer
) -> torch.Tensor:
    """``weight`` with input channel j multiplied by factors[j] (grouped convs: each group's
    slice of the factors)."""
    axis = _input_axis(layer)
    width = weight.shape[axis]
    groups = len(factors) // width
    if groups > 1:  # grouped conv: rows of group g see input channels g*width ... (g+1)*width-1
        per_row = factors.reshape(groups, 1, width).expand(groups, weight.shape[0] // groups, width)
        shape = (weight.shape[0], width) + (1,) * (weight.ndim - 2)
        return weight * per_row.reshape(shape).to(weight.dtype)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight * factors.reshape(shape).to(weight.dtype)


def _per_output_channel(tensor: torch.Tensor, factors: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * tensor.ndim
    shape[axis] = -1
    return tensor * factors.reshape(shape).to(tensor.dtype)
