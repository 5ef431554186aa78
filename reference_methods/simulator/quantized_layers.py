"""Quantized Conv3d / ConvTranspose3d / Linear modules for exact integer simulation in PyTorch.

State (registered buffers, so ``state_dict()`` holds exactly what a checkpoint stores):
``weight_codes`` (shape of the float weight; int8 symmetric, uint8 affine), ``weight_scale``
(float32; broadcastable to the weight when per-tensor / per-channel, else the rows-view group shape
of ``weight_format``), ``weight_zero_point`` (int32, shape of the scale, affine weights only),
``weight_group_ids`` (int32, shape of the weight, permuted layouts only), ``bias`` (float32 or
absent), ``act_scale`` (float32, static activation scales only), ``act_zero_point`` (int32, shape of
``act_scale``, static asymmetric activations only), ``output_scale`` (float32 (1,), output
requantization only), and a method's extras (see
``layer_extras``): ``input_scale`` (float32 (C_in,), explicit input scales only), ``lowrank_u`` /
``lowrank_v`` (float32 (m, r) / (r, n), low-rank branch only); an input rotation is a manifest flag.
Forward: the input scaled and rotated by the extras, w_hat = scale * (code + zero) per weight
(always from the codes, so a save/load round trip is bit-exact), x_hat = fake_quantize(x) with a
static or dynamic scale on the symmetric grid, or on the asymmetric (zero-point) grid when the spec
says ``activation_zero_point`` (see ``quantizer``), then the float32 functional conv/linear, plus
the low-rank branch; with ``output_bits`` the result snapped to the symmetric grid of the static
per-tensor ``output_scale`` = max|y| / qmax (calibrated), the requantized output an integer
kernel such as ONNX Runtime's QLinearConv writes.
Integer codes are exact in float32 and the accumulation is the float32 op, which is deterministic
for a fixed input, device and library build.
"""

import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from reference_methods.simulator.calibration import (
    DEFAULT_PERCENTILE,
    ActivationCalibration,
    RangeObserver,
)
from reference_methods.simulator.granularity import ActivationGranularity, WeightGranularity
from reference_methods.simulator.hadamard import hadamard_matrix
from reference_methods.simulator.layer_extras import LayerExtras, check_rotation, rotate
from reference_methods.simulator.quantizer import (
    affine_max_code,
    asymmetric_scale_zero_point,
    check_bits,
    dynamic_fake_quantize,
    dynamic_fake_quantize_asymmetric,
    fake_quantize,
    fake_quantize_asymmetric,
    qmax,
    quantize_groups,
    symmetric_scale,
)
from reference_methods.simulator.weight_format import (
    QuantizedWeight,
    from_rows,
    scale_shape,
    to_rows,
)

ActivationScale = Literal["static", "dynamic"]
_E = TypeVar("_E", bound=Enum)

_ACTIVATION_GRANULARITIES: dict[str, frozenset[ActivationGranularity]] = {
    "conv3d": frozenset(
        {
            ActivationGranularity.PER_TENSOR,
            ActivationGranularity.PER_CHANNEL,
            ActivationGranularity.PER_VOXEL,
        }
    ),
    "conv_transpose3d": frozenset(
        {
            ActivationGranularity.PER_TENSOR,
            ActivationGranularity.PER_CHANNEL,
            ActivationGranularity.PER_VOXEL,
        }
    ),
    "linear": frozenset({ActivationGranularity.PER_TENSOR, ActivationGranularity.PER_TOKEN}),
}


