"""Calibration of static activation scales: the range of a layer's inputs over the calibration
batches, per tensor or per input channel, chosen by one of three rules (``ActivationCalibration``):

* ``max``: the observed extremes, max|x| on the symmetric grid, [min x, max x] on the asymmetric one
  (the study's definition, and every deployment toolkit's default);
* ``percentile``: the p-th percentile of |x| (symmetric), or the (100 - p)-th and p-th percentiles
  of x (asymmetric), so that a few outliers do not stretch the grid;
* ``mse``: the clipping range t * (max range), t in {1/M, 2/M, ..., 1}, that minimises the mean
  squared quantization error of the observed values on the layer's grid (ties: the widest).

Percentile and MSE read a histogram of ``HISTOGRAM_BINS`` equal bins over the observed extremes
(a second pass over the batches, as the histogram calibrators of TensorRT and ONNX Runtime do):
the percentile is interpolated linearly inside its bin, and the MSE is evaluated on the bin
centres, weighted by their counts.
"""

from __future__ import annotations

from enum import StrEnum

import torch

from reference_methods.simulator.quantizer import (
    asymmetric_scale_zero_point,
    fake_quantize_asymmetric,
    qmax,
)

DEFAULT_PERCENTILE = 99.99
"""TensorRT's percentile calibrator default (ONNX Runtime's is 99.999): about 1 in 10,000 values
may be clipped."""
HISTOGRAM_BINS = 2048
"""Bins of the calibration histogram, as in TensorRT's and ONNX Runtime's histogram calibrators."""
MSE_CANDIDATES = 128
"""Clipping ranges tried by MSE calibration: t * (max range) for t = 1/128 ... 1."""


class ActivationCalibration(StrEnum):
    """How a static activation scale is chosen from the calibration data (module docstring)."""

    MAX = "max"
    PERCENTILE = "percentile"
    MSE = "mse"


def check_percentile(percentile: float) -> float:
    """``percentile`` if it lies in (50, 100], else ValueError (below 50 the "upper" percentile
    would cut into the bulk of the values)."""
    if isinstance(percentile, bool) or not isinstance(percentile, int | float):
        raise ValueError(f"activation percentile must be a number, got {percentile!r}")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"activation percentile must lie in (50, 100], got {percentile!r}")
    return float(percentile)


