"""Quantized checkpoint format: a directory with ``manifest.json`` and ``weights.safetensors``.

The safetensors file holds the complete ``state_dict()`` of the quantized model: for a quantized
layer ``<name>.weight_codes`` (integers), ``<name>.weight_scale``, ``<name>.weight_zero_point``
(integers, affine weights only), ``<name>.weight_group_ids`` (integers, permuted layouts only),
``<name>.bias`` (if any), ``<name>.act_scale`` (static activation scales only),
``<name>.act_zero_point`` (integers in [0, 2^b - 1], static asymmetric activations only), and a
method's extras (see ``reference_methods.simulator.layer_extras``): ``<name>.input_scale`` (explicit
SmoothQuant input scales), ``<name>.lowrank_u`` and ``<name>.lowrank_v`` (SVD low-rank branch);
every other parameter/buffer under its state_dict name. An input rotation is a manifest flag only. A
weight is w_hat = scale[g] * (code + zero[g]) with the group g of each weight given by the
granularity (see ``reference_methods.simulator.weight_format``). The manifest declares each
quantized layer (see ``LayerSpec``):

    {"format": "medquant-quantized-checkpoint", "version": 1, "reference": {...},
     "layers": {name: {kind, weight_bits, weight_granularity, activation_bits,
                       activation_granularity, activation_scale,
                       [weight_group_size], [weight_groups], [weight_zero_point],
                       [input_scale], [input_rotation], [lowrank_rank],
                       [activation_zero_point]}}}

``activation_zero_point: true`` puts a layer's input on the asymmetric (unsigned, zero-point)
grid, x_hat = s (clamp(round(x / s) + z, 0, 2^b - 1) - z), instead of the symmetric one.

Loading never unpickles: it rebuilds the quantized model on a copy of the reference architecture
and refuses, with a CheckpointError naming the layer, anything that does not fit it exactly.
"""

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from harness.artifacts import untrusted_json
from harness.errors import CheckpointError
from reference_methods.simulator.granularity import WeightGranularity
from reference_methods.simulator.layer_extras import FOLDED_INPUT_SCALES
from reference_methods.simulator.quantized_layers import QUANT_LAYER_TYPES, LayerSpec, layer_kind
from reference_methods.simulator.quantizer import (
    MAX_BITS,
    MIN_BITS,
    bits_for_affine_code,
    bits_for_code,
)
from reference_methods.simulator.scheme import quantized_layers
from reference_methods.simulator.weight_format import to_rows