@dataclass(frozen=True)
class LayerSpec:
    """How one layer is quantized; ``as_dict()`` is its manifest entry. Invalid specs raise.

    ``weight_group_size`` is given exactly for group-wise weights, ``weight_groups`` (G) exactly for
    the permuted layouts; ``weight_zero_point`` makes the weight codes affine (see weight_format).
    ``input_scale``, ``input_rotation`` and ``lowrank_rank`` declare a method's extras (see
    ``layer_extras``): an explicit per-input-channel scale, a rotation name, the rank r of a
    floating-point low-rank branch. ``activation_zero_point`` puts the input on the asymmetric
    (unsigned, zero-point) grid instead of the symmetric one. ``output_bits`` requantizes the
    layer's output to that many bits (static per-tensor symmetric scale, max calibration), as an
    integer kernel does; it needs static activation scales.
    """

    kind: str
    weight_bits: int
    weight_granularity: WeightGranularity
    activation_bits: int | None = None
    activation_granularity: ActivationGranularity | None = None
    activation_scale: ActivationScale | None = None
    weight_group_size: int | None = None
    weight_groups: int | None = None
    weight_zero_point: bool = False
    input_scale: bool = False
    input_rotation: str | None = None
    lowrank_rank: int | None = None
    activation_zero_point: bool = False
    output_bits: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _ACTIVATION_GRANULARITIES:
            kinds = ", ".join(sorted(_ACTIVATION_GRANULARITIES))
            raise ValueError(f"unknown layer kind {self.kind!r} (expected one of: {kinds})")
        check_bits(self.weight_bits, "weight_bits")
        weight_granularity = _enum(WeightGranularity, self.weight_granularity)
        object.__setattr__(self, "weight_granularity", weight_granularity)
        _check_count(
            "weight_group_size",
            self.weight_group_size,
            weight_granularity is WeightGranularity.GROUP_WISE,
            weight_granularity,
        )
        _check_count(
            "weight_groups",
            self.weight_groups,
            weight_granularity.has_group_ids,
            weight_granularity,
        )
        if not isinstance(self.weight_zero_point, bool):
            raise ValueError(
                f"weight_zero_point must be true or false, got {self.weight_zero_point!r}"
            )
        if not isinstance(self.input_scale, bool):
            raise ValueError(f"input_scale must be true or false, got {self.input_scale!r}")
        check_rotation(self.input_rotation)
        if self.input_rotation is not None and self.kind == "conv_transpose3d":
            raise ValueError("an input rotation applies to linear and 1x1x1 conv3d layers only")
        rank = self.lowrank_rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"lowrank_rank must be an integer >= 1, got {rank!r}")
        if not isinstance(self.activation_zero_point, bool):
            raise ValueError(
                f"activation_zero_point must be true or false, got {self.activation_zero_point!r}"
            )
        if self.output_bits is not None:
            check_bits(self.output_bits, "output_bits")
            if self.activation_scale != "static":
                raise ValueError("output requantization needs static activation scales")
        if self.activation_bits is None:
            if self.activation_granularity is not None or self.activation_scale is not None:
                raise ValueError(
                    "weight-only layer (activation_bits null) must have null "
                    "activation_granularity and activation_scale"
                )
            if self.activation_zero_point:
                raise ValueError("weight-only layer (activation_bits null) has no zero-point")
            return
        check_bits(self.activation_bits, "activation_bits")
        granularity = _enum(ActivationGranularity, self.activation_granularity)
        object.__setattr__(self, "activation_granularity", granularity)
        if granularity not in _ACTIVATION_GRANULARITIES[self.kind]:
            raise ValueError(f"{granularity.value} activation scales do not apply to {self.kind}")
        if self.activation_scale not in ("static", "dynamic"):
            raise ValueError(
                f"activation_scale must be 'static' or 'dynamic', got {self.activation_scale!r}"
            )
        if granularity.always_dynamic and self.activation_scale != "dynamic":
            raise ValueError(f"{granularity.value} activation scales are always dynamic")

    @property
    def max_weight_code(self) -> int:
        """Largest code magnitude the weight bits allow: 2^(b-1) - 1 symmetric, 2^b - 1 affine."""
        if self.weight_zero_point:
            return affine_max_code(self.weight_bits)
        return qmax(self.weight_bits)

    def for_weight(self, weight: QuantizedWeight) -> "LayerSpec":
        """This spec with the weight layout of ``weight``."""
        return replace(self, **weight.layout)

    def for_extras(self, extras: LayerExtras) -> "LayerSpec":
        """This spec declaring ``extras``."""
        return replace(self, **extras.layout)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready manifest entry; the weight layout keys appear only when they apply."""
        entry = {
            "kind": self.kind,
            "weight_bits": self.weight_bits,
            "weight_granularity": self.weight_granularity.value,
            "activation_bits": self.activation_bits,
            "activation_granularity": (
                None if self.activation_granularity is None else self.activation_granularity.value
            ),
            "activation_scale": self.activation_scale,
        }
        if self.weight_group_size is not None:
            entry["weight_group_size"] = self.weight_group_size
        if self.weight_groups is not None:
            entry["weight_groups"] = self.weight_groups
        if self.weight_zero_point:
            entry["weight_zero_point"] = True
        if self.input_scale:
            entry["input_scale"] = True
        if self.input_rotation is not None:
            entry["input_rotation"] = self.input_rotation
        if self.lowrank_rank is not None:
            entry["lowrank_rank"] = self.lowrank_rank
        if self.activation_zero_point:
            entry["activation_zero_point"] = True
        if self.output_bits is not None:
            entry["output_bits"] = self.output_bits
        return entry

    @classmethod
    def from_dict(cls, entry: Any) -> "LayerSpec":
        """Parse a manifest entry: kind and weight keys required, activation keys optional."""
        if not isinstance(entry, dict):
            raise ValueError(f"layer entry must be an object, got {type(entry).__name__}")
        expected = {"kind", "weight_bits", "weight_granularity"}
        optional = {
            "activation_bits",
            "activation_granularity",
            "activation_scale",
            "weight_group_size",
            "weight_groups",
            "weight_zero_point",
            "input_scale",
            "input_rotation",
            "lowrank_rank",
            "activation_zero_point",
            "output_bits",
        }
        missing = expected - entry.keys()
        unknown = entry.keys() - expected - optional
        if missing or unknown:
            raise ValueError(
                f"layer entry has missing keys {sorted(missing)} / unknown keys {sorted(unknown)}"
            )
        return cls(**entry)


def _check_count(name: str, value: Any, needed: bool, granularity: WeightGranularity) -> None:
    if not needed:
        if value is not None:
            raise ValueError(f"{name} does not apply to {granularity.value} weights")
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{granularity.value} weights need {name} >= 1, got {value!r}")


def _enum(enum: type[_E], value: Any) -> _E:
    try:
        return enum(value)
    except (TypeError, ValueError):
        allowed = ", ".join(member.value for member in enum)
        raise ValueError(
            f"unknown {enum.__name__} {value!r} (expected one of: {allowed})"
        ) from None


class QuantLayer(nn.Module):
    """Base quantized layer: integer weight codes, per-group scales, fake-quantized input.

    Static activation scales are calibrated by ``start_calibration()``, float forward passes that
    record the range of the input (per tensor or per input channel; a second pass after
    ``start_histogram()`` for percentile and MSE calibration, see ``calibration``), and
    ``finish_calibration()``.
    While calibrating, every quantized layer computes with dequantized weights and unquantized
    inputs. Dynamic per-tensor / per-channel scales span the whole input tensor (batch included);
    per-token and per-voxel scales are per row / per voxel of each sample.
    """

    kind: ClassVar[str]
    float_type: ClassVar[type[nn.Module]]
    weight_channel_axis: ClassVar[int] = 0  # output-channel axis of the weight
    weight_ndim: ClassVar[int]
    input_channel_axis: ClassVar[int]  # channel/feature axis of the input

    weight_codes: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor | None
    weight_group_ids: torch.Tensor | None
    bias: torch.Tensor | None
    act_scale: torch.Tensor | None
    act_zero_point: torch.Tensor | None
    output_scale: torch.Tensor | None
    input_scale: torch.Tensor | None
    lowrank_u: torch.Tensor | None
    lowrank_v: torch.Tensor | None
    rotation: torch.Tensor | None

    def __init__(self, layer: nn.Module, spec: LayerSpec) -> None:
        """Empty quantized twin of ``layer`` (codes 0, scales 1, no-op extras), ready for
        ``load_state_dict``; ValueError when the spec's extras do not fit the layer."""
        super().__init__()
        if type(layer) is not self.float_type:
            raise TypeError(
                f"{type(self).__name__} needs a {self.float_type.__name__}, got "
                f"{type(layer).__name__}"
            )
        if spec.kind != self.kind:
            raise ValueError(f"spec of kind {spec.kind!r} given to a {self.kind} layer")
        self.spec = spec
        weight = layer.weight
        device = weight.device
        factory = {"device": device, "dtype": torch.float32}
        shape = self.weight_scale_shape(spec, weight.shape)
        codes_dtype = torch.uint8 if spec.weight_zero_point else torch.int8
        self.register_buffer(
            "weight_codes", torch.zeros(weight.shape, dtype=codes_dtype, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(shape, **factory))
        zero_point = torch.zeros(shape, dtype=torch.int32, device=device)
        self.register_buffer("weight_zero_point", zero_point if spec.weight_zero_point else None)
        group_ids = torch.zeros(weight.shape, dtype=torch.int32, device=device)
        has_ids = spec.weight_granularity.has_group_ids
        self.register_buffer("weight_group_ids", group_ids if has_ids else None)
        bias = layer.bias
        self.register_buffer(
            "bias", None if bias is None else bias.detach().clone().to(torch.float32)
        )
        act_scale = act_zero_point = None
        if spec.activation_scale == "static":
            act_scale = torch.ones(self._static_act_shape(layer), **factory)
            if spec.activation_zero_point:
                act_zero_point = torch.zeros(act_scale.shape, dtype=torch.int32, device=device)
        self.register_buffer("act_scale", act_scale)
        self.register_buffer("act_zero_point", act_zero_point)
        output_scale = None if spec.output_bits is None else torch.ones((1,), **factory)
        self.register_buffer("output_scale", output_scale)
        self._register_extras(layer, spec, factory)
        self._calibrated = False
        self._calibrating = False
        self._observer: RangeObserver | None = None
        self._output_observer: RangeObserver | None = None

    def _register_extras(self, layer: nn.Module, spec: LayerSpec, factory: dict[str, Any]) -> None:
        width = layer.in_features if self.kind == "linear" else layer.in_channels
        scale = torch.ones(width, **factory) if spec.input_scale else None
        self.register_buffer("input_scale", scale)
        rows = layer.weight.shape[self.weight_channel_axis]
        columns = layer.weight.numel() // rows
        rank = spec.lowrank_rank
        if rank is not None and rank > min(rows, columns):
            raise ValueError(
                f"low-rank branch of rank {rank} exceeds min(m, n) = {min(rows, columns)} of the "
                f"{rows}x{columns} weight"
            )
        self.register_buffer(
            "lowrank_u", None if rank is None else torch.zeros(rows, rank, **factory)
        )
        self.register_buffer(
            "lowrank_v", None if rank is None else torch.zeros(rank, columns, **factory)
        )
        rotation = None
        if spec.input_rotation is not None:
            if self.kind == "conv3d" and (
                tuple(layer.kernel_size) != (1, 1, 1) or layer.groups != 1
            ):
                raise ValueError(
                    "an input rotation applies to linear and ungrouped 1x1x1 conv3d layers only, "
                    f"not a {'x'.join(map(str, layer.kernel_size))} conv with {layer.groups} "
                    "group(s)"
                )
            rotation = hadamard_matrix(width).to(**factory)
        self.register_buffer("rotation", rotation, persistent=False)

    @classmethod
    def weight_scale_shape(cls, spec: LayerSpec, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of ``weight_scale`` (and ``weight_zero_point``) for ``spec`` on a weight of
        ``weight_shape``: broadcastable to the weight when per-tensor / per-channel, else the
        rows-view group shape. ValueError when the layout does not fit the weight."""
        if len(weight_shape) != cls.weight_ndim:
            raise ValueError(
                f"a {cls.kind} weight is {cls.weight_ndim}-D, got {tuple(weight_shape)}"
            )
        axis = cls.weight_channel_axis
        granularity = spec.weight_granularity
        if granularity in (WeightGranularity.PER_TENSOR, WeightGranularity.PER_CHANNEL):
            shape = [1] * len(weight_shape)
            if granularity is WeightGranularity.PER_CHANNEL:
                shape[axis] = weight_shape[axis]
            return tuple(shape)
        rows = weight_shape[axis]
        columns = math.prod(weight_shape) // rows
        return scale_shape(granularity, rows, columns, spec.weight_group_size, spec.weight_groups)

    @classmethod
    def from_float(cls, layer: nn.Module, spec: LayerSpec) -> "QuantLayer":
        """Round ``layer``'s weight to nearest with symmetric absmax scales per tensor, output
        channel or group of ``weight_group_size`` inputs (RTN); copy its bias."""
        if spec.weight_granularity.has_group_ids or spec.weight_zero_point:
            raise ValueError(
                "round-to-nearest makes symmetric per-tensor, per-channel or group-wise weights; "
                f"{spec.weight_granularity.value} or affine weights come from a method"
            )
        module = cls(layer, spec)
        weight = layer.weight.detach().to(torch.float32)
        if not torch.isfinite(weight).all():
            raise ValueError(f"{cls.float_type.__name__} weight has non-finite values")
        rows = to_rows(weight, cls.weight_channel_axis)
        match spec.weight_granularity:
            case WeightGranularity.PER_TENSOR:
                codes, scale = quantize_groups(rows.reshape(1, -1), spec.weight_bits, rows.numel())
                codes = codes.reshape(rows.shape)
            case WeightGranularity.PER_CHANNEL:
                codes, scale = quantize_groups(rows, spec.weight_bits, rows.shape[1])
            case _:
                codes, scale = quantize_groups(rows, spec.weight_bits, spec.weight_group_size)
        module.load_weight(
            QuantizedWeight(
                spec.weight_granularity, codes, scale, group_size=spec.weight_group_size
            )
        )
        return module

    @classmethod
    def from_quantized(
        cls, layer: nn.Module, spec: LayerSpec, weight: QuantizedWeight
    ) -> "QuantLayer":
        """Quantized twin of ``layer`` holding ``weight`` (its layout replaces the spec's)."""
        module = cls(layer, spec.for_weight(weight))
        module.load_weight(weight)
        return module

    def quantized_weight(self) -> QuantizedWeight:
        """The weight state in the rows view."""
        axis = self.weight_channel_axis
        codes = to_rows(self.weight_codes, axis)
        scale, zero_point = self.weight_scale, self.weight_zero_point
        granularity = self.spec.weight_granularity
        if granularity in (WeightGranularity.PER_TENSOR, WeightGranularity.PER_CHANNEL):
            shape = (1, 1) if granularity is WeightGranularity.PER_TENSOR else (len(codes), 1)
            scale = scale.reshape(shape)
            zero_point = None if zero_point is None else zero_point.reshape(shape)
        group_ids = None if self.weight_group_ids is None else to_rows(self.weight_group_ids, axis)
        return QuantizedWeight(
            granularity, codes, scale, zero_point, group_ids, self.spec.weight_group_size
        )

    def load_weight(self, weight: QuantizedWeight) -> None:
        """Copy ``weight`` (rows view, the spec's layout and code range) into the buffers."""
        spec = self.spec
        if spec.for_weight(weight) != spec:
            raise ValueError(
                f"a {weight.granularity.value} weight (group size {weight.group_size}, "
                f"{weight.groups} groups, zero-points {weight.zero_point is not None}) does not "
                f"fit the layer's {spec.weight_granularity.value} spec"
            )
        low = 0 if spec.weight_zero_point else -spec.max_weight_code
        codes = weight.codes.to(torch.int64)
        if codes.numel() and not low <= codes.min() <= codes.max() <= spec.max_weight_code:
            raise ValueError(
                f"codes in [{int(codes.min())}, {int(codes.max())}] exceed the "
                f"{spec.weight_bits}-bit range [{low}, {spec.max_weight_code}]"
            )
        shape, axis = self.weight_codes.shape, self.weight_channel_axis
        self.weight_codes.copy_(from_rows(codes, shape, axis))
        self.weight_scale.copy_(weight.scale.reshape(self.weight_scale.shape))
        if weight.zero_point is not None:
            self.weight_zero_point.copy_(weight.zero_point.reshape(self.weight_scale.shape))
        if weight.group_ids is not None:
            self.weight_group_ids.copy_(from_rows(weight.group_ids, shape, axis))

    def load_extras(self, extras: LayerExtras) -> None:
        """Copy ``extras`` (the spec's layout, shapes of the layer) into the buffers."""
        if self.spec.for_extras(extras) != self.spec:
            raise ValueError(f"extras {extras.layout} do not fit the layer's spec")
        if extras.input_scale is not None:
            if extras.input_scale.shape != self.input_scale.shape:
                raise ValueError(
                    f"input_scale of shape {tuple(extras.input_scale.shape)} for "
                    f"{len(self.input_scale)} input channels"
                )
            self.input_scale.copy_(extras.input_scale)
        if extras.lowrank is not None:
            u, v = extras.lowrank
            if u.shape != self.lowrank_u.shape or v.shape != self.lowrank_v.shape:
                raise ValueError(
                    f"low-rank factors {tuple(u.shape)} and {tuple(v.shape)} for a weight of "
                    f"{len(self.lowrank_u)}x{self.lowrank_v.shape[1]}"
                )
            self.lowrank_u.copy_(u)
            self.lowrank_v.copy_(v)

    def dequantized_weight(self) -> torch.Tensor:
        """w_hat = scale * (code + zero) in float32, shaped like the float weight."""
        rows = self.quantized_weight().dequantize()
        return from_rows(rows, self.weight_codes.shape, self.weight_channel_axis)

    @property
    def description(self) -> dict[str, Any]:
        """Manifest entry: kind, bits, granularities and static/dynamic activation scales."""
        return self.spec.as_dict()

    @property
    def needs_calibration(self) -> bool:
        """True while a static activation (or output) scale has been neither calibrated nor
        loaded."""
        return self.act_scale is not None and not self._calibrated

    def start_calibration(
        self,
        calibration: ActivationCalibration | str = ActivationCalibration.MAX,
        percentile: float = DEFAULT_PERCENTILE,
    ) -> None:
        """Run in float (unquantized input) and record the input's range until
        ``finish_calibration()``, which sets the scale by ``calibration``."""
        self._calibrating = True
        self._observer = None
        self._output_observer = None
        if self.output_scale is not None:
            self._output_observer = RangeObserver(symmetric=True, channel_axis=None)
        if self.act_scale is not None:
            per_channel = self.spec.activation_granularity is ActivationGranularity.PER_CHANNEL
            self._observer = RangeObserver(
                symmetric=not self.spec.activation_zero_point,
                channel_axis=self.input_channel_axis if per_channel else None,
                calibration=calibration,
                percentile=percentile,
            )

    @property
    def needs_histogram(self) -> bool:
        """Whether calibration needs a second pass (``start_histogram``) before finishing."""
        return self._observer is not None and self._observer.needs_histogram

    def start_histogram(self) -> None:
        """Record a histogram of the inputs over the range recorded so far (second pass)."""
        if self._observer is not None:
            self._observer.start_histogram()

    def finish_calibration(self) -> None:
        """Turn the recorded range into ``act_scale`` = max|x| / qmax on the symmetric grid, or
        ``act_scale`` and ``act_zero_point`` of [min x, max x] on the asymmetric one, the range
        chosen by the calibration rule (static layers only); ``output_scale`` = max|y| / qmax of
        the outputs seen."""
        self._calibrating = False
        if self.act_scale is None:
            return
        if self._output_observer is not None:
            if not self._output_observer.seen:
                raise RuntimeError("no calibration batch reached this layer")
            _, high = self._output_observer.range(self.spec.output_bits)
            self.output_scale = symmetric_scale(high.reshape(1), self.spec.output_bits)
            self._output_observer = None
        if self._observer is None or not self._observer.seen:
            raise RuntimeError("no calibration batch reached this layer")
        bits, shape = self.spec.activation_bits, self.act_scale.shape
        low, high = self._observer.range(bits)
        if self.spec.activation_zero_point:
            scale, zero = asymmetric_scale_zero_point(low, high, bits)
            self.act_scale = scale.reshape(shape)
            self.act_zero_point = zero.reshape(shape)
        else:
            self.act_scale = symmetric_scale(high.reshape(shape), bits)
        self._calibrated = True
        self._observer = None

    def lowrank_weight(self) -> torch.Tensor | None:
        """The low-rank branch U V shaped like the float weight; None without one."""
        if self.lowrank_u is None:
            return None
        rows = self.lowrank_u @ self.lowrank_v
        return from_rows(rows, self.weight_codes.shape, self.weight_channel_axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._transform_input(x)
        if self._calibrating:
            self._observe(x)
            quantized = x
        else:
            quantized = self._quantize_input(x)
        out = self._compute(quantized, self.dequantized_weight(), self.bias)
        branch = self.lowrank_weight()
        out = out if branch is None else out + self._compute(x, branch, None)
        if self.output_scale is None:
            return out
        if self._calibrating:
            self._output_observer.observe(out)
            return out
        return fake_quantize(out, self.output_scale, self.spec.output_bits)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """x / input_scale per input channel, then x R^T along the channel axis (extras only)."""
        if self.input_scale is not None:
            shape = (-1,) + (1,) * (-1 - self.input_channel_axis)
            x = x / self.input_scale.reshape(shape)
        if self.rotation is not None:
            x = rotate(x, self.rotation, self.input_channel_axis)
        return x

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.spec.activation_bits
        if bits is None:
            return x
        if self.act_scale is not None:
            if not self._calibrated:
                raise RuntimeError(
                    f"{self.kind} layer has an uncalibrated static activation scale: quantize it "
                    "with calibration data or load act_scale from a checkpoint"
                )
            if self.act_zero_point is not None:
                return fake_quantize_asymmetric(x, self.act_scale, self.act_zero_point, bits)
            return fake_quantize(x, self.act_scale, bits)
        keep = self._dynamic_keep_axes(x.ndim)
        if self.spec.activation_zero_point:
            return dynamic_fake_quantize_asymmetric(x, keep, bits)
        return dynamic_fake_quantize(x, keep, bits)

    def _dynamic_keep_axes(self, ndim: int) -> tuple[int, ...]:
        channel = self.input_channel_axis % ndim
        match self.spec.activation_granularity:
            case ActivationGranularity.PER_CHANNEL:
                return (channel,)
            case ActivationGranularity.PER_TOKEN | ActivationGranularity.PER_VOXEL:
                return tuple(axis for axis in range(ndim) if axis != channel)
            case _:
                return ()

    def _observe(self, x: torch.Tensor) -> None:
        if self._observer is not None:
            self._observer.observe(x)

    def _static_act_shape(self, layer: nn.Module) -> tuple[int, ...]:
        if self.spec.activation_granularity is ActivationGranularity.PER_CHANNEL:
            return (layer.in_channels, 1, 1, 1)
        return (1,)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.act_scale is not None and prefix + "act_scale" in state_dict:
            self._calibrated = True

    def _compute(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        spec = self.spec
        text = f"w{spec.weight_bits} {spec.weight_granularity.value}"
        if spec.weight_group_size is not None:
            text += f" of {spec.weight_group_size}"
        if spec.weight_groups is not None:
            text += f" in {spec.weight_groups} groups"
        if spec.weight_zero_point:
            text += " affine"
        if spec.input_scale:
            text += ", input scale"
        if spec.input_rotation is not None:
            text += f", {spec.input_rotation} rotation"
        if spec.lowrank_rank is not None:
            text += f", rank-{spec.lowrank_rank} branch"
        if spec.activation_bits is None:
            return text + ", weight-only"
        granularity = spec.activation_granularity.value
        grid = " asymmetric" if spec.activation_zero_point else ""
        text += f", a{spec.activation_bits}{grid} {granularity} {spec.activation_scale}"
        if spec.output_bits is not None:
            text += f", output requantized to {spec.output_bits} bits"
        return text


class _QuantConvBase(QuantLayer):
    input_channel_axis = -4  # (B, C, D, H, W) or unbatched (C, D, H, W)
    weight_ndim = 5

    def __init__(self, layer: nn.Module, spec: LayerSpec) -> None:
        super().__init__(layer, spec)
        if layer.padding_mode != "zeros":
            raise ValueError(f"padding_mode {layer.padding_mode!r} is not supported")
        self.stride = layer.stride
        self.padding = layer.padding
        self.dilation = layer.dilation
        self.groups = layer.groups


class QuantConv3d(_QuantConvBase):
    """Quantized nn.Conv3d; weight (C_out, C_in/groups, k, k, k), output-channel axis 0."""

    kind = "conv3d"
    float_type = nn.Conv3d

    def _compute(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.conv3d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class QuantConvTranspose3d(_QuantConvBase):
    """Quantized nn.ConvTranspose3d; weight (C_in, C_out/groups, k, k, k), output-channel axis 1.

    Grouped transposed convs are refused: their output channels do not lie on one weight axis.
    """

    kind = "conv_transpose3d"
    float_type = nn.ConvTranspose3d
    weight_channel_axis = 1

    def __init__(self, layer: nn.Module, spec: LayerSpec) -> None:
        super().__init__(layer, spec)
        if self.groups > 1:
            raise ValueError(f"grouped ConvTranspose3d (groups={self.groups}) is not supported")
        self.output_padding = layer.output_padding

    def _compute(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.conv_transpose3d(
            x,
            weight,
            bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


class QuantLinear(QuantLayer):
    """Quantized nn.Linear; weight (out, in), input (..., in) with one token per leading index."""

    kind = "linear"
    float_type = nn.Linear
    weight_ndim = 2
    input_channel_axis = -1

    def _compute(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        return F.linear(x, weight, bias)


QUANT_LAYER_TYPES: dict[str, type[QuantLayer]] = {
    cls.kind: cls for cls in (QuantConv3d, QuantConvTranspose3d, QuantLinear)
}


def layer_kind(layer: nn.Module) -> str | None:
    """Manifest kind of an FP32 layer ("conv3d", "conv_transpose3d", "linear"), else None."""
    for kind, cls in QUANT_LAYER_TYPES.items():
        if type(layer) is cls.float_type:
            return kind
    return None
