"""Checkpoint format version 2: integer buffers packed at their bits, the size counted from the
bytes stored, version-1 files still read, and malformed packing refused."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from harness.artifacts.checkpoint.describe import SIZE_PARTS, describe_checkpoint
from harness.artifacts.checkpoint.load import load_checkpoint
from harness.artifacts.checkpoint.packing import PACKED_METADATA, pack_bits, unpack_bits
from harness.artifacts.checkpoint.save import save_checkpoint
from harness.artifacts.checkpoint.storage import FORMAT, MANIFEST_NAME, WEIGHTS_NAME
from harness.errors import CheckpointError
from reference_methods.methods import permutation_comq
from reference_methods.methods.comq import COMQConfig
from reference_methods.methods.permutation_comq import PermutationCOMQConfig
from reference_methods.simulator.scheme import QuantConfig, quantize, quantized_layers

FIRST = "model.0.conv"


def _unet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return UNet(
        spatial_dims=3, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    ).eval()


def _volume(seed: int) -> torch.Tensor:
    return torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


def _permuted(bits: int, scope: str) -> nn.Module:
    config = PermutationCOMQConfig(COMQConfig(QuantConfig(bits, None, "per-channel")), scope=scope)
    return permutation_comq.apply(_unet(0), config, [_volume(1)])


def _write_version_1(model: nn.Module, out: Path) -> Path:
    """The checkpoint as format version 1 wrote it: the state_dict as the model holds it."""
    out.mkdir()
    layers = quantized_layers(model)
    manifest = {
        "format": FORMAT,
        "version": 1,
        "reference": {},
        "layers": {name: layer.description for name, layer in layers.items()},
    }
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / WEIGHTS_NAME)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out


def _stored_weight_bits(ckpt: Path) -> float:
    """8 x bytes of the quantized layers' weight tensors in the file / their weights, read
    independently of ``describe_checkpoint``."""
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    stored = load_file(ckpt / WEIGHTS_NAME)
    names = [t for part in SIZE_PARTS.values() for t in part]
    total = weights = 0
    for layer in manifest["layers"]:
        total += sum(
            stored[f"{layer}.{t}"].numel() * stored[f"{layer}.{t}"].element_size()
            for t in names
            if f"{layer}.{t}" in stored
        )
    with safe_open(ckpt / WEIGHTS_NAME, "pt") as handle:
        packed = json.loads(handle.metadata()[PACKED_METADATA])
    for layer in manifest["layers"]:
        weights += math.prod(packed[f"{layer}.weight_codes"]["shape"])
    return 8 * total / weights


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 13, 31, 32])
def test_bit_stream_round_trips_every_width(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=1001, dtype=np.int64)
    packed = pack_bits(values, bits)
    assert packed.size == math.ceil(1001 * bits / 8)
    assert np.array_equal(unpack_bits(packed, 1001, bits), values)


def test_one_group_takes_zero_bits_and_decodes_to_zeros():
    assert pack_bits(np.zeros(50, dtype=np.int64), 0).size == 0
    assert unpack_bits(np.zeros(0, dtype=np.uint8), 50, 0).tolist() == [0] * 50


def test_four_bit_codes_pack_low_nibble_first():
    assert pack_bits(np.array([1, 2, 15, 0]), 4).tolist() == [0x21, 0x0F]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_stored_bytes_are_the_reported_bits_per_weight(bits, tmp_path):
    model = _permuted(bits, "column")
    save_checkpoint(model, tmp_path)
    summary = describe_checkpoint(tmp_path)
    assert summary["bits_per_weight"] == pytest.approx(_stored_weight_bits(tmp_path), abs=1e-9)
    assert bits < summary["bits_per_weight"] < bits + 1
    stored = load_file(tmp_path / WEIGHTS_NAME)
    weights = quantized_layers(model)[FIRST].weight_codes.numel()
    assert stored[f"{FIRST}.weight_codes"].numel() == math.ceil(weights * bits / 8)


def test_shared_column_group_ids_are_one_index_per_input_column(tmp_path):
    model = _permuted(2, "column")
    save_checkpoint(model, tmp_path)
    with safe_open(tmp_path / WEIGHTS_NAME, "pt") as handle:
        packed = json.loads(handle.metadata()[PACKED_METADATA])
    stored = load_file(tmp_path / WEIGHTS_NAME)
    for name, layer in quantized_layers(model).items():
        descriptor = packed[f"{name}.weight_group_ids"]
        assert descriptor["shared_rows"] is True
        rows = layer.weight_codes.shape[type(layer).weight_channel_axis]
        columns = layer.weight_codes.numel() // rows
        id_bits = (layer.spec.weight_groups - 1).bit_length()  # 0 for one group
        assert stored[f"{name}.weight_group_ids"].numel() == math.ceil(columns * id_bits / 8)


def test_version_1_checkpoint_still_loads_and_counts_its_stored_bytes(tmp_path):
    model = _permuted(4, "layer")
    v1 = _write_version_1(model, tmp_path / "v1")
    v2 = save_checkpoint(model, tmp_path / "v2")
    x = _volume(3)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(load_checkpoint(v1, _unet(5))(x), expected)
        assert torch.equal(load_checkpoint(v2, _unet(5))(x), expected)
    old, new = describe_checkpoint(v1), describe_checkpoint(v2)
    assert (old["version"], new["version"]) == (1, 2)
    assert old["layers"][FIRST]["weight_bits"] == new["layers"][FIRST]["weight_bits"] == 4
    # version 1 stores a byte per code and an int32 group id per weight: 40+ bits per weight
    assert old["bits_per_weight"] == pytest.approx(_v1_weight_bits(v1))
    assert old["bits_per_weight"] > 40 > 8 > new["bits_per_weight"]
    assert new["size_bytes"] < old["size_bytes"]


def _v1_weight_bits(ckpt: Path) -> float:
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    stored = load_file(ckpt / WEIGHTS_NAME)
    names = [t for part in SIZE_PARTS.values() for t in part]
    total = sum(
        t.numel() * t.element_size()
        for key, t in stored.items()
        if key.rpartition(".")[0] in manifest["layers"] and key.rpartition(".")[2] in names
    )
    weights = sum(stored[f"{layer}.weight_codes"].numel() for layer in manifest["layers"])
    return 8 * total / weights


@pytest.fixture(scope="module")
def packed_checkpoint(tmp_path_factory) -> Path:
    model = quantize(_unet(0), QuantConfig.from_scheme("w4a16-per-channel"))
    return save_checkpoint(model, tmp_path_factory.mktemp("packed") / "ckpt")


def _rewrite(ckpt: Path, edit) -> None:
    stored = load_file(ckpt / WEIGHTS_NAME)
    with safe_open(ckpt / WEIGHTS_NAME, "pt") as handle:
        packed = json.loads(handle.metadata()[PACKED_METADATA])
    edit(stored, packed)
    save_file(stored, ckpt / WEIGHTS_NAME, metadata={PACKED_METADATA: json.dumps(packed)})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s, p: s.update({f"{FIRST}.weight_codes": s[f"{FIRST}.weight_codes"][:-1]}),
            f"packed tensor '{FIRST}.weight_codes' of 108 4-bit values needs 54 uint8 bytes, "
            "holds torch.uint8 (53,)",
        ),
        (
            lambda s, p: p[f"{FIRST}.weight_codes"].update(bits=33),
            "bits must be an integer in [0, 32]",
        ),
        (
            lambda s, p: p[f"{FIRST}.weight_codes"].update(shape=[4, 1, 3, 3, -3]),
            "shape must be a list of positive integers",
        ),
        (
            lambda s, p: p[f"{FIRST}.weight_codes"].update(offset=2**31 - 1),
            "offset 2147483647 with 4 bits leaves int32",
        ),
        (
            lambda s, p: p[f"{FIRST}.weight_codes"].update(shared_rows=True),
            "only group ids may share rows",
        ),
        (
            lambda s, p: p.update({f"{FIRST}.bias": {"shape": [4], "bits": 8, "offset": 0}}),
            f"packed tensor '{FIRST}.bias' is not an integer buffer",
        ),
        (lambda s, p: p.clear() or p.update(x=[]), "packed tensor 'x' is not an integer buffer"),
        (
            lambda s, p: p[f"{FIRST}.weight_codes"].update(bits=0),
            f"packed tensor '{FIRST}.weight_codes': only group ids may take 0 bits",
        ),
    ],
)
def test_malformed_packing_is_refused_naming_the_tensor(packed_checkpoint, tmp_path, edit, message):
    ckpt = Path(shutil.copytree(packed_checkpoint, tmp_path / "ckpt"))
    _rewrite(ckpt, edit)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_checkpoint(ckpt, _unet(1))
    with pytest.raises(CheckpointError):
        describe_checkpoint(ckpt)


def test_packed_codes_wider_than_declared_are_refused(packed_checkpoint, tmp_path):
    ckpt = Path(shutil.copytree(packed_checkpoint, tmp_path / "ckpt"))

    def widen(stored, packed):  # the same codes re-packed at 8 bits, the manifest still says 4
        codes = torch.full((108,), 100, dtype=torch.int64)
        stored[f"{FIRST}.weight_codes"] = torch.from_numpy(pack_bits(codes.numpy(), 8))
        packed[f"{FIRST}.weight_codes"].update(bits=8, offset=0)

    _rewrite(ckpt, widen)
    with pytest.raises(CheckpointError, match="declares 4-bit weights but holds codes up to 100"):
        load_checkpoint(ckpt, _unet(1))


def test_a_version_1_file_with_packing_metadata_is_refused(packed_checkpoint, tmp_path):
    ckpt = Path(shutil.copytree(packed_checkpoint, tmp_path / "ckpt"))
    manifest = json.loads((ckpt / MANIFEST_NAME).read_text())
    (ckpt / MANIFEST_NAME).write_text(json.dumps(manifest | {"version": 1}))
    with pytest.raises(CheckpointError, match="a version-1 checkpoint holds no packed tensors"):
        load_checkpoint(ckpt, _unet(1))