FORMAT = "medquant-quantized-checkpoint"
VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_MAX_BYTES = 4 * 2**20
"""Largest manifest read: ~300 bytes per quantized layer, so room for 10,000+ layers."""
WEIGHTS_NAME = "weights.safetensors"
FOLDED_SCALE_TENSOR = "folded_input_scale"
"""``<layer>.folded_input_scale``: the input scale a method folded into the layer's producer,
declared for verification (see ``FOLDED_INPUT_SCALES``); inference does not read it."""
_SCALE_BUFFERS = ("weight_scale", "act_scale", "input_scale")
_LAYER_BUFFERS = (
    "weight_codes",
    "weight_scale",
    "weight_zero_point",
    "weight_group_ids",
    "bias",
    "act_scale",
    "act_zero_point",
    "input_scale",
    "lowrank_u",
    "lowrank_v",
)
_SIZE_PARTS = (
    "weight_codes",
    "weight_scales",
    "weight_zero_points",
    "weight_group_ids",
    "input_scales",
    "lowrank_branch",
)
"""Stored parts of a quantized layer's weight: what effective bits per weight count."""
# what a layer declares when it holds each optional layout / extras tensor
_DECLARES = {
    "weight_zero_point": "affine weights",
    "weight_group_ids": "permuted weights",
    "input_scale": "an explicit input scale",
    "lowrank_u": "a low-rank branch",
    "lowrank_v": "a low-rank branch",
    "act_zero_point": "static asymmetric activations",
}
_FLOAT32_BYTES = 4
SUPPORTED_DTYPES = (
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
"""Tensor dtypes a checkpoint may hold: those the simulator computes with (unsigned 16-64-bit
integers and float8 formats lack the reductions verification needs)."""
_INT32 = torch.iinfo(torch.int32)


def save_checkpoint(model: nn.Module, out_dir: Path, reference: dict | None = None) -> Path:
    """Write ``model``'s quantized layers and full state to ``out_dir``; return ``out_dir``."""
    layers = quantized_layers(model)
    if not layers:
        raise CheckpointError("the model has no quantized layers")
    for name, layer in layers.items():
        if layer.needs_calibration:
            raise CheckpointError(f"layer {name!r} has an uncalibrated static activation scale")
        if layer.spec.output_bits is not None:
            raise CheckpointError(
                f"layer {name!r} requantizes its output, a property of the INT8 Q/DQ export "
                "scheme (harness export-onnx --int8), not of the checkpoint format"
            )
    folds = getattr(model, FOLDED_INPUT_SCALES, {})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "reference": reference or {},
        "layers": {name: layer.description for name, layer in layers.items()},
    }
    if folds:
        manifest["folded_input_scales"] = {name: producer for name, (producer, _) in folds.items()}
    try:
        text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"reference is not JSON-serializable: {error}") from error
    tensors = {
        key: value.detach().to("cpu").contiguous().clone()
        for key, value in model.state_dict().items()
    }
    for name, (_, factors) in folds.items():
        tensors[f"{name}.{FOLDED_SCALE_TENSOR}"] = factors.detach().to("cpu", torch.float32).clone()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_dir / WEIGHTS_NAME)
    (out_dir / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")
    return out_dir


def load_checkpoint(ckpt_dir: Path, reference_model: nn.Module) -> nn.Module:
    """A deep copy of ``reference_model`` carrying the checkpoint's quantized layers and state."""
    ckpt_dir = Path(ckpt_dir)
    specs = _read_layer_specs(ckpt_dir)
    tensors = _read_tensors(ckpt_dir)
    model = copy.deepcopy(reference_model).eval()
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        _check_extras(name, spec, tensors)
        layer = modules.get(name) if name else None
        if layer is None:
            raise CheckpointError(
                f"layer {name!r} in the manifest does not exist in the reference architecture"
            )
        if layer_kind(layer) != spec.kind:
            raise CheckpointError(
                f"layer {name!r} is declared {spec.kind} but the reference architecture has "
                f"{type(layer).__name__} there"
            )
        try:
            quantized = QUANT_LAYER_TYPES[spec.kind](layer, spec)
        except ValueError as error:
            raise CheckpointError(f"layer {name!r}: {error}") from error
        model.set_submodule(name, quantized)
    folds = _read_folds(ckpt_dir, tensors, specs, modules)
    model.load_state_dict(_checked_state(tensors, model.state_dict(), specs), strict=True)
    if folds:
        setattr(model, FOLDED_INPUT_SCALES, folds)
    return model


def _read_folds(
    ckpt_dir: Path,
    tensors: dict[str, torch.Tensor],
    specs: dict[str, LayerSpec],
    modules: dict[str, nn.Module],
) -> dict[str, tuple[str, torch.Tensor]]:
    """The declared folded input scales {layer: (producer, s)}, their tensors taken out of
    ``tensors``; each must name a quantized layer, a module of the architecture and hold one
    positive, finite factor per input channel of the layer."""
    declared = _read_manifest(ckpt_dir).get("folded_input_scales", {})
    if not isinstance(declared, dict):
        raise CheckpointError("manifest 'folded_input_scales' must map layers to producers")
    folds = {}
    for name, producer in declared.items():
        factors = tensors.pop(f"{name}.{FOLDED_SCALE_TENSOR}", None)
        if name not in specs or not isinstance(producer, str) or producer not in modules:
            raise CheckpointError(
                f"folded input scale of {name!r} into {producer!r}: both must be layers of the "
                "architecture, the first a quantized one"
            )
        layer = modules[name]
        width = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        if factors is None or tuple(factors.shape) != (width,):
            raise CheckpointError(
                f"layer {name!r} declares a folded input scale but holds no {FOLDED_SCALE_TENSOR} "
                f"of shape ({width},)"
            )
        _check_finite(f"layer {name!r}: {FOLDED_SCALE_TENSOR}", factors, positive=True)
        folds[name] = (producer, factors.to(torch.float32))
    return folds


def describe_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """Precision and size actually held by the checkpoint, read from its tensors.

    Weight bits are the fewest bits that hold each layer's codes (symmetric codes |c| <= 2^(b-1)-1,
    affine codes 0 <= c <= 2^b - 1); granularities come from the scale, zero-point and group-id
    tensors, checked against the codes; static activation scales from ``act_scale`` tensors and
    their grid from ``act_zero_point`` ones (``activation_quantizers``: symmetric / asymmetric).
    Activation bits and dynamic rules are what the manifest declares, which is exactly what the
    simulator then applies. ``weight_bits`` is the maximum over layers; ``activation_bits`` is the
    maximum, or None when some quantized layer keeps floating-point activations.

    ``size_bytes`` is the serialized model size: codes packed at the layer's weight bits, float32
    scales, zero-points packed at the fewest signed bits that hold them, group ids packed at
    ceil(log2 G) bits, explicit input scales and low-rank branches (kept in floating point) and
    every other tensor (biases, activation scales, float layers) at their stored width; an input
    rotation is rebuilt from the layer's width and takes none. ``size_breakdown_bytes`` splits it
    up and each layer reports its own share. Group ids equal in every row of a layer (one shared
    column reordering) are one column index: n * ceil(log2 G) bits.

    ``bits_per_weight`` = 8 × (bytes of every ``_SIZE_PARTS`` part of the quantized layers) ÷
    (their number of weights): codes, scales, zero-points, group ids, explicit input scales and
    low-rank branches, per quantized weight.
    """
    ckpt_dir = Path(ckpt_dir)
    specs = _read_layer_specs(ckpt_dir)
    tensors = _read_tensors(ckpt_dir)
    layers = {name: _verified_layer(name, spec, tensors) for name, spec in specs.items()}
    entries = list(layers.values())
    kinds = sorted({e["kind"] for e in entries})
    activation_bits = [e["activation_bits"] for e in entries]

    def distinct(key: str, kind: str | None = None) -> list[Any]:
        values = {e[key] for e in entries if kind is None or e["kind"] == kind}
        return sorted(values, key=lambda v: (v is not None, v or 0))

    weight_granularities = distinct("weight_granularity")
    activation_granularities = [g for g in distinct("activation_granularity") if g is not None]
    activations = "+".join(activation_granularities) or "none"
    breakdown = {part: sum(e["size_bytes"][part] for e in entries) for part in _SIZE_PARTS}
    owned = {f"{name}.{buffer}" for name in layers for buffer in _LAYER_BUFFERS}
    breakdown["other"] = sum(e["size_bytes"]["other"] for e in entries) + sum(
        t.numel() * t.element_size() for key, t in tensors.items() if key not in owned
    )
    weights = sum(e["weights"] for e in entries)
    weight_bytes = sum(breakdown[part] for part in _SIZE_PARTS)
    for entry in entries:
        entry["bits_per_weight"] = (
            8 * sum(entry["size_bytes"][part] for part in _SIZE_PARTS) / entry["weights"]
        )
        entry["size_bytes"] = sum(entry["size_bytes"].values())
    return {
        "format": FORMAT,
        "version": VERSION,
        "num_quantized_layers": len(layers),
        "weight_bits": max(e["weight_bits"] for e in entries),
        "activation_bits": None if None in activation_bits else max(activation_bits),
        "granularity": f"weights {'+'.join(weight_granularities)}; activations {activations}",
        "weight_bits_by_kind": {kind: distinct("weight_bits", kind) for kind in kinds},
        "activation_bits_by_kind": {kind: distinct("activation_bits", kind) for kind in kinds},
        "weight_granularities": weight_granularities,
        "activation_granularities": activation_granularities,
        "activation_scales": [s for s in distinct("activation_scale") if s is not None],
        "activation_quantizers": sorted(
            {e["activation_quantizer"] for e in entries if "activation_quantizer" in e}
        ),
        "size_bytes": sum(breakdown.values()),
        "size_breakdown_bytes": breakdown,
        "quantized_weights": weights,
        "bits_per_weight": 8 * weight_bytes / weights if weights else 0.0,
        "layers": layers,
    }


def _read_layer_specs(ckpt_dir: Path) -> dict[str, LayerSpec]:
    manifest = _read_manifest(ckpt_dir)
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{MANIFEST_NAME} must be a JSON object")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"unknown checkpoint format {manifest.get('format')!r} (expected {FORMAT!r})"
        )
    version = manifest.get("version")
    if type(version) is not int or version != VERSION:
        raise CheckpointError(f"unsupported checkpoint version {version!r} (expected {VERSION})")
    if not isinstance(manifest.get("reference", {}), dict):
        raise CheckpointError("manifest 'reference' must be a JSON object")
    layers = manifest.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise CheckpointError("manifest declares no quantized layers")
    specs = {}
    for name, entry in layers.items():
        try:
            specs[name] = LayerSpec.from_dict(entry)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"layer {name!r}: {error}") from error
    return specs


