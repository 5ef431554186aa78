"""Activation analysis (MedQuanBench appendix C): how the input of every quantizable layer spreads
within its channels and across them, from calibration batches.

A layer input has channels c = 1..C (conv: axis −4 of (B, C, D, H, W); linear: the last axis, every
leading index a token); channel c holds the values x_c,1..N over all batches, voxels or tokens.

- **Within-channel kurtosis**: κ_c = m4_c / m2_c² − 3 with central moments
  m_p,c = mean_n (x_c,n − mean_n x_c,n)^p, averaged over the channels with m2_c > 0. This is the
  *excess* (Fisher) kurtosis, 0 for a Gaussian, as ``scipy.stats.kurtosis(x, fisher=True,
  bias=True)``. High: heavy tails inside a channel, which even a per-channel scale cannot fit.
- **Across-channel kurtosis**: the excess kurtosis of the C per-channel absmax values
  a_c = max_n |x_c,n|. High: a few channels span a much wider range than the rest, so one
  per-tensor scale leaves the others with few quantization levels.
- **Outlier map**: r_c = a_c / median(a), the median over the channels with a_c > 0 (dead
  channels hold no range to quantize); the outlier fraction is #{c : r_c > threshold} / C. The
  default threshold 7 is qmax of a 4-bit grid: beyond it a per-tensor W4A4 scale set by channel c
  leaves the median channel's largest value below one quantization step.

The moments are streamed as float64 power sums of x − k_c (k_c: channel mean of the first batch,
which keeps the sums well conditioned), so no activation is stored.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from reference_methods.simulator.quantized_layers import layer_kind
from reference_methods.statistics.sensitivity import kind_label

OUTLIER_THRESHOLD = 7.0


def excess_kurtosis(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """m4 / m2² − 3 along ``dim`` (biased moments, float64); NaN where m2 = 0."""
    x = x.to(torch.float64)
    centred = x - x.mean(dim=dim, keepdim=True)
    m2 = centred.pow(2).mean(dim=dim)
    m4 = centred.pow(4).mean(dim=dim)
    return torch.where(m2 > 0, m4 / m2.pow(2) - 3.0, torch.full_like(m2, math.nan))


class ChannelMoments:
    """Running per-channel count, shifted power sums Σ(x − k)^p for p = 1..4, and absmax."""

    def __init__(self) -> None:
        self.count = 0
        self._shift: torch.Tensor | None = None
        self._sums: list[torch.Tensor] = []
        self._absmax: torch.Tensor | None = None

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` of shape (N, C): N values of each of C channels."""
        values = values.detach().to(torch.float64)
        if self._shift is None:
            self._shift = values.mean(dim=0)
            self._sums = [torch.zeros_like(self._shift) for _ in range(4)]
            self._absmax = torch.zeros_like(self._shift)
        elif values.shape[1] != self._shift.shape[0]:
            raise ValueError(f"got {values.shape[1]} channels, expected {self._shift.shape[0]}")
        y = values - self._shift
        y2 = y * y
        for total, power in zip(self._sums, (y, y2, y2 * y, y2 * y2), strict=True):
            total += power.sum(dim=0)
        self._absmax = torch.maximum(self._absmax, values.abs().amax(dim=0))
        self.count += values.shape[0]

    @property
    def absmax(self) -> torch.Tensor:
        """a_c = max |x_c| per channel."""
        self._check()
        return self._absmax

    def kurtosis(self) -> torch.Tensor:
        """Per-channel excess kurtosis from the shifted sums; NaN for constant channels.

        With mean μ and raw moments s_p = Σ y^p / N of y = x − k: m2 = s2 − μ²,
        m4 = s4 − 4 μ s3 + 6 μ² s2 − 3 μ⁴.
        """
        self._check()
        s1, s2, s3, s4 = (total / self.count for total in self._sums)
        m2 = s2 - s1 * s1
        m4 = s4 - 4 * s1 * s3 + 6 * s1 * s1 * s2 - 3 * s1.pow(4)
        return torch.where(m2 > 0, m4 / m2.pow(2) - 3.0, torch.full_like(m2, math.nan))

    def _check(self) -> None:
        if self.count == 0:
            raise RuntimeError("no activation was recorded")


@dataclass(frozen=True)
class LayerActivations:
    """Input statistics of one layer: kurtoses (excess) and per-channel absmax."""

    name: str
    kind: str
    values_per_channel: int
    within_channel_kurtosis: float  # NaN when every channel is constant
    across_channel_kurtosis: float  # NaN when all channels share one absmax (or C = 1)
    channel_absmax: tuple[float, ...]

    @property
    def outlier_ratios(self) -> tuple[float, ...]:
        """r_c = a_c / median of the non-zero a_c (all 0 when every channel is dead)."""
        absmax = torch.tensor(self.channel_absmax, dtype=torch.float64)
        live = absmax[absmax > 0]
        if live.numel() == 0:
            return tuple(0.0 for _ in self.channel_absmax)
        median = torch.quantile(live, 0.5).item()
        return tuple((absmax / median).tolist())

    @property
    def max_outlier_ratio(self) -> float:
        return max(self.outlier_ratios)

    def outlier_fraction(self, threshold: float = OUTLIER_THRESHOLD) -> float:
        """#{c : r_c > threshold} / C."""
        ratios = self.outlier_ratios
        return sum(r > threshold for r in ratios) / len(ratios)


def _channels_last(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, C) view of a layer input: conv channel axis −4, linear feature axis −1."""
    channel_axis = -1 if kind == "linear" else -4
    return x.movedim(channel_axis, -1).reshape(-1, x.shape[channel_axis])


def analyse_activations(
    model: nn.Module, batches: Iterable[torch.Tensor]
) -> list[LayerActivations]:
    """Statistics of every quantizable layer's input over ``batches``, in module order.

    ``model`` runs as it is (eval mode for a reference model) under ``torch.no_grad()``; its
    forward pre-hooks are removed afterwards, whatever happens.
    """
    layers = {name: m for name, m in model.named_modules() if layer_kind(m) is not None}
    if not layers:
        raise ValueError("the model has no quantizable layer (Conv3d, ConvTranspose3d, Linear)")
    moments = {name: ChannelMoments() for name in layers}

    def recorder(name: str, kind: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            moments[name].update(_channels_last(args[0], kind))

        return hook

    handles = [
        layer.register_forward_pre_hook(recorder(name, layer_kind(layer)))
        for name, layer in layers.items()
    ]
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
                seen += 1
    finally:
        for handle in handles:
            handle.remove()
    if seen == 0:
        raise ValueError("activation analysis needs at least one batch")
    unreached = [name for name, m in moments.items() if m.count == 0]
    if unreached:
        raise RuntimeError(f"no batch reached the layers {', '.join(unreached)}")
    return [_layer_activations(name, kind_label(layers[name]), m) for name, m in moments.items()]


def _layer_activations(name: str, kind: str, moments: ChannelMoments) -> LayerActivations:
    within = moments.kurtosis()
    defined = within[~within.isnan()]
    absmax = moments.absmax
    return LayerActivations(
        name=name,
        kind=kind,
        values_per_channel=moments.count,
        within_channel_kurtosis=defined.mean().item() if defined.numel() else math.nan,
        across_channel_kurtosis=excess_kurtosis(absmax).item(),
        channel_absmax=tuple(absmax.tolist()),
    )
