"""Quantization granularity schemes and the reference rule table mapping a layer to its scale axes.

| scheme            | conv activation scale                     | linear act. | weight scale    |
|-------------------|-------------------------------------------|-------------|-----------------|
| per-tensor        | 1                                         | 1           | 1               |
| per-channel/token | one per input channel (C_i x 1 x 1 x 1)   | per token   | per out-channel |
| adaptive          | per voxel (1 x D x H x W) on 1x1x1 convs, | per token   | per out-channel |
|                   | one per input channel elsewhere           |             |                 |

Depthwise/grouped convs (groups > 1) stay per-channel for weights and activations in every scheme.
Per-token and per-voxel scales are always dynamic (computed from the current input).
"""

from dataclasses import dataclass
from enum import StrEnum

from torch import nn


class Granularity(StrEnum):
    """A whole-model quantization scheme, as named in MedQuanBench."""

    PER_TENSOR = "per-tensor"
    PER_CHANNEL = "per-channel"  # per-channel for convs / per-token for linears
    ADAPTIVE = "adaptive"  # adaptive stratification


class WeightGranularity(StrEnum):
    """Which weights share one scale (and zero-point); see ``weight_format`` for the layouts.

    The reference rule table uses only per-tensor and per-channel; group-wise and the permuted
    layouts come from methods (RTN with a group size, Permutation-COMQ).
    """

    PER_TENSOR = "per-tensor"
    PER_CHANNEL = "per-channel"
    GROUP_WISE = "group-wise"  # runs of group_size consecutive input weights of an output channel
    PERMUTED = "permuted"  # explicit per-weight group ids over the whole layer
    PERMUTED_PER_CHANNEL = "permuted-per-channel"  # explicit group ids within each output channel

    @property
    def has_group_ids(self) -> bool:
        """Permuted layouts store a group id per weight."""
        return self in (WeightGranularity.PERMUTED, WeightGranularity.PERMUTED_PER_CHANNEL)


class ActivationGranularity(StrEnum):
    """Axes sharing one activation scale of a layer's input."""

    PER_TENSOR = "per-tensor"  # one scale for the whole input
    PER_CHANNEL = "per-channel"  # conv: one per input channel
    PER_TOKEN = "per-token"  # linear: one per row over the feature axis
    PER_VOXEL = "per-voxel"  # conv: one per voxel, shared over channels

    @property
    def always_dynamic(self) -> bool:
        """Per-token and per-voxel scales depend on the input, so they cannot be calibrated."""
        return self in (ActivationGranularity.PER_TOKEN, ActivationGranularity.PER_VOXEL)


@dataclass(frozen=True)
class ScaleRule:
    """Weight and activation granularity the reference scheme assigns to one layer."""

    weight: WeightGranularity
    activation: ActivationGranularity


def scale_rule(layer: nn.Module, granularity: Granularity) -> ScaleRule:
    """Apply the rule table to a Conv3d, ConvTranspose3d or Linear layer (exact types only)."""
    granularity = Granularity(granularity)
    if type(layer) is nn.Linear:
        if granularity is Granularity.PER_TENSOR:
            return ScaleRule(WeightGranularity.PER_TENSOR, ActivationGranularity.PER_TENSOR)
        return ScaleRule(WeightGranularity.PER_CHANNEL, ActivationGranularity.PER_TOKEN)
    if type(layer) not in (nn.Conv3d, nn.ConvTranspose3d):
        raise TypeError(f"no quantization rule for {type(layer).__name__}")
    if layer.groups > 1:
        return ScaleRule(WeightGranularity.PER_CHANNEL, ActivationGranularity.PER_CHANNEL)
    if granularity is Granularity.PER_TENSOR:
        return ScaleRule(WeightGranularity.PER_TENSOR, ActivationGranularity.PER_TENSOR)
    if granularity is Granularity.ADAPTIVE and tuple(layer.kernel_size) == (1, 1, 1):
        return ScaleRule(WeightGranularity.PER_CHANNEL, ActivationGranularity.PER_VOXEL)
    return ScaleRule(WeightGranularity.PER_CHANNEL, ActivationGranularity.PER_CHANNEL)
