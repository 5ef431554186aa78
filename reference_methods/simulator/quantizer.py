"""Uniform quantization as pure tensor functions.

Symmetric (signed) grid: codes = clamp(round(x / s), -qmax, qmax) with qmax = 2^(b-1) - 1 and
s = max|x| / qmax. Rounding is torch.round: round half to even, the same rule as ONNX
QuantizeLinear. The range is symmetric, so -2^(b-1) is never produced. An all-zero tensor, channel
or token gets s = 1.0, so its codes are 0 and its dequantized values are exactly 0 (never 0/0 =
NaN).

Affine codes (COMQ-style weight grids, w = s * (code + zero) with an integer zero-point) are
unsigned: a b-bit affine code lies in [0, 2^b - 1].

Asymmetric (unsigned, zero-point) activation grid, ONNX QuantizeLinear / DequantizeLinear with a
uint8 zero-point: q = clamp(round(x / s) + z, 0, 2^b - 1), x_hat = s (q - z), for a range
[lo, hi] widened to hold 0 (lo <= 0 <= hi: zero padding and ReLU zeros stay exact),
s = (hi - lo) / (2^b - 1) and z = clamp(round(-lo / s), 0, 2^b - 1); s = 1, z = 0 when hi = lo.
A one-signed input (after ReLU: lo = 0, z = 0) uses all 2^b levels instead of the 2^(b-1)
non-negative ones of the symmetric grid.
"""

from collections.abc import Sequence

import torch

MIN_BITS = 2
MAX_BITS = 8


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` if it is an int in [MIN_BITS, MAX_BITS], else raise ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def qmax(bits: int) -> int:
    """Largest code of the symmetric b-bit grid: 2^(b-1) - 1."""
    return 2 ** (check_bits(bits) - 1) - 1


def bits_for_code(max_abs_code: int) -> int:
    """Fewest bits b whose symmetric grid holds |code| <= max_abs_code (2^(b-1) - 1 >= m)."""
    return int(max_abs_code).bit_length() + 1


def affine_max_code(bits: int) -> int:
    """Largest code of the unsigned b-bit affine grid: 2^b - 1."""
    return 2 ** check_bits(bits) - 1


def bits_for_affine_code(max_code: int) -> int:
    """Fewest bits b whose affine grid [0, 2^b - 1] holds max_code >= 0."""
    return int(max_code).bit_length()


def absmax(x: torch.Tensor, keep: Sequence[int] = ()) -> torch.Tensor:
    """max|x| over every axis not in ``keep`` (negative axes allowed), keepdim so it broadcasts."""
    kept = {axis % x.ndim for axis in keep}
    reduced = tuple(axis for axis in range(x.ndim) if axis not in kept)
    if not reduced:
        return x.abs()
    return x.abs().amax(dim=reduced, keepdim=True)


def symmetric_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """s = absmax / qmax in float32; s = 1.0 where absmax == 0."""
    absmax = absmax.to(torch.float32)
    scale = absmax / qmax(bits)
    return torch.where(absmax > 0, scale, torch.ones_like(scale))


def quantize_groups(
    rows: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric RTN of an (m, n) matrix, one absmax scale per run of ``group_size`` consecutive
    entries of a row: codes (m, n) int8 and scales (m, n / group_size) float32."""
    m, n = rows.shape
    grouped = rows.reshape(m, n // group_size, group_size)
    scale = symmetric_scale(absmax(grouped, keep=(0, 1)), bits)
    return quantize_codes(grouped, scale, bits).reshape(m, n), scale.reshape(m, -1)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """clamp(round_half_even(x / s), -qmax, qmax) as torch.int8 (bits <= 8)."""
    limit = qmax(bits)
    return torch.clamp(torch.round(x / scale), -limit, limit).to(torch.int8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x_hat = codes * s in the scale's dtype (float32): exact for integer codes."""
    return codes.to(scale.dtype) * scale


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """dequantize(quantize_codes(x, s, b), s): x snapped to the b-bit grid of step s.

    Computed in floating point without the int8 round trip (same values: the codes are exact
    small integers), which keeps activation quantization cheap on every forward pass.
    """
    limit = qmax(bits)
    return torch.round(x / scale).clamp_(-limit, limit).mul_(scale)


def dynamic_fake_quantize(x: torch.Tensor, keep: Sequence[int], bits: int) -> torch.Tensor:
    """Fake-quantize with s = absmax(x over all axes but ``keep``) / qmax, from x itself."""
    return fake_quantize(x, symmetric_scale(absmax(x, keep), bits), bits)


def value_range(x: torch.Tensor, keep: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """(min x, max x) over every axis not in ``keep``, keepdim so they broadcast."""
    kept = {axis % x.ndim for axis in keep}
    reduced = tuple(axis for axis in range(x.ndim) if axis not in kept)
    if not reduced:
        return x, x
    return x.amin(dim=reduced, keepdim=True), x.amax(dim=reduced, keepdim=True)


def asymmetric_scale_zero_point(
    low: torch.Tensor, high: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, z) of the asymmetric b-bit grid over [min(low, 0), max(high, 0)]: s float32, z int32
    (see the module docstring)."""
    levels = affine_max_code(bits)
    low = torch.clamp(low.to(torch.float32), max=0.0)
    high = torch.clamp(high.to(torch.float32), min=0.0)
    span = high - low
    scale = torch.where(span > 0, span / levels, torch.ones_like(span))
    zero = torch.clamp(torch.round(-low / scale), 0, levels)
    return scale, zero.to(torch.int32)


def fake_quantize_asymmetric(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int
) -> torch.Tensor:
    """s (clamp(round(x / s) + z, 0, 2^b - 1) - z): x snapped to the asymmetric grid, computed in
    floating point (the codes are exact small integers)."""
    zero = zero_point.to(scale.dtype)
    codes = torch.round(x / scale).add_(zero).clamp_(0, affine_max_code(bits))
    return codes.sub_(zero).mul_(scale)


def dynamic_fake_quantize_asymmetric(
    x: torch.Tensor, keep: Sequence[int], bits: int
) -> torch.Tensor:
    """Fake-quantize on the asymmetric grid of x's own range over all axes but ``keep``."""
    scale, zero = asymmetric_scale_zero_point(*value_range(x, keep), bits)
    return fake_quantize_asymmetric(x, scale, zero, bits)