def _read_manifest(ckpt_dir: Path) -> Any:
    """The parsed manifest, within ``MANIFEST_MAX_BYTES`` and ``untrusted_json``'s limits."""
    path = ckpt_dir / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint has no {MANIFEST_NAME}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MANIFEST_MAX_BYTES + 1)
        return untrusted_json.loads(data, max_bytes=MANIFEST_MAX_BYTES)
    except OSError as error:
        raise CheckpointError(f"{MANIFEST_NAME} is not readable: {error}") from error
    except untrusted_json.UntrustedJsonError as error:
        raise CheckpointError(f"{MANIFEST_NAME} {error}") from None


def _read_tensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file; a dtype outside ``SUPPORTED_DTYPES`` is refused."""
    path = ckpt_dir / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"checkpoint has no {WEIGHTS_NAME}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{WEIGHTS_NAME} is unreadable or corrupt: {error}") from error
    for key, tensor in tensors.items():
        if tensor.dtype not in SUPPORTED_DTYPES:
            supported = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
            raise CheckpointError(
                f"tensor {key!r} has dtype {str(tensor.dtype).removeprefix('torch.')}, which "
                f"checkpoints do not support (supported: {supported})"
            )
    return tensors


def _checked_state(
    tensors: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    specs: dict[str, LayerSpec],
) -> dict[str, torch.Tensor]:
    """Tensors validated against the architecture's state_dict and cast to its dtypes."""
    missing = sorted(expected.keys() - tensors.keys())
    if missing:
        raise CheckpointError(f"missing tensors: {_preview(missing)}")
    unexpected = sorted(tensors.keys() - expected.keys())
    if unexpected:
        raise CheckpointError(f"unexpected tensors: {_preview(unexpected)}")
    state = {}
    for key, want in expected.items():
        got = tensors[key]
        owner, _, buffer = key.rpartition(".")
        spec = specs.get(owner)
        label = f"layer {owner!r}: {buffer}" if spec is not None else f"tensor {key!r}"
        if got.shape != want.shape:
            raise CheckpointError(
                f"{label} has shape {tuple(got.shape)} but the layer needs {tuple(want.shape)}"
            )
        if spec is not None and buffer == "weight_codes":
            _check_code_bits(owner, spec, got)
        elif spec is not None and buffer == "weight_zero_point":
            low, high = _integer_range(owner, buffer, got)
            if low < _INT32.min or high > _INT32.max:
                raise CheckpointError(f"layer {owner!r}: weight_zero_point does not fit in int32")
        elif spec is not None and buffer == "act_zero_point":
            _check_activation_zero_point(owner, spec, got)
        elif spec is not None and buffer == "weight_group_ids":
            low, high = _integer_range(owner, buffer, got)
            if low < 0 or high >= spec.weight_groups:
                raise CheckpointError(
                    f"layer {owner!r}: weight_group_ids must lie in [0, {spec.weight_groups}) for "
                    f"its {spec.weight_groups} declared groups, found {low if low < 0 else high}"
                )
        elif got.dtype.is_floating_point != want.dtype.is_floating_point:
            raise CheckpointError(f"{label} has dtype {got.dtype}, expected {want.dtype}")
        elif got.dtype.is_floating_point:
            _check_finite(label, got, positive=spec is not None and buffer in _SCALE_BUFFERS)
        state[key] = got.to(want.dtype)
    return state


