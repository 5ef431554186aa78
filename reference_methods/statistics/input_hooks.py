"""Run calibration batches through a model while observing the inputs of chosen layers."""

from collections.abc import Callable, Iterable

import torch
from torch import nn


def observe_layer_inputs(
    model: nn.Module,
    layers: dict[str, nn.Module],
    calibration: Iterable[torch.Tensor],
    observe: Callable[[str, nn.Module, torch.Tensor], None],
) -> None:
    """Call ``observe(name, layer, input)`` for every layer input on every calibration batch
    (no grad); a layer that no batch reached is an error."""
    reached: set[str] = set()

    def hook(name: str, layer: nn.Module):
        def record(_module: nn.Module, args: tuple) -> None:
            observe(name, layer, args[0])
            reached.add(name)

        return record

    handles = [layer.register_forward_pre_hook(hook(name, layer)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for batch in calibration:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in reached]
    if missing:
        raise ValueError(f"no calibration batch reached layer(s): {', '.join(missing)}")
