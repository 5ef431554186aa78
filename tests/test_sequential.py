"""The Sequential architecture: a plain network from a JSON layer list, its receptive field, and
the context warnings a result carries: too small a share of each patch with the whole receptive
field inside it, and (measured on request) a sliding-window prediction that disagrees with the
whole-volume one."""

import json

import jsonschema
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from harness.data.dataset import load_dataset
from harness.data.preprocessing import preprocess, read_case
from harness.entry.upload import Submission, evaluate_submission
from harness.errors import ModelSpecError
from harness.inference.context import (
    MIN_FULL_CONTEXT_FRACTION,
    MIN_WHOLE_VOLUME_AGREEMENT,
    full_context_fraction,
)
from harness.models.reference import ModelSpec, load_reference_model, save_reference_model
from harness.scoring.result import SCHEMA_PATH
from harness.track.loaded import LoadedTrack
from harness.track.spec import TrackSpec

LABELS = {"0": "background", "1": "liver", "2": "spleen", "3": "kidneys", "4": "aorta",
          "5": "vertebra"}  # fmt: skip
HEAD = {"type": "conv", "out_channels": len(LABELS), "kernel_size": 1}


def dilated_layers(dilations: list[int], channels: int = 4) -> list[dict]:
    """conv 3x3x3 at each dilation + ELU (+ instance norm after the first), then a 1x1x1 head."""
    layers: list[dict] = []
    for i, d in enumerate(dilations):
        layers.append({"type": "conv", "out_channels": channels, "kernel_size": 3, "dilation": d})
        layers.append({"type": "activation", "name": "elu"})
        if i == 0:
            layers.append({"type": "norm", "name": "instance"})
    layers.append({"type": "dropout", "p": 0.1})
    layers.append({"type": "conv", "out_channels": len(LABELS), "kernel_size": 1})
    return layers


def sequential_spec(
    layers: list[dict], roi: int = 16, spacing: tuple[float, float, float] = (12.0, 12.0, 16.0)
) -> ModelSpec:
    return ModelSpec.from_dict(
        {
            "name": "dilated",
            "architecture": "Sequential",
            "kwargs": {"in_channels": 1, "layers": layers},
            "labels": LABELS,
            "preprocessing": {
                "orientation": "RAS",
                "spacing": list(spacing),
                "intensity_window": [-200, 600],
            },
            "sliding_window": {"roi_size": [roi] * 3, "overlap": 0.0, "sw_batch_size": 1},
        }
    )


def test_a_layer_list_builds_the_network_it_describes():
    spec = sequential_spec(dilated_layers([1, 4, 8]))
    assert "out_channels" not in spec.kwargs  # read from the last conv
    model = spec.build()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert [c.dilation for c in convs] == [(1, 1, 1), (4, 4, 4), (8, 8, 8), (1, 1, 1)]
    assert [c.padding for c in convs] == [(1, 1, 1), (4, 4, 4), (8, 8, 8), (0, 0, 0)]
    kinds = [type(m) for m in model.layers]
    assert kinds.count(nn.ELU) == 3 and nn.InstanceNorm3d in kinds and nn.Dropout in kinds
    assert "layers.0.weight" in model.state_dict()
    x = torch.rand(2, 1, 12, 10, 9)
    assert model.eval()(x).shape == (2, len(LABELS), 12, 10, 9)
    assert spec.receptive_field == (1 + 2 * (1 + 4 + 8),) * 3


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"type": "conv", "out_channels": 5, "kernel_size": 1}], "out_channels 5 must equal"),
        ([{"type": "pool"}, HEAD], r"layers\[0\]: unknown layer type 'pool'"),
        (
            [{"type": "conv", "out_channels": 6, "kernel_size": 2}],
            r"layers\[0\].kernel_size must be odd",
        ),
        (
            [{"type": "activation", "name": "swish"}, {"type": "conv", "out_channels": 6}],
            r"layers\[0\]: unknown activation 'swish' \(expected one of: relu",
        ),
        (
            [{"type": "conv", "out_channels": 6, "stride": 2}],
            r"layers\[0\]: a conv layer takes no stride",
        ),
        (
            [
                {"type": "conv", "out_channels": 4},
                {"type": "norm", "name": "group"},
                {"type": "conv", "out_channels": 6},
            ],
            r"layers\[1\]: 'num_groups'",
        ),  # fmt: skip
        ([{"type": "dropout", "p": 1.0}, HEAD], r"layers\[0\].p must be a probability"),
    ],
)
def test_bad_layer_lists_are_refused_naming_the_layer(layers, message):
    with pytest.raises(ModelSpecError, match=message):
        sequential_spec(layers).build()


@pytest.fixture(scope="module")
def dataset(tiny_track):
    return tiny_track[0]


def _track(tmp_path, dataset, layers, roi) -> LoadedTrack:
    spec = sequential_spec(layers, roi)
    torch.manual_seed(0)
    model_dir = save_reference_model(spec.build(), spec, tmp_path / f"model_{roi}")
    return LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset))


def test_a_receptive_field_beyond_the_roi_is_a_warning_in_the_result(tmp_path, dataset):
    schema = json.loads(SCHEMA_PATH.read_text())
    wide = _track(tmp_path, dataset, dilated_layers([1, 4, 8]), roi=16)  # field 27 > roi 16
    result = evaluate_submission(wide, Submission("fp32")).result
    jsonschema.validate(result, schema)
    assert len(result["warnings"]) == 1
    assert (
        "only 0.0% of each sliding-window patch (roi [16, 16, 16]) has the network's whole "
        "receptive field [27, 27, 27] inside the patch" in result["warnings"][0]
    )
    quantized = evaluate_submission(wide, Submission("scheme", scheme="w8a8-per-channel")).result
    assert quantized["warnings"] == result["warnings"]

    narrow = _track(tmp_path, dataset, dilated_layers([1, 2]), roi=16)  # field 7: 24% of 16³
    result = evaluate_submission(narrow, Submission("fp32")).result
    jsonschema.validate(result, schema)
    assert "warnings" not in result


