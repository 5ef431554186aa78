"""Post-training only (a closed track): a quantized checkpoint loaded onto the reference
architecture must hold weights a post-training quantizer can reach from the FP32 ones.

For each quantized layer, the transforms the checkpoint declares are undone on the FP32 weight W:
an input scale s (explicit, or folded into the producer as SmoothQuant does: ``x / s`` feeds the
layer, so its quantized weight targets W·diag(s)) and an input rotation R (x ↦ R x, target
W·diag(s)·Rᵀ along the input-channel axis). Then, output channel by output channel (``Reach``):

- every scale is a grid a quantizer could choose for the channels it covers: its code grid,
  2^b − 1 steps of the layer's b bits, spans at most ``max_grid_span(b)`` times the 2·max|target| of
  the output channels its weights lie in (per-tensor: the whole weight's; group-wise: its channel's,
  as GPTQ's groups take their scales from weights its error compensation has moved); a scale group
  whose target is all zero holds it exactly (the quantizer's s = 1, codes 0); with a low-rank
  branch UV the codes quantize target − UV, whose range counts, and the branch may be no larger
  (Frobenius norm) than the target it approximates, as a truncated SVD;
- the dequantized weight plus any low-rank branch lies within ``REACH_STEPS`` of the target, each
  weight's deviation counted in its own step: RMS over the channel of (ŵ + UV − target) / step ≤
  ``REACH_STEPS`` (per-channel and per-tensor scales: the channel's one step).

So no outlier scale widens another channel's reach: each channel answers for its own step, and no
step may exceed what the channel's own FP32 range calls for. Every other parameter (norms, biases,
float layers) must equal FP32, divided by s per output channel where a producer absorbed a folded
input scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness.errors import CheckpointError
from reference_methods.simulator.layer_extras import FOLDED_INPUT_SCALES
from reference_methods.simulator.quantized_layers import QuantLayer
from reference_methods.simulator.scheme import quantized_layers
from reference_methods.simulator.weight_format import to_rows

REACH_STEPS = 6.0
"""RMS distance from FP32 over one output channel, in that channel's own quantization steps, a
post-training quantized weight may have. Measured per channel on the three demo models (every
reference method at W8/W4/W2, per-tensor, per-channel, adaptive, group-wise g9, asymmetric
activations; and the ONNX files of ONNX Runtime, NNCF and the harness): round to nearest ≤ 0.48,
GPTQ ≤ 0.89, SVD/rotation/SmoothQuant ≤ 0.48, peer toolkits ≤ 0.50, COMQ and Permutation-COMQ up to
2.91 (SegResNet's 16-input output conv at W4A4, channel 3: coordinate descent trades rounding
error for output error, concentrated on few weights). 6 leaves them a 2x margin; fine-tuning 20
Adam steps moves 8-bit weights by tens of steps, and −W sits ~2·qmax·RMS(w)/max|w| steps away
(about 85 at 8 bits; only about 5 at 4 bits, where no step bound tells it from quantization)."""
MAX_GRID_SPAN = 3.0
"""Largest ratio of a scale's code grid (2^b − 1 steps) to 2·max|w| of the output channels it
covers, from 3 bits up. Round to nearest gives (2^b − 1)/(2^b − 2) (1.004 at 8 bits, 1.07 at 4);
measured worst: NNCF's ONNX files 2.008 (the first conv's weights on half the int8 grid, its
overflow fix), GPTQ group-wise (g9) 1.15 at 4 bits and 1.38 at 3 (its groups take scales from
weights its error compensation moved), SVD's residual 1.07 at 4 bits, COMQ 1.02: a 1.5x margin
over NNCF."""
MAX_GRID_SPAN_AT_2_BITS = 6.0
"""The same bound at 2 bits (one code each side of 0), where GPTQ group-wise (g9) measured 3.00
and round to nearest 1.5: a 2x margin."""
BRANCH_NORM_RTOL = 1e-3
"""A low-rank branch may exceed the norm of the weight it approximates by float32 rounding only:
the best rank-r approximation (Eckart-Young) keeps r of its singular values, so its norm is at
most the weight's; a larger branch would widen its residual's grid at will."""
PARAMETER_RTOL = 1e-5
PARAMETER_ATOL = 1e-7
"""A parameter the quantizer does not own must equal FP32 up to float rounding."""


class NotPostTraining(CheckpointError):
    """The checkpoint's weights are not within a post-training quantizer's reach of FP32."""


@dataclass(frozen=True)
class Reach:
    """One layer's worst output channels: ``steps``, the largest per-channel RMS deviation from
    the target in the channel's own steps (``channel``, its ``step``: the channel's RMS step), and
    ``grid``, the largest ratio of a scale's code grid to the span the FP32 weights of its
    channels need (``grid_channel``, whose ``grid_step`` covers channels of FP32 weights of at
    most ``grid_max`` in magnitude at ``bits`` bits); with a low-rank branch, the Frobenius
    norms of the branch and of the target it approximates."""

    steps: float
    channel: int
    step: float
    grid: float
    grid_channel: int
    grid_step: float
    grid_max: float
    bits: int
    branch_norm: float = 0.0
    target_norm: float = 0.0


def channel_reach(
    held: torch.Tensor,
    target: torch.Tensor,
    step: torch.Tensor,
    groups: torch.Tensor,
    bits: int,
    branch: torch.Tensor | None = None,
) -> Reach:
    """``Reach`` of (m, n) rows (row i: output channel i) of the dequantized codes, their FP32
    target, each weight's step and each weight's scale group (ids into one flat list of scales),
    on a b-bit grid, plus a float low-rank ``branch`` the layer adds (its codes then quantize
    target − branch, whose range the grid is held to; see the module docstring). Computed in
    float64."""
    held, target, step = (t.to(torch.float64) for t in (held, target, step))
    quantized = target
    norms = {}
    if branch is not None:
        branch = branch.to(torch.float64)
        held, quantized = held + branch, target - branch
        norms = {
            "branch_norm": float(branch.norm()),
            "target_norm": float(target.norm()),
        }
    groups = groups.to(torch.int64).reshape(-1)
    count = int(groups.max()) + 1 if groups.numel() else 0
    flat = torch.zeros(count, dtype=torch.float64)
    need = flat.scatter_reduce(0, groups, quantized.abs().reshape(-1), "amax", include_self=True)
    # the range a scale answers to: the largest |w| of the channels (rows) its weights lie in
    rows_max = quantized.abs().amax(dim=1, keepdim=True).expand_as(quantized).reshape(-1)
    span = flat.scatter_reduce(0, groups, rows_max, "amax", include_self=True)
    group_step = flat.scatter_reduce(0, groups, step.reshape(-1), "amax", include_self=True)
    levels = 2**bits - 1
    ratio = torch.where(need > 0, group_step * levels / (2 * span), torch.zeros_like(need))
    deviation = held - target
    zero_group = (need == 0)[groups].reshape(held.shape)
    # a scale group whose FP32 weights are all zero: held exactly or out of reach
    in_steps = torch.where(
        zero_group,
        torch.where(deviation == 0, 0.0, torch.inf).to(torch.float64),
        deviation / step,
    )
    per_channel = in_steps.pow(2).mean(dim=1).sqrt()
    channel = int(per_channel.argmax())
    by_weight = ratio[groups].reshape(held.shape)
    grid_channel, grid_column = divmod(int(by_weight.argmax()), held.shape[1])
    worst_group = int(groups.reshape(held.shape)[grid_channel, grid_column])
    return Reach(
        steps=float(per_channel[channel]),
        channel=channel,
        step=float(step[channel].pow(2).mean().sqrt()),
        grid=float(ratio[worst_group]),
        grid_channel=grid_channel,
        grid_step=float(group_step[worst_group]),
        grid_max=float(span[worst_group]),
        bits=bits,
        **norms,
    )


def max_grid_span(bits: int) -> float:
    """``MAX_GRID_SPAN``, or ``MAX_GRID_SPAN_AT_2_BITS`` at 2 bits or fewer."""
    return MAX_GRID_SPAN_AT_2_BITS if bits <= 2 else MAX_GRID_SPAN


def check_reach(where: str, reach: Reach) -> str | None:
    """The submitter's message when ``reach`` is beyond a post-training quantizer's (an outlier
    scale first, then a channel too far from FP32); None when within it. ``where`` names the
    layer."""
    if reach.branch_norm > reach.target_norm * (1 + BRANCH_NORM_RTOL):
        return (
            f"{where}: its low-rank branch (Frobenius norm {reach.branch_norm:.4g}) is larger than "
            f"the FP32 weight it approximates ({reach.target_norm:.4g}); a truncated SVD never is, "
            "so the branch is no post-training approximation of the layer"
        )
    cap = max_grid_span(reach.bits)
    if reach.grid > cap:
        return (
            f"{where}, output channel {reach.grid_channel}: a scale of {reach.grid_step:.4g} "
            f"spans {reach.grid:.3g} times the range of the channel's FP32 weights at "
            f"{reach.bits} bits (max |w| = {reach.grid_max:.4g}, so a step of at most "
            f"{cap * 2 * reach.grid_max / (2**reach.bits - 1):.4g}); no post-training "
            "quantizer chooses a grid that much wider than the weights it quantizes"
        )
    if reach.steps > REACH_STEPS:
        return (
            f"{where}, output channel {reach.channel}: its weights are {reach.steps:.1f} "
            f"quantization steps (RMS) from the FP32 reference, in the channel's own step "
            f"({reach.step:.4g}), beyond the {REACH_STEPS:g} a post-training quantizer reaches; a "
            "closed track admits post-training quantization only (retrained or fine-tuned weights "
            "belong on an open track)"
        )
    return None


def layer_reach(quantized: nn.Module, reference: nn.Module) -> dict[str, Reach]:
    """Per quantized layer, its ``Reach`` against the FP32 target (see module docstring)."""
    fp32 = reference.state_dict()
    folds: dict[str, tuple[str, torch.Tensor]] = getattr(quantized, FOLDED_INPUT_SCALES, {})
    absorbed = {producer: factors for producer, factors in folds.values()}
    reaches = {}
    for name, layer in quantized_layers(quantized).items():
        target = fp32[f"{name}.weight"].to(torch.float32)
        if name in absorbed:
            target = _per_output_channel(target, 1 / absorbed[name], layer.weight_channel_axis)
        reaches[name] = _reach(layer, target, folds.get(name, (None, None))[1])
    return reaches


def reach_in_steps(quantized: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Per quantized layer, its worst channel's RMS deviation in that channel's steps."""
    return {name: reach.steps for name, reach in layer_reach(quantized, reference).items()}


def check_post_training(quantized: nn.Module, reference: nn.Module) -> None:
    """NotPostTraining naming the first layer or parameter out of reach (see module docstring)."""
    for name, reach in layer_reach(quantized, reference).items():
        problem = check_reach(f"layer {name!r}", reach)
        if problem is not None:
            raise NotPostTraining(problem)
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


def _reach(layer: QuantLayer, target: torch.Tensor, folded: torch.Tensor | None) -> Reach:
    scale = layer.input_scale if layer.input_scale is not None else folded
    if scale is not None:
        target = _per_input_channel(target, scale, layer)
    if layer.rotation is not None:
        axis = _input_axis(layer)
        target = (target.movedim(axis, -1) @ layer.rotation.T).movedim(-1, axis)
    weight = layer.quantized_weight()
    branch = layer.lowrank_weight()
    ids = torch.arange(weight.scale.numel()).reshape(weight.scale.shape)
    return channel_reach(
        weight.dequantize(),
        to_rows(target, layer.weight_channel_axis),
        weight.per_weight(weight.scale).abs(),
        weight.per_weight(ids),
        layer.spec.weight_bits,
        None if branch is None else to_rows(branch, layer.weight_channel_axis),
    )


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
