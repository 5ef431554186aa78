"""SmoothQuant (Xiao et al. 2023): migrate activation range into the weights before quantizing.

For a layer with input channels j (conv: input channels; linear: features), a_j = max|X_j| over
the calibration inputs and w_j = max|W_j| over the weights that multiply channel j (every output
channel and kernel tap),

    s_j = a_j^alpha / w_j^(1 - alpha)        (s_j = 1 where a_j or w_j is 0)

and layer(x; W) = layer(x / s; W s), with W s scaling channel j's weights by s_j: the same
function, whose input ranges a_j / s_j = (a_j w_j)^(1 - alpha) and weight ranges w_j s_j =
(a_j w_j)^alpha are balanced by alpha in [0, 1] (equal at the default 0.5), so that an outlier
channel no longer sets the activation scale of all the others.

The division x / s is folded into the op producing x when that op is a per-channel affine map on
the layer's channel axis whose output is the layer's input and feeds nothing else:
- a conv input from a Conv3d / ConvTranspose3d (its output channels' weights and bias / s) or an
  affine BatchNorm3d / InstanceNorm3d / GroupNorm (weight and bias / s);
- a linear input from a Linear (its rows and bias / s) or an affine LayerNorm over the features.
"Feeds nothing else" is read from the autograd graph of one forward pass on a calibration sample:
the producer's output has exactly one use -- the layer's -- and is not an output of the model, and
no in-place op touched it in between. Elsewhere the quantized layer keeps an explicit input scale
(``input_scale``, see ``layer_extras``; stored in the checkpoint) and divides its input by s at run
time. Smoothing alone leaves the FP function unchanged up to float rounding; then the scheme
quantizes the smoothed weights (round-to-nearest) and the smoothed activations (static scales
calibrated on them).
"""

import copy
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from reference_methods.methods.registry import register_method
from reference_methods.simulator.layer_extras import FOLDED_INPUT_SCALES, LayerExtras
from reference_methods.simulator.quantized_layers import layer_kind
from reference_methods.simulator.quantizer import absmax
from reference_methods.simulator.scheme import QuantConfig, quantize, target_layers
from reference_methods.statistics.input_hooks import observe_layer_inputs

DEFAULT_ALPHA = 0.5
_CONV_PRODUCERS = (
    nn.Conv3d,
    nn.ConvTranspose3d,
    nn.BatchNorm3d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
)
_LINEAR_PRODUCERS = (nn.Linear, nn.LayerNorm)


def check_alpha(alpha: float) -> None:
    """ValueError unless the migration strength alpha is a number in [0, 1]."""
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not math.isfinite(alpha)
        or not 0 <= alpha <= 1
    ):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def smoothing_factors(
    activation_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float
) -> torch.Tensor:
    """s_j = a_j^alpha / w_j^(1 - alpha) in float32; 1 where a_j or w_j is 0 or s_j not finite."""
    check_alpha(alpha)
    a, w = activation_absmax.to(torch.float64), weight_absmax.to(torch.float64)
    factors = a.pow(alpha) / w.pow(1 - alpha)
    valid = (a > 0) & (w > 0) & torch.isfinite(factors) & (factors > 0)
    return torch.where(valid, factors, torch.ones_like(factors)).to(torch.float32)


