"""Round-to-nearest (RTN): symmetric absmax weights, optional activation quantization.

    code = clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1),  s = max|w in group| / (2^(b-1) - 1)

with one group per tensor, per output channel, or per run of ``weight_group_size`` consecutive
input weights of an output channel (group-wise). RTN is exactly the harness's simulated scheme, so
its config is a ``QuantConfig`` (e.g. ``QuantConfig.from_scheme("w4a16-per-channel-g32")``): the
scheme's rule table sets per-tensor or per-channel weights and the activation quantizer.
"""

from collections.abc import Iterable

import torch
from torch import nn

from reference_methods.methods.registry import register_method
from reference_methods.simulator.scheme import QuantConfig, quantize

RTNConfig = QuantConfig


@register_method(
    "rtn",
    config=QuantConfig,
    label="RTN",
    summary="round-to-nearest absmax weights, calibrated static activation scales",
)
def apply(
    model: nn.Module, config: RTNConfig, calibration: Iterable[torch.Tensor] = ()
) -> nn.Module:
    """RTN-quantized deep copy of ``model``; static activation scales come from ``calibration``."""
    return quantize(model, config, calibration)