def _verified_layer(name: str, spec: LayerSpec, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Manifest-shaped entry whose weight bits and layout come from the tensors, with the layer's
    size in bytes by part (see ``describe_checkpoint``)."""
    codes = tensors.get(f"{name}.weight_codes")
    scale = tensors.get(f"{name}.weight_scale")
    if codes is None or scale is None:
        raise CheckpointError(f"layer {name!r} has no weight_codes / weight_scale tensors")
    try:
        scale_shape = QUANT_LAYER_TYPES[spec.kind].weight_scale_shape(spec, tuple(codes.shape))
    except ValueError as error:
        raise CheckpointError(f"layer {name!r}: {error}") from error
    if tuple(scale.shape) != scale_shape:
        raise CheckpointError(
            f"layer {name!r}: weight_scale has shape {tuple(scale.shape)} but "
            f"{spec.weight_granularity.value} codes {tuple(codes.shape)} need {scale_shape}"
        )
    _check_extras(name, spec, tensors)
    zero_point = _layout_tensor(name, tensors, "weight_zero_point", spec.weight_zero_point)
    if zero_point is not None and zero_point.shape != scale.shape:
        raise CheckpointError(
            f"layer {name!r}: weight_zero_point has shape {tuple(zero_point.shape)}, its "
            f"weight_scale {tuple(scale.shape)}"
        )
    has_ids = spec.weight_granularity.has_group_ids
    group_ids = _layout_tensor(name, tensors, "weight_group_ids", has_ids)
    if group_ids is not None and group_ids.shape != codes.shape:
        raise CheckpointError(
            f"layer {name!r}: weight_group_ids has shape {tuple(group_ids.shape)}, its "
            f"weight_codes {tuple(codes.shape)}"
        )
    act_scale = tensors.get(f"{name}.act_scale")
    if (act_scale is not None) != (spec.activation_scale == "static"):
        declared = spec.activation_scale or "no"
        held = "holds" if act_scale is not None else "holds no"
        raise CheckpointError(
            f"layer {name!r} declares {declared} activation scales but {held} act_scale tensor"
        )
    act_zero = _layout_tensor(
        name,
        tensors,
        "act_zero_point",
        spec.activation_zero_point and spec.activation_scale == "static",
    )
    if act_zero is not None:
        if act_zero.shape != act_scale.shape:
            raise CheckpointError(
                f"layer {name!r}: act_zero_point has shape {tuple(act_zero.shape)}, its "
                f"act_scale {tuple(act_scale.shape)}"
            )
        _check_activation_zero_point(name, spec, act_zero)
    activation_granularity = spec.activation_granularity
    if act_scale is not None:
        activation_granularity = "per-tensor" if act_scale.numel() == 1 else "per-channel"
    granularity = spec.weight_granularity
    if scale.numel() == 1 and not has_ids:
        granularity = WeightGranularity.PER_TENSOR
    code_bits, max_code = _code_bits(name, spec, codes)
    if code_bits > MAX_BITS:
        magnitude = "" if spec.weight_zero_point else " in magnitude"
        raise CheckpointError(
            f"layer {name!r} holds weight codes up to {max_code}{magnitude}, which need "
            f"{code_bits} bits; quantized weights take at most {MAX_BITS} bits"
        )
    weight_bits = max(MIN_BITS, code_bits)
    entry = LayerSpec(
        spec.kind,
        weight_bits,
        granularity,
        weight_group_size=(
            spec.weight_group_size if granularity is WeightGranularity.GROUP_WISE else None
        ),
        weight_groups=scale.shape[-1] if has_ids else None,
        weight_zero_point=spec.weight_zero_point,
        input_scale=spec.input_scale,
        input_rotation=spec.input_rotation,
        lowrank_rank=spec.lowrank_rank,
    ).as_dict()
    entry["activation_bits"] = spec.activation_bits
    entry["activation_granularity"] = (
        None if activation_granularity is None else str(activation_granularity)
    )
    entry["activation_scale"] = spec.activation_scale
    if spec.activation_bits is not None:
        entry["activation_quantizer"] = "asymmetric" if spec.activation_zero_point else "symmetric"
    other = [tensors.get(f"{name}.{buffer}") for buffer in ("bias", "act_scale", "act_zero_point")]
    id_rows = None
    if group_ids is not None:
        id_rows = to_rows(group_ids, QUANT_LAYER_TYPES[spec.kind].weight_channel_axis)
    shared_ids = id_rows is not None and bool((id_rows == id_rows[:1]).all())
    if shared_ids:
        entry["weight_group_ids_shared"] = "columns"
    entry["weights"] = codes.numel()
    entry["size_bytes"] = {
        "weight_codes": _packed_bytes(codes.numel(), weight_bits),
        "weight_scales": scale.numel() * _FLOAT32_BYTES,
        "weight_zero_points": 0 if zero_point is None else _zero_point_bytes(name, zero_point),
        "weight_group_ids": (
            0
            if group_ids is None
            else _packed_bytes(
                id_rows.shape[1] if shared_ids else group_ids.numel(), _id_bits(scale.shape[-1])
            )
        ),
        "input_scales": _stored_bytes(tensors, name, "input_scale"),
        "lowrank_branch": sum(_stored_bytes(tensors, name, b) for b in ("lowrank_u", "lowrank_v")),
        "other": sum(t.numel() * t.element_size() for t in other if t is not None),
    }
    return entry


def _check_extras(name: str, spec: LayerSpec, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse extras tensors that the manifest entry does not declare, declared ones missing, and
    low-rank factors that are not (m, r) and (r, n) for the declared rank r and the codes' m x n."""
    _layout_tensor(name, tensors, "input_scale", spec.input_scale)
    u, v = (
        _layout_tensor(name, tensors, buffer, spec.lowrank_rank is not None)
        for buffer in ("lowrank_u", "lowrank_v")
    )
    codes = tensors.get(f"{name}.weight_codes")
    if u is None or codes is None:
        return
    rows = codes.shape[QUANT_LAYER_TYPES[spec.kind].weight_channel_axis]
    expected = ((rows, spec.lowrank_rank), (spec.lowrank_rank, codes.numel() // rows))
    if (tuple(u.shape), tuple(v.shape)) != expected:
        raise CheckpointError(
            f"layer {name!r} declares a rank-{spec.lowrank_rank} branch of its {expected[0][0]}x"
            f"{expected[1][1]} weight, (m, r) and (r, n), but holds lowrank_u {tuple(u.shape)} "
            f"and lowrank_v {tuple(v.shape)}"
        )


def _stored_bytes(tensors: dict[str, torch.Tensor], name: str, buffer: str) -> int:
    tensor = tensors.get(f"{name}.{buffer}")
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def _layout_tensor(
    name: str, tensors: dict[str, torch.Tensor], buffer: str, declared: bool
) -> torch.Tensor | None:
    """The layer's ``buffer`` tensor, refused unless it is present exactly when ``declared``."""
    tensor = tensors.get(f"{name}.{buffer}")
    if (tensor is not None) != declared:
        declares = "declares" if declared else "does not declare"
        holds = "holds no" if tensor is None else "holds"
        raise CheckpointError(f"layer {name!r} {declares} {_DECLARES[buffer]} but {holds} {buffer}")
    return tensor


def _code_bits(name: str, spec: LayerSpec, codes: torch.Tensor) -> tuple[int, int]:
    """(fewest bits holding the codes, largest code magnitude); affine codes must be >= 0."""
    low, high = _integer_range(name, "weight_codes", codes)
    if not spec.weight_zero_point:
        max_code = max(-low, high)
        return bits_for_code(max_code), max_code
    if low < 0:
        raise CheckpointError(
            f"layer {name!r}: affine weight_codes must be non-negative, found {low}"
        )
    return bits_for_affine_code(high), high


def _check_activation_zero_point(name: str, spec: LayerSpec, zero: torch.Tensor) -> None:
    """An activation zero-point must be an integer code of the layer's asymmetric grid."""
    low, high = _integer_range(name, "act_zero_point", zero)
    top = 2**spec.activation_bits - 1
    if low < 0 or high > top:
        raise CheckpointError(
            f"layer {name!r}: act_zero_point must lie in [0, {top}] for its "
            f"{spec.activation_bits}-bit asymmetric activations, found {low if low < 0 else high}"
        )


def _check_code_bits(name: str, spec: LayerSpec, codes: torch.Tensor) -> None:
    bits, max_code = _code_bits(name, spec, codes)
    if bits > spec.weight_bits:
        layout = " affine" if spec.weight_zero_point else ""
        magnitude = "" if spec.weight_zero_point else " in magnitude"
        raise CheckpointError(
            f"layer {name!r} declares {spec.weight_bits}-bit{layout} weights but holds codes up "
            f"to {max_code}{magnitude} (needs {bits} bits)"
        )


def _integer_range(name: str, buffer: str, values: torch.Tensor) -> tuple[int, int]:
    """(min, max) of an integer tensor, (0, 0) when empty; non-integer dtypes are refused."""
    dtype = values.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise CheckpointError(f"layer {name!r}: {buffer} must be integers, got {dtype}")
    if values.numel() == 0:
        return 0, 0
    return int(values.min()), int(values.max())


def _packed_bytes(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def _id_bits(groups: int) -> int:
    """ceil(log2 G): the bits one group id takes (0 for a single group)."""
    return (groups - 1).bit_length()


def _zero_point_bytes(name: str, zero_point: torch.Tensor) -> int:
    low, high = _integer_range(name, "weight_zero_point", zero_point)
    return _packed_bytes(zero_point.numel(), bits_for_code(max(-low, high)))


def _check_finite(label: str, tensor: torch.Tensor, positive: bool) -> None:
    if not torch.isfinite(tensor).all():
        raise CheckpointError(f"{label} has non-finite values")
    if positive and not (tensor > 0).all():
        raise CheckpointError(f"{label} has non-positive values")


def _preview(names: list[str], limit: int = 5) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