def weight_channel_absmax(layer: nn.Module) -> torch.Tensor:
    """w_j = max|W| over the weights multiplying input channel j, (C_in,)."""
    weight = layer.weight.detach().abs()
    match layer_kind(layer):
        case "linear":
            return weight.amax(0)
        case "conv_transpose3d":
            return weight.flatten(1).amax(1)
        case "conv3d":
            groups = layer.groups
            per_row = weight.flatten(2).amax(2)  # (C_out, C_in / groups)
            return per_row.reshape(groups, len(weight) // groups, -1).amax(1).flatten()
        case _:
            raise TypeError(f"{type(layer).__name__} is not a quantizable layer")


def scale_input_channels(layer: nn.Module, factors: torch.Tensor) -> None:
    """W <- W s in place: the weights multiplying input channel j times s_j."""
    weight = layer.weight
    match layer_kind(layer):
        case "linear":
            per_weight = factors[None, :]
        case "conv_transpose3d":
            per_weight = factors.reshape(-1, 1, 1, 1, 1)
        case _:
            groups = layer.groups
            per_group = factors.reshape(groups, 1, -1).expand(groups, len(weight) // groups, -1)
            per_weight = per_group.reshape(len(weight), -1, 1, 1, 1)
    with torch.no_grad():
        weight.mul_(per_weight.to(weight.dtype))


def fold_into_producer(producer: nn.Module, factors: torch.Tensor) -> None:
    """Divide the producer's output channel j by s_j in place (weight rows or affine, and bias)."""
    axis = 1 if type(producer) is nn.ConvTranspose3d else 0
    with torch.no_grad():
        for tensor in (producer.weight, producer.bias):
            if tensor is None:
                continue
            shape = [1] * tensor.ndim
            shape[axis if tensor.ndim > 1 else 0] = -1
            tensor.div_(factors.reshape(shape).to(tensor.dtype))


def activation_channel_absmax(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """a_j = max|X_j| of each named layer's input channels over the calibration batches."""
    found: dict[str, torch.Tensor] = {}

    def record(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        axis = -1 if layer_kind(layer) == "linear" else -4
        observed = absmax(x.detach(), (axis,)).flatten().to(torch.float32)
        found[name] = observed if name not in found else torch.maximum(found[name], observed)

    observe_layer_inputs(model, layers, calibration, record)
    return found


def sole_producers(
    model: nn.Module, layers: dict[str, nn.Module], sample: torch.Tensor
) -> dict[str, str]:
    """Layer name -> name of the per-channel affine module whose output is that layer's input and
    has no other use, from the autograd graph of ``model(sample)`` (see the module docstring)."""
    modules = dict(model.named_modules())
    produced: dict[str, list[tuple[torch.Tensor, object]]] = defaultdict(list)
    consumed: dict[str, list[tuple[torch.Tensor, object]]] = defaultdict(list)

    def on_output(name: str):
        def record(_module: nn.Module, _args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                produced[name].append((output, output.grad_fn))

        return record

    def on_input(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            consumed[name].append((args[0], args[0].grad_fn))

        return record

    candidates = {name: m for name, m in modules.items() if _affine_outputs(m)}
    handles = [m.register_forward_hook(on_output(name)) for name, m in candidates.items()]
    handles += [m.register_forward_pre_hook(on_input(name)) for name, m in layers.items()]
    try:
        with torch.enable_grad():
            result = model(sample.detach().clone().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    uses = _uses(_tensors(result))
    producers = {}
    for name, calls in consumed.items():
        if len(calls) != 1 or calls[0][1] is None:
            continue
        tensor, node = calls[0]
        for producer, outputs in produced.items():
            if (
                len(outputs) == 1
                and outputs[0][0] is tensor
                and outputs[0][1] is node
                and uses[(node, tensor.output_nr)] == 1
                and _folds_into(modules[producer], layers[name])
            ):
                producers[name] = producer
    return producers


@dataclass(frozen=True, eq=False)
class Smoothing:
    """A smoothed float copy of a model: every smoothed layer's weights scaled by s, the 1/s folded
    into the producers named in ``folded`` (layer -> producer), and the layers of
    ``input_scales`` still expecting their input divided by s (the quantized layer's extra)."""

    model: nn.Module
    factors: dict[str, torch.Tensor]
    folded: dict[str, str] = field(default_factory=dict)
    input_scales: dict[str, torch.Tensor] = field(default_factory=dict)


def smooth(
    model: nn.Module,
    layers: Iterable[str],
    calibration: list[torch.Tensor],
    alpha: float = DEFAULT_ALPHA,
) -> Smoothing:
    """Smooth the named layers of a deep copy of ``model``, with a_j from ``calibration`` and the
    folds found on its first sample; ``model`` is left untouched."""
    check_alpha(alpha)
    if not calibration:
        raise ValueError("SmoothQuant needs at least one calibration batch")
    smoothed = copy.deepcopy(model).eval()
    modules = dict(smoothed.named_modules())
    targets = {name: modules[name] for name in layers}
    activations = activation_channel_absmax(smoothed, targets, calibration)
    producers = sole_producers(smoothed, targets, calibration[0][:1])
    factors = {
        name: smoothing_factors(activations[name], weight_channel_absmax(layer), alpha)
        for name, layer in targets.items()
    }
    for name, layer in targets.items():
        scale_input_channels(layer, factors[name])
        if name in producers:
            fold_into_producer(modules[producers[name]], factors[name])
    explicit = {name: s for name, s in factors.items() if name not in producers}
    return Smoothing(smoothed, factors, producers, explicit)


@dataclass(frozen=True)
class SmoothQuantConfig:
    """SmoothQuant with migration strength ``alpha`` in [0, 1] on every target layer of
    ``scheme``, which must quantize activations (its bits, rules and float layers apply)."""

    scheme: QuantConfig
    alpha: float = field(
        default=DEFAULT_ALPHA,
        metadata={"help": "migration strength in [0, 1]: activation range moved into weights"},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, QuantConfig):
            raise TypeError(f"scheme must be a QuantConfig, got {type(self.scheme).__name__}")
        if self.scheme.activation_bits is None:
            raise ValueError(
                "SmoothQuant moves activation range into the weights: the scheme must quantize "
                f"activations (e.g. w8a8), got weight-only {self.scheme.name}"
            )
        check_alpha(self.alpha)


@register_method(
    "smoothquant",
    config=SmoothQuantConfig,
    label="SmoothQuant",
    summary="activation range migrated into the weights",
)
def apply(
    model: nn.Module, config: SmoothQuantConfig, calibration: Iterable[torch.Tensor]
) -> nn.Module:
    """SmoothQuant-quantized deep copy of ``model``: smoothed on the calibration batches, then
    quantized with the scheme (static activation scales from the same batches)."""
    batches = list(calibration)
    names = list(target_layers(model, config.scheme))
    smoothing = smooth(model, names, batches, config.alpha)
    extras = {name: LayerExtras(input_scale=s) for name, s in smoothing.input_scales.items()}
    quantized = quantize(smoothing.model, config.scheme, batches, extras=extras)
    folds = {c: (p, smoothing.factors[c]) for c, p in smoothing.folded.items()}
    setattr(quantized, FOLDED_INPUT_SCALES, folds)
    return quantized


def _affine_outputs(module: nn.Module) -> bool:
    """Whether ``module`` is a per-channel affine op whose output channels can absorb 1/s."""
    kind = type(module)
    if kind in (nn.Conv3d, nn.ConvTranspose3d, nn.Linear):
        return True
    if kind is nn.LayerNorm:
        return module.elementwise_affine and len(module.normalized_shape) == 1
    if kind is nn.GroupNorm:
        return module.affine
    return kind in (nn.BatchNorm3d, nn.InstanceNorm3d) and module.affine


def _folds_into(producer: nn.Module, layer: nn.Module) -> bool:
    """The producer's output channels are the layer's input channels on the same axis."""
    if layer_kind(layer) == "linear":
        producer_types, width = _LINEAR_PRODUCERS, layer.in_features
    else:
        producer_types, width = _CONV_PRODUCERS, layer.in_channels
    if type(producer) not in producer_types:
        return False
    return _output_channels(producer) == width


def _output_channels(producer: nn.Module) -> int:
    match producer:
        case nn.Linear():
            return producer.out_features
        case nn.Conv3d() | nn.ConvTranspose3d():
            return producer.out_channels
        case nn.LayerNorm():
            return producer.normalized_shape[0]
        case nn.GroupNorm():
            return producer.num_channels
        case _:
            return producer.num_features


def _tensors(result: object) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or nested tuples / lists / dicts of them)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, tuple | list):
        return [t for item in result for t in _tensors(item)]
    return []


def _uses(outputs: list[torch.Tensor]) -> Counter:
    """How many times each (autograd node, output index) is used: by a later node of the graph
    behind ``outputs``, or as one of the outputs."""
    uses: Counter = Counter((t.grad_fn, t.output_nr) for t in outputs if t.grad_fn is not None)
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for successor, index in node.next_functions:
            if successor is not None:
                uses[(successor, index)] += 1
                stack.append(successor)
    return uses