def test_the_same_network_at_a_roi_that_fits_gets_no_context_warning():
    layers = dilated_layers([1, 4, 8])  # field 27
    assert sequential_spec(layers, roi=16).warnings()
    assert full_context_fraction((27,) * 3, (64,) * 3) >= MIN_FULL_CONTEXT_FRACTION
    assert sequential_spec(layers, roi=64).warnings() == []


def _smoothing_track(tmp_path, dataset, roi) -> LoadedTrack:
    """Three bias-free 3x3x3 box filters at dilations 1, 4, 8 (field 27), then class 1 where the
    smoothed intensity exceeds its median over the body, else class 0: a prediction that needs
    the context around each voxel."""
    layers = [{"type": "conv", "out_channels": 1, "kernel_size": 3, "dilation": d, "bias": False}
              for d in (1, 4, 8)] + [HEAD]  # fmt: skip
    spec = sequential_spec(layers, roi, spacing=(4.0, 4.0, 6.0))  # 46 x 46 x 29 voxels
    model = spec.build()
    loaded = load_dataset(dataset)
    case = loaded.split("calibration")[0]
    image = preprocess(read_case(case, loaded.labels), spec.preprocessing)[None].float()
    *smoothing, head = model.layers
    with torch.no_grad():
        for conv in smoothing:
            conv.weight.fill_(1 / 27)
        smoothed = nn.Sequential(*smoothing)(image)
        head.weight.zero_()
        head.weight[1, 0] = 1.0
        head.bias.fill_(-1e3)
        head.bias[:2] = torch.tensor([float(smoothed[smoothed > 0].median()), 0.0])
    model_dir = save_reference_model(model, spec, tmp_path / f"smoothing_{roi}")
    return LoadedTrack.open(TrackSpec(model_dir=model_dir, dataset_dir=dataset))


def test_a_sliding_window_that_disagrees_with_the_whole_volume_is_a_measured_warning(
    tmp_path, dataset
):
    small = _smoothing_track(tmp_path, dataset, roi=16)
    check = small.context_check
    assert check["whole_volume_agreement"] < 0.5 < MIN_WHOLE_VOLUME_AGREEMENT
    assert check["full_context_fraction"] == 0.0
    assert "agrees with the whole-volume prediction at mean DSC" in check["warning"]
    result = evaluate_submission(small, Submission("fp32")).result
    assert check["warning"] in result["warnings"]

    fits = _smoothing_track(tmp_path, dataset, roi=64)  # one patch holds the volume
    assert fits.context_check["whole_volume_agreement"] >= MIN_WHOLE_VOLUME_AGREEMENT
    assert fits.context_check["warning"] is None
    result = evaluate_submission(fits, Submission("fp32")).result
    assert "warnings" not in result


def _save_with_keys(model, spec, folder, prefix: str):
    """A reference folder whose weights file names the layers ``<prefix>N.*`` (as a checkpoint
    from another codebase does)."""
    save_reference_model(model, spec, folder)
    state = {prefix + k.removeprefix("layers."): v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder


def test_a_weights_file_with_model_n_keys_loads_through_a_key_map(tmp_path):
    spec = sequential_spec(dilated_layers([1, 2]))
    torch.manual_seed(0)
    model = spec.build().eval()
    folder = _save_with_keys(model, spec, tmp_path / "renamed", "model.")
    with pytest.raises(ModelSpecError, match=r"8 of the file's keys are not layers.<i> keys "
                       r"\(first 'model.0.bias'\): a weights_key_map in model.json"):  # fmt: skip
        load_reference_model(folder)
    data = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(
        json.dumps(data | {"weights_key_map": {"model.": "layers."}})
    )
    spec_read, loaded = load_reference_model(folder)
    assert spec_read.weights_key_map == {"model.": "layers."}
    assert spec_read.to_dict()["weights_key_map"] == {"model.": "layers."}
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_layer_list_without_its_activations_is_refused_naming_the_layer(tmp_path):
    full = [{"type": "conv", "out_channels": 4, "kernel_size": 3},
            {"type": "activation", "name": "elu"},
            {"type": "conv", "out_channels": 4, "kernel_size": 3},
            {"type": "activation", "name": "elu"}, HEAD]  # fmt: skip
    spec = sequential_spec(full)
    folder = save_reference_model(spec.build(), spec, tmp_path / "full")
    data = json.loads((folder / "model.json").read_text())
    data["kwargs"]["layers"] = [layer for layer in full if layer["type"] != "activation"]
    (folder / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelSpecError) as refusal:
        load_reference_model(folder)
    message = str(refusal.value)
    assert "the file's layers.4.bias/weight is beyond the list's 3 entries" in message
    assert "the file's layers.2.bias/weight has another shape than layers[2] (conv)" in message
    assert "layers[1] (conv) has no bias/weight in the file" in message
    assert "an activation between the convs, say) may be missing from the list" in message
    assert "out_channels" not in message and len(message) < 1000  # no dump of the kwargs


def test_a_layer_list_that_cannot_be_built_is_refused_without_the_kwargs():
    layers = [{"type": "conv", "out_channels": 4, "kernel_size": 2}] * 40 + [HEAD]
    with pytest.raises(ModelSpecError) as refusal:
        sequential_spec(layers).build()
    message = str(refusal.value)
    assert message == (
        "cannot build Sequential (kwargs in_channels, layers): layers[0].kernel_size must be odd "
        "(same-size output), got (2, 2, 2)"
    )
