"""Importing a MONAI bundle: the imported reference model predicts what the bundle itself
predicts (its own preprocessing transforms, network and inferer parsed by MONAI), and a bundle
whose network_def names anything outside monai.networks is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from harness.data.dataset import load_dataset
from harness.data.preprocessing import preprocess, read_case
from harness.errors import ModelImportError
from harness.inference.sliding_window import predict_logits
from harness.models.importers import import_model
from harness.models.reference import load_reference_model

CHANNELS = {"0": "background", "1": "liver", "2": "spleen", "3": "kidneys", "4": "aorta",
            "5": "vertebra"}  # fmt: skip


def inference_config() -> dict:
    return {
        "num_classes": 6,
        "roi": [32, 24, 16],
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": "@num_classes",
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 1,
        },
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "Spacingd",
                    "keys": "image",
                    "pixdim": [7.0, 6.0, 9.0],
                    "mode": "bilinear",
                },
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -200,
                    "a_max": 600,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },  # fmt: skip
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": "@roi",
            "sw_batch_size": 2,
            "overlap": 0.25,
            "mode": "gaussian",
        },
    }


def write_bundle(root: Path, config: dict | None = None) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    metadata = {
        "name": "Phantom UNet bundle",
        "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [32, 24, 16]}},
            "outputs": {"pred": {"num_channels": 6, "channel_def": CHANNELS}},
        },
    }
    (root / "configs/metadata.json").write_text(json.dumps(metadata))
    config = config or inference_config()
    (root / "configs/inference.json").write_text(json.dumps(config))
    torch.manual_seed(5)
    network = ConfigParser(inference_config()).get_parsed_content("network_def")
    torch.save(network.state_dict(), root / "models/model.pt")
    return root


@pytest.fixture(scope="module")
def case_file(tiny_track):
    dataset = load_dataset(tiny_track[0])
    return dataset, dataset.split("test")[0]


def test_imported_bundle_predicts_what_the_bundle_predicts(tmp_path, case_file):
    dataset, case = case_file
    bundle = write_bundle(tmp_path / "bundle")
    spec = import_model(bundle, tmp_path / "model")
    assert (spec.architecture, spec.name) == ("UNet", "Phantom UNet bundle")
    assert spec.labels == {int(k): v for k, v in CHANNELS.items()}
    assert spec.sliding_window.roi_size == (32, 24, 16) and spec.sliding_window.mode == "gaussian"
    assert spec.source["transforms_not_applied"] == []

    spec, imported = load_reference_model(tmp_path / "model")
    image = preprocess(read_case(case, dataset.labels), spec.preprocessing)
    harness_logits = predict_logits(imported, image, spec.sliding_window)

    parser = ConfigParser(inference_config())  # the bundle run as MONAI runs it (trusted here)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models/model.pt", weights_only=True))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(case.images[0])})
    with torch.no_grad():
        bundle_logits = parser.get_parsed_content("inferer")(data["image"][None].float(), network)
    bundle_logits = torch.as_tensor(bundle_logits)[0]
    assert bundle_logits.shape == harness_logits.shape
    assert torch.max(torch.abs(bundle_logits - harness_logits)).item() <= 1e-4
    assert torch.std(harness_logits).item() > 1e-3


def _with_network(**changes) -> dict:
    config = inference_config()
    config["network_def"] |= changes
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            _with_network(_target_="torch.nn.Identity"),
            "'torch.nn.Identity' is not a class in monai",
        ),
        (
            _with_network(_target_="Compose"),
            r"'Compose' is not a class in monai.networks \(it is in",
        ),
        (
            _with_network(channels="$__import__('os').system('true')"),
            r"expressions \(\$…\) are code",
        ),
        (_with_network(strides="%other.json#strides"), r"macros \(%…\) are not accepted"),
        (_with_network(_requires_="@roi"), "the key _requires_ is not accepted"),
        (_with_network(channels="@no_such_id"), "reference @no_such_id names nothing"),
        (_with_network(channels=[8, 16, 64]), "models/model.pt does not fit the network"),
        (_with_network(act={"_target_": "torch.nn.ReLU"}), "'torch.nn.ReLU' is not a class in mon"),
    ],
)
def test_a_bundle_outside_what_is_accepted_gets_a_specific_error(tmp_path, config, message):
    bundle = write_bundle(tmp_path / "bundle", config)
    with pytest.raises(ModelImportError, match=message):
        import_model(bundle, tmp_path / "model")
    assert not (tmp_path / "model" / "model.json").exists()


def test_a_reference_cycle_is_an_error_not_a_hang(tmp_path):
    config = inference_config() | {"a": "@b", "b": "@a"}
    config["network_def"]["channels"] = "@a"
    with pytest.raises(ModelImportError, match="references form a cycle"):
        import_model(write_bundle(tmp_path / "bundle", config), tmp_path / "model")


def test_a_bundle_without_weights_names_the_missing_file(tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    (bundle / "models/model.pt").unlink()
    with pytest.raises(ModelImportError, match="missing checkpoint .*model.pt"):
        import_model(bundle, tmp_path / "model")
