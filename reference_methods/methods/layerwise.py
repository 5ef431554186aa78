"""Layer-wise PTQ driver: fit each layer's quantized weight to the Gram of its inputs.

A solver maps (W, H, spec) to a ``QuantizedWeight``, with W the (m, n) rows view of the float
weight, H = X^T X (conv groups, n, n) the Gram of the layer's inputs (see ``gram``) and spec the
layer's ``LayerSpec`` under the scheme (bits, and the weight granularity of the rule table). By
default every layer's H comes from the FP32 model, in one pass over the calibration batches. With
``sequential=True`` the layers are fitted one at a time in execution order, each on the inputs of
the partially quantized model: a fitted layer's float weight is replaced by its dequantized weight
before the next layer's inputs are collected (activations stay in floating point meanwhile). The
fitted weights then go to ``simulated.quantize`` with the scheme, which adds the scheme's
activation quantizer (static scales calibrated on the same batches).
"""

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from reference_methods.simulator.progress import report
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, LayerSpec, layer_kind
from reference_methods.simulator.scheme import QuantConfig, layer_spec, quantize, target_layers
from reference_methods.simulator.weight_format import QuantizedWeight, from_rows, to_rows
from reference_methods.statistics.gram import collect_grams

FIT_STAGE = "fit layers"
SEQUENTIAL_HELP = "fit each layer on the partially quantized model's inputs, not the FP32 model's"

Solver = Callable[[torch.Tensor, torch.Tensor, LayerSpec], QuantizedWeight]


def fit_layers(
    model: nn.Module,
    scheme: QuantConfig,
    calibration: list[torch.Tensor],
    solve: Solver,
    sequential: bool = False,
) -> dict[str, QuantizedWeight]:
    """Quantized weights of the scheme's target layers, by name; ``model`` is left untouched."""
    work = copy.deepcopy(model).eval()
    layers = target_layers(work, scheme)
    weights = {}
    if not sequential:
        grams = collect_grams(work, layers, calibration)
        for done, (name, layer) in enumerate(layers.items(), 1):
            weights[name] = _fit(name, layer, grams[name], layer_spec(layer, scheme), solve)
            report(FIT_STAGE, name, done, len(layers))
        return weights
    for done, name in enumerate(_execution_order(work, layers, calibration[0]), 1):
        layer = layers[name]
        gram = collect_grams(work, {name: layer}, calibration)[name]
        weights[name] = weight = _fit(name, layer, gram, layer_spec(layer, scheme), solve)
        report(FIT_STAGE, name, done, len(layers))
        with torch.no_grad():
            layer.weight.copy_(from_rows(weight.dequantize(), layer.weight.shape, _axis(layer)))
    return weights


def quantize_layerwise(
    model: nn.Module,
    scheme: QuantConfig,
    calibration: Iterable[torch.Tensor],
    solve: Solver,
    sequential: bool = False,
) -> nn.Module:
    """Quantized deep copy of ``model``: ``fit_layers`` weights plus the scheme's activations."""
    batches = list(calibration)
    if not batches:
        raise ValueError("layer-wise quantization needs at least one calibration batch")
    return quantize(model, scheme, batches, fit_layers(model, scheme, batches, solve, sequential))


def _fit(
    name: str, layer: nn.Module, gram: torch.Tensor, spec: LayerSpec, solve: Solver
) -> QuantizedWeight:
    weight = layer.weight.detach().to(torch.float32)
    if not torch.isfinite(weight).all():
        raise ValueError(f"layer {name!r}: weight has non-finite values")
    try:
        return solve(to_rows(weight, _axis(layer)), gram, spec)
    except ValueError as error:
        raise ValueError(f"layer {name!r}: {error}") from error


def _axis(layer: nn.Module) -> int:
    return QUANT_LAYER_TYPES[layer_kind(layer)].weight_channel_axis


def _execution_order(
    model: nn.Module, layers: dict[str, nn.Module], batch: torch.Tensor
) -> list[str]:
    """Layer names by first call on ``batch``; layers it never reaches come last."""
    called: list[str] = []

    def hook(name: str):
        def record(_module: nn.Module, _args: tuple) -> None:
            if name not in called:
                called.append(name)

        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return called + [name for name in layers if name not in called]
