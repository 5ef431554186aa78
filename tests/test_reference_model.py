"""Reference models: registry, spec validation, safetensors round trip, shipped demo models."""

import json
from dataclasses import replace

import pytest
import torch

from harness.demo import DEMO_MODELS_DIR
from harness.errors import ModelSpecError
from harness.models.networks import ARCHITECTURES, build_network
from harness.models.reference import (
    ModelSpec,
    load_reference_model,
    read_spec,
    save_reference_model,
)

LABELS = {"0": "background", "1": "organ"}
SW = {"roi_size": [32, 32, 32], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2}
PRE = {"orientation": "RAS", "spacing": None, "intensity_window": [-100, 200]}

TINY = {
    "UNet": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [4, 8],
        "strides": [2],
    },
    "SegResNet": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8},
    "DynUNet": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
    },
    "UNETR": {
        "in_channels": 1,
        "out_channels": 2,
        "img_size": [32, 32, 32],
        "feature_size": 4,
        "hidden_size": 24,
        "mlp_dim": 48,
        "num_heads": 2,
    },
    "SwinUNETR": {
        "in_channels": 1,
        "out_channels": 2,
        "feature_size": 12,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
    },
}


# SwinUNETR downsamples 32×: its smallest roi that keeps a bottleneck larger than 1 voxel is 64.
ROI = {"SwinUNETR": [64, 64, 64]}


def spec_dict(arch: str) -> dict:
    roi = ROI.get(arch, [32, 32, 32])
    return {
        "version": 1,
        "name": f"tiny-{arch}",
        "architecture": arch,
        "kwargs": TINY[arch],
        "labels": LABELS,
        "preprocessing": PRE,
        "sliding_window": SW | {"roi_size": roi},
    }


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_registered_architecture_builds_from_json_and_runs(arch):
    spec = ModelSpec.from_dict(json.loads(json.dumps(spec_dict(arch))))
    model = spec.build().eval()
    roi = spec.sliding_window.roi_size
    with torch.no_grad():
        out = model(torch.zeros(1, 1, *roi))
    assert out.shape == (1, 2, *roi)
    assert spec.family == ARCHITECTURES[arch].family


def test_registry_has_cnn_and_hybrid_families():
    families = {a.family for a in ARCHITECTURES.values() if a.torch_network}
    assert families == {"cnn", "hybrid"}
    assert ARCHITECTURES["ONNX"].family is None  # an imported graph's family is read from it
    assert ARCHITECTURES["UNETR"].family == "hybrid" and ARCHITECTURES["UNet"].family == "cnn"


def test_save_then_load_gives_identical_outputs(tmp_path):
    spec = ModelSpec.from_dict(spec_dict("UNet"))
    torch.manual_seed(0)
    model = spec.build().eval()
    save_reference_model(model, spec, tmp_path / "m")
    spec2, model2 = load_reference_model(tmp_path / "m")
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model2(x))
    assert spec2 == spec


def test_unknown_architecture_is_refused():
    with pytest.raises(ModelSpecError, match="unknown architecture 'ResNet9000'"):
        ModelSpec.from_dict(spec_dict("UNet") | {"architecture": "ResNet9000"})
    with pytest.raises(ModelSpecError, match="unknown architecture"):
        build_network("nope", {})


def test_bad_constructor_arguments_are_refused():
    with pytest.raises(ModelSpecError, match="cannot build UNet"):
        build_network("UNet", {"spatial_dims": 3, "bogus": 1})


def test_unetr_img_size_must_match_roi():
    data = spec_dict("UNETR")
    data["kwargs"] = data["kwargs"] | {"img_size": [16, 16, 16]}
    with pytest.raises(ModelSpecError, match="img_size .* must equal the sliding-window roi_size"):
        ModelSpec.from_dict(data)


def test_out_channels_must_match_labels():
    data = spec_dict("UNet")
    data["kwargs"] = data["kwargs"] | {"out_channels": 3}
    with pytest.raises(ModelSpecError, match="out_channels 3 must equal the number of labels"):
        ModelSpec.from_dict(data)


def test_missing_field_and_bad_version_are_refused():
    data = spec_dict("UNet")
    del data["sliding_window"]
    with pytest.raises(ModelSpecError, match="lacks the field 'sliding_window'"):
        ModelSpec.from_dict(data)
    with pytest.raises(ModelSpecError, match="version 7 is not supported"):
        ModelSpec.from_dict(spec_dict("UNet") | {"version": 7})


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    spec = ModelSpec.from_dict(spec_dict("UNet"))
    save_reference_model(spec.build(), spec, tmp_path / "m")
    other = replace(spec, kwargs=spec.kwargs | {"channels": [4, 8, 16], "strides": [2, 2]})
    (tmp_path / "m" / "model.json").write_text(json.dumps(other.to_dict()))
    with pytest.raises(ModelSpecError, match="does not fit UNet"):
        load_reference_model(tmp_path / "m")


def test_corrupt_weights_file_is_refused(tmp_path):
    spec = ModelSpec.from_dict(spec_dict("UNet"))
    save_reference_model(spec.build(), spec, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelSpecError, match="not a readable safetensors file"):
        load_reference_model(tmp_path / "m")


def test_missing_spec_is_refused(tmp_path):
    with pytest.raises(ModelSpecError, match="missing model spec"):
        read_spec(tmp_path)


@pytest.mark.parametrize("name", ["unet", "segresnet", "unetr"])
def test_shipped_demo_models_load_with_trained_weights(name):
    spec, model = load_reference_model(DEMO_MODELS_DIR / name)
    assert spec.training.get("iterations", 0) > 0, (
        "shipped weights must record how they were trained"
    )
    assert spec.training["dataset"] == "AbdomenPhantom"
    with torch.no_grad():
        out = model(torch.zeros(1, 1, *spec.sliding_window.roi_size))
    assert out.shape[1] == len(spec.labels)


def test_a_model_json_without_orientation_is_refused_with_the_reason(tmp_path):
    data = spec_dict("UNet")
    data["preprocessing"] = {k: v for k, v in PRE.items() if k != "orientation"}
    with pytest.raises(ModelSpecError, match="orientation is required.*null to feed the voxel "
                       "axes as stored.*not orientation-invariant"):  # fmt: skip
        ModelSpec.from_dict(data)
    stored = ModelSpec.from_dict(spec_dict("UNet") | {"preprocessing": PRE | {"orientation": None}})
    assert stored.preprocessing.orientation is None
    assert stored.to_dict()["preprocessing"]["orientation"] is None  # written, as null
