"""Symmetric uniform quantizer: rounding, clamping, range, zero handling, reductions."""

import pytest
import torch

from reference_methods.simulator.quantizer import (
    absmax,
    bits_for_code,
    check_bits,
    dequantize,
    dynamic_fake_quantize,
    fake_quantize,
    qmax,
    quantize_codes,
    symmetric_scale,
)

ONE = torch.tensor(1.0)


@pytest.mark.parametrize(("bits", "expected"), [(2, 1), (3, 3), (4, 7), (8, 127)])
def test_qmax_is_two_to_bits_minus_one_minus_one(bits, expected):
    assert qmax(bits) == expected


@pytest.mark.parametrize("bits", [0, 1, 9, 16, True, 4.0, "8"])
def test_bits_outside_two_to_eight_are_rejected(bits):
    with pytest.raises(ValueError, match="weight_bits must be an integer from 2 to 8"):
        check_bits(bits, "weight_bits")


def test_rounding_is_half_to_even_at_half_step_edges():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, 0.51])
    codes = quantize_codes(x, ONE, bits=8)
    assert codes.tolist() == [-2, -2, 0, 0, 2, 2, 0, 1]


def test_codes_are_int8_and_keep_the_input_shape():
    codes = quantize_codes(torch.randn(2, 3, 4), ONE, bits=4)
    assert codes.dtype == torch.int8
    assert codes.shape == (2, 3, 4)


def test_values_beyond_qmax_times_scale_clamp_to_the_symmetric_range():
    x = torch.tensor([7.0, 7.4, 7.5, 100.0, -7.5, -100.0])
    assert quantize_codes(x, ONE, bits=4).tolist() == [7, 7, 7, 7, -7, -7]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_the_absmax_element_maps_exactly_to_qmax(bits):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(bits)) * 3.7
    scale = symmetric_scale(absmax(x), bits)
    codes = quantize_codes(x, scale, bits)
    peak = x.abs().argmax()
    assert codes[peak].abs().item() == qmax(bits)
    assert codes.abs().max().item() == qmax(bits)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codes_never_reach_minus_two_to_bits_minus_one(bits):
    x = torch.linspace(-1000.0, 1000.0, 2001)
    codes = quantize_codes(x, torch.tensor(0.01), bits)
    assert codes.min().item() == -qmax(bits)
    assert codes.max().item() == qmax(bits)


def test_all_zero_channel_gets_unit_scale_zero_codes_and_exact_zero_output():
    weight = torch.zeros(3, 2, 3, 3, 3)
    weight[1] = torch.randn(2, 3, 3, 3)
    scale = symmetric_scale(absmax(weight, keep=(0,)), bits=4)
    codes = quantize_codes(weight, scale, bits=4)
    restored = dequantize(codes, scale)
    assert scale.shape == (3, 1, 1, 1, 1)
    assert scale[0].item() == 1.0 and scale[2].item() == 1.0
    assert torch.count_nonzero(codes[0]) == 0 and torch.count_nonzero(codes[2]) == 0
    assert torch.equal(restored[0], torch.zeros(2, 3, 3, 3))
    assert torch.isfinite(restored).all()


def test_all_zero_tensor_fake_quantizes_to_exact_zeros():
    x = torch.zeros(4, 5)
    assert torch.equal(dynamic_fake_quantize(x, keep=(), bits=2), x)
    assert torch.equal(dynamic_fake_quantize(x, keep=(0,), bits=8), x)


def test_single_element_channels_are_reproduced_at_full_code():
    x = torch.tensor([[3.0], [-0.25], [0.0]])
    scale = symmetric_scale(absmax(x, keep=(0,)), bits=4)
    codes = quantize_codes(x, scale, bits=4)
    assert codes.flatten().tolist() == [7, -7, 0]
    torch.testing.assert_close(dequantize(codes, scale), x)


def test_fake_quantization_error_is_at_most_half_a_step_inside_the_range():
    x = torch.randn(500, generator=torch.Generator().manual_seed(0))
    scale = symmetric_scale(absmax(x), bits=4)
    error = (fake_quantize(x, scale, bits=4) - x).abs()
    assert error.max() <= scale / 2 + 1e-6
    assert error.max() > 0


def test_absmax_keeps_the_requested_axes_for_broadcasting():
    x = torch.arange(24.0).reshape(2, 3, 4) - 12.0
    per_feature = absmax(x, keep=(-1,))
    assert per_feature.shape == (1, 1, 4)
    assert per_feature.flatten().tolist() == [12.0, 11.0, 10.0, 11.0]
    assert absmax(x).shape == (1, 1, 1)
    assert absmax(x).item() == 12.0


def test_dynamic_per_row_scales_follow_each_row():
    x = torch.tensor([[1000.0, -500.0], [0.001, 0.002]])
    torch.testing.assert_close(dynamic_fake_quantize(x, keep=(0,), bits=8), x, rtol=1e-2, atol=0)
    assert torch.equal(dynamic_fake_quantize(x, keep=(), bits=8)[1], torch.zeros(2))


@pytest.mark.parametrize(
    ("max_code", "bits"), [(0, 1), (1, 2), (3, 3), (7, 4), (8, 5), (9, 5), (127, 8), (128, 9)]
)
def test_bits_for_code_is_the_smallest_symmetric_grid_holding_it(max_code, bits):
    assert bits_for_code(max_code) == bits