class RangeObserver:
    """Running range of one layer's inputs, per tensor (``channel_axis`` None) or per channel.

    ``observe`` records min/max (|x| when ``symmetric``) until ``start_histogram``, then a
    histogram over that range; ``range(bits)`` is the calibrated (low, high) per group, shape
    (groups,), low = -high on the symmetric grid.
    """

    def __init__(
        self,
        *,
        symmetric: bool,
        channel_axis: int | None,
        calibration: ActivationCalibration | str = ActivationCalibration.MAX,
        percentile: float = DEFAULT_PERCENTILE,
    ) -> None:
        self.symmetric = symmetric
        self.channel_axis = channel_axis
        self.calibration = ActivationCalibration(calibration)
        self.percentile = check_percentile(percentile)
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    @property
    def seen(self) -> bool:
        return self.high is not None

    @property
    def needs_histogram(self) -> bool:
        return self.calibration is not ActivationCalibration.MAX

    def observe(self, x: torch.Tensor) -> None:
        values = self._groups(x)
        if self.counts is not None:
            self._add_to_histogram(values)
            return
        low, high = values.amin(dim=1), values.amax(dim=1)
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def start_histogram(self) -> None:
        """From now on, ``observe`` fills the histogram over the range recorded so far."""
        if not self.seen:
            raise RuntimeError("no calibration batch reached this layer")
        self.counts = torch.zeros(len(self.high), HISTOGRAM_BINS, dtype=torch.float64)

    def range(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Calibrated (low, high) per group for a ``bits``-bit grid."""
        if not self.seen:
            raise RuntimeError("no calibration batch reached this layer")
        low, high = self.low, self.high
        if self.calibration is ActivationCalibration.PERCENTILE:
            fraction = self.percentile / 100.0
            high = self._quantile(fraction)
            if not self.symmetric:
                low = self._quantile(1.0 - fraction)
        elif self.calibration is ActivationCalibration.MSE:
            low, high = self._mse_range(bits)
        if self.symmetric:
            return -high, high
        return low, high

    # internals

    def _groups(self, x: torch.Tensor) -> torch.Tensor:
        """(groups, values) in float32: per channel or one row; |x| on the symmetric grid."""
        x = x.detach().to(torch.float32)
        rows = x.reshape(1, -1) if self.channel_axis is None else x.movedim(self.channel_axis, 0)
        rows = rows.reshape(len(rows), -1)
        return rows.abs() if self.symmetric else rows

    def _edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, bin width) per group, float64; the symmetric histogram covers [0, max|x|]."""
        start = torch.zeros_like(self.high) if self.symmetric else self.low
        start, stop = start.to(torch.float64), self.high.to(torch.float64)
        return start, (stop - start) / HISTOGRAM_BINS

    def _add_to_histogram(self, values: torch.Tensor) -> None:
        start, width = self._edges()
        safe = torch.where(width > 0, width, torch.ones_like(width))
        position = (values.to(torch.float64) - start[:, None]) / safe[:, None]
        index = position.floor().clamp_(0, HISTOGRAM_BINS - 1).to(torch.int64)
        index += torch.arange(len(values))[:, None] * HISTOGRAM_BINS
        counts = torch.bincount(index.reshape(-1), minlength=self.counts.numel())
        self.counts += counts.reshape(self.counts.shape).to(torch.float64)

    def _quantile(self, fraction: float) -> torch.Tensor:
        """The ``fraction`` quantile per group from the histogram, linear inside its bin."""
        self._require_histogram()
        start, width = self._edges()
        cumulative = self.counts.cumsum(dim=1)
        target = fraction * cumulative[:, -1:]
        index = torch.searchsorted(cumulative, target).clamp_(max=HISTOGRAM_BINS - 1)
        before = torch.where(
            index > 0, cumulative.gather(1, (index - 1).clamp(min=0)), torch.zeros_like(target)
        )
        inside = self.counts.gather(1, index)
        within = torch.where(inside > 0, (target - before) / inside, torch.zeros_like(inside))
        value = start + width * (index[:, 0] + within[:, 0].clamp(0, 1))
        return value.to(torch.float32)

    def _mse_range(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) = t * (observed range) of least histogram-weighted squared error."""
        self._require_histogram()
        start, width = self._edges()
        centres = start[:, None] + width[:, None] * (torch.arange(HISTOGRAM_BINS) + 0.5)
        low, high = self.low.to(torch.float64), self.high.to(torch.float64)
        best_error = torch.full_like(high, float("inf"))
        best_t = torch.ones_like(high)
        for step in range(MSE_CANDIDATES, 0, -1):  # widest first: ties keep the widest range
            t = step / MSE_CANDIDATES
            if self.symmetric:
                scale = (t * high / qmax(bits)).clamp(min=torch.finfo(torch.float64).tiny)
                grid = scale[:, None] * torch.clamp(
                    torch.round(centres / scale[:, None]), max=qmax(bits)
                )
            else:
                scale, zero = asymmetric_scale_zero_point(t * low, t * high, bits)
                grid = fake_quantize_asymmetric(
                    centres, scale.to(torch.float64)[:, None], zero[:, None], bits
                )
            error = (self.counts * (centres - grid) ** 2).sum(dim=1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_t = torch.where(better, torch.full_like(best_t, t), best_t)
        return (best_t * low).to(torch.float32), (best_t * high).to(torch.float32)

    def _require_histogram(self) -> None:
        if self.counts is None:
            raise RuntimeError(
                f"{self.calibration.value} calibration needs the histogram pass "
                "(start_histogram, then the calibration batches again)"
            )
