"""Importing an nnU-Net v2 trained-model folder: the imported reference model predicts what the
same network built directly with dynamic-network-architectures predicts on the same input, and
every malformed folder gets a specific error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from monai.inferers import SlidingWindowInferer
from torch import nn

from harness.cli import main as harness_main
from harness.data.dataset import load_dataset
from harness.data.preprocessing import PreprocessSpec, preprocess, read_case
from harness.errors import ModelImportError
from harness.inference.sliding_window import predict_logits
from harness.models.importers import import_model
from harness.models.importers.torch_files import load_checkpoint
from harness.models.reference import load_reference_model

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidneys": 3, "aorta": 4, "vertebra": 5}
# Network-order settings (after the reader's axis order and transpose_forward), deliberately
# anisotropic so that a wrong axis permutation changes the logits.
PATCH = [8, 24, 16]
SPACING = [16.0, 9.0, 12.0]
KERNELS = [[1, 3, 3], [3, 3, 1], [3, 3, 3]]
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 1]]
FG_STATS = {"mean": 80.0, "std": 120.0, "percentile_00_5": -150.0, "percentile_99_5": 450.0}


def arch_kwargs() -> dict:
    return {
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": KERNELS,
        "strides": STRIDES,
        "n_conv_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def direct_network() -> nn.Module:
    """The network as nnU-Net builds it from these plans (deep supervision off)."""
    kwargs = arch_kwargs() | {
        "conv_op": nn.Conv3d,
        "norm_op": nn.InstanceNorm3d,
        "nonlin": nn.LeakyReLU,
    }
    return PlainConvUNet(
        input_channels=1, num_classes=len(LABELS), deep_supervision=False, **kwargs
    )


def write_folder(root: Path, *, reader: str = "SimpleITKIO", transpose=(1, 0, 2)) -> Path:
    """An nnU-Net v2 trained-model folder with random weights (and a training log holding numpy
    scalars, as nnU-Net's does)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": LABELS,
                "numTraining": 4,
                "file_ending": ".nii.gz",
            }
        )  # fmt: skip
    )
    plans = {
        "dataset_name": "Dataset042_Phantom",
        "plans_name": "nnUNetPlans",
        "image_reader_writer": reader,
        "transpose_forward": list(transpose),
        "transpose_backward": [list(transpose).index(i) for i in range(3)],
        "configurations": {
            "3d_fullres": {
                "patch_size": PATCH,
                "spacing": SPACING,
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": arch_kwargs(),
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
            },
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "foreground_intensity_properties_per_channel": {"0": FG_STATS},
    }
    (root / "plans.json").write_text(json.dumps(plans))
    torch.manual_seed(3)
    network = direct_network()
    for module in network.modules():  # non-trivial norm parameters
        if isinstance(module, nn.InstanceNorm3d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    (root / "fold_0").mkdir(exist_ok=True)
    torch.save(
        {
            "network_weights": network.state_dict(),
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.99}]},
            "logging": {"mean_fg_dice": [np.float64(0.5)], "train_losses": [np.float32(-0.3)]},
            "current_epoch": 1,
            "init_args": {"configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        root / "fold_0" / "checkpoint_final.pth",
    )
    return root


def network_axes(reader: str, transpose) -> tuple[int, ...]:
    base = (2, 1, 0) if reader == "SimpleITKIO" else (0, 1, 2)
    return tuple(base[t] for t in transpose)


@pytest.fixture(scope="module")
def case(tiny_track):
    dataset = load_dataset(tiny_track[0])
    return read_case(dataset.split("test")[0], dataset.labels)


@pytest.mark.parametrize(
    ("reader", "transpose"),
    [("SimpleITKIO", (1, 0, 2)), ("NibabelIO", (0, 1, 2)), ("NibabelIOWithReorient", (2, 0, 1))],
)
def test_imported_nnunet_predicts_what_the_network_built_directly_predicts(
    tmp_path, case, reader, transpose
):
    folder = write_folder(tmp_path / "nnunet", reader=reader, transpose=transpose)
    spec = import_model(folder, tmp_path / "model")
    assert spec.architecture == "nnUNet" and spec.family == "cnn"
    assert spec.labels == {v: k for k, v in LABELS.items()}
    assert spec.source["checkpoint"] == "checkpoint_final.pth"
    assert spec.source["trainer"] == "nnUNetTrainer"

    spec, imported = load_reference_model(tmp_path / "model")
    image = preprocess(case, spec.preprocessing)
    harness_logits = predict_logits(imported, image, spec.sliding_window)

    q = network_axes(reader, transpose)
    p = tuple(q.index(a) for a in range(3))
    direct = direct_network()
    state = load_checkpoint(folder / "fold_0/checkpoint_final.pth")
    direct.load_state_dict(state["network_weights"])
    direct.eval()
    network_input = image.as_tensor().permute(0, *(1 + a for a in q))[None]
    inferer = SlidingWindowInferer(PATCH, sw_batch_size=2, overlap=0.5, mode="gaussian")
    with torch.no_grad():
        direct_logits = inferer(network_input, direct)[0]
    direct_logits = direct_logits.permute(0, *(1 + a for a in p))
    assert direct_logits.shape == harness_logits.shape
    assert torch.max(torch.abs(direct_logits - harness_logits)).item() <= 1e-4
    assert torch.std(harness_logits).item() > 1e-3  # the comparison is of real signal


def test_ct_normalisation_is_nnunets_clip_mean_std(tmp_path, case):
    spec = import_model(write_folder(tmp_path / "nnunet"), tmp_path / "model")
    pre = spec.preprocessing
    assert pre.orientation is None  # SimpleITKIO keeps the stored axes
    q = network_axes("SimpleITKIO", (1, 0, 2))
    assert tuple(pre.spacing) == tuple(SPACING[q.index(a)] for a in range(3))
    resampled = preprocess(
        case, PreprocessSpec(orientation=None, spacing=pre.spacing, normalisation="none")
    ).numpy()
    expected = (
        np.clip(resampled, FG_STATS["percentile_00_5"], FG_STATS["percentile_99_5"])
        - FG_STATS["mean"]
    ) / FG_STATS["std"]
    np.testing.assert_allclose(preprocess(case, pre).numpy(), expected, atol=1e-5)


def test_harness_import_model_command_writes_a_reference_folder(tmp_path, capsys):
    folder = write_folder(tmp_path / "nnunet")
    code = harness_main(
        ["import-model", str(folder), "--out", str(tmp_path / "m"), "--name", "phantom nnunet"]
    )
    assert code == 0, capsys.readouterr().err
    spec, _ = load_reference_model(tmp_path / "m")
    assert spec.name == "phantom nnunet"
    assert "phantom nnunet" in capsys.readouterr().out


def _edit(folder: Path, name: str, change) -> None:
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))


def _set_arch(key, value):
    def change(plans):
        plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][key] = value

    return change


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda f: (f / "plans.json").unlink(), "missing plans.json"),
        (lambda f: (f / "fold_0/checkpoint_final.pth").unlink(), "missing checkpoint"),
        (lambda f: (f / "dataset.json").write_text("{"), "dataset.json is not valid JSON"),
        (
            lambda f: _edit(f, "plans.json", _set_arch("features_per_stage", [4, 8, 32])),
            "checkpoint_final.pth does not fit the network: 1",
        ),
        (
            lambda f: _edit(f, "plans.json", _set_arch("nonlin", "os.system")),
            "'os.system' is not an allow-listed layer class",
        ),
        (
            lambda f: _edit(f, "dataset.json", lambda d: d["labels"].update({"tumour": [1, 2]})),
            "region-based nnU-Net models are not supported",
        ),
        (
            lambda f: _edit(f, "plans.json", lambda p: p.update(image_reader_writer="Tiff3DIO")),
            "image_reader_writer 'Tiff3DIO' is not supported",
        ),
    ],
)
def test_a_broken_nnunet_folder_gets_a_specific_error(tmp_path, breakage, message):
    folder = write_folder(tmp_path / "nnunet")
    breakage(folder)
    with pytest.raises(ModelImportError, match=message.replace("(", r"\(")):
        import_model(folder, tmp_path / "model", kind="nnunet")
    assert not (tmp_path / "model" / "model.json").exists()


def test_unknown_configuration_names_the_known_ones(tmp_path):
    folder = write_folder(tmp_path / "nnunet")
    with pytest.raises(ModelImportError, match=r"no configuration '3d_lowres' \(it has: "):
        import_model(folder, tmp_path / "model", configuration="3d_lowres")
    spec = import_model(folder, tmp_path / "model", configuration="3d_cascade_fullres")
    assert spec.source["configuration"] == "3d_cascade_fullres"


def test_a_checkpoint_holding_other_objects_is_refused_without_running_them(tmp_path):
    folder = write_folder(tmp_path / "nnunet")
    path = folder / "fold_0/checkpoint_final.pth"
    data = load_checkpoint(path)
    data["extra"] = Path("/etc/passwd")  # any non-allow-listed global
    torch.save(data, path)
    with pytest.raises(ModelImportError, match="outside the allow-list of types"):
        import_model(folder, tmp_path / "model")


def test_the_demo_nnunet_maker_writes_an_nnunet_folder_the_importer_reads(
    tmp_path, tiny_track, case
):
    from harness.models.demo_nnunet import make
    from harness.models.training import TrainConfig

    folder = make(tiny_track[0], tmp_path / "nnunet", TrainConfig(iterations=2), progress=False)
    checkpoint = load_checkpoint(folder / "fold_0/checkpoint_final.pth")
    assert checkpoint["training"]["iterations"] == 2
    spec = import_model(folder, tmp_path / "model")
    assert spec.source["network_axes"] == [2, 1, 0]  # SimpleITK order: the permutation is real
    _, network = load_reference_model(tmp_path / "model")
    logits = predict_logits(network, preprocess(case, spec.preprocessing), spec.sliding_window)
    assert torch.isfinite(logits).all() and logits.shape[0] == 6


SHIPPED_NNUNET = (
    Path(__file__).resolve().parent.parent / "harness/models/demo_sources/nnunet_phantom"
)
SHIPPED_CLASS_DSC = 0.8
"""Every class of the demo's phantom test split is segmented by the shipped nnU-Net at FP32 (the
800-iteration model it replaces scored the aorta 0.000, so each nnU-Net board lacked a class)."""


@pytest.mark.slow
def test_the_shipped_nnunet_demo_segments_every_class_of_the_phantom_test_split(
    demo_dataset, tmp_path
):
    from harness.track.loaded import LoadedTrack
    from harness.track.spec import TrackSpec

    import_model(SHIPPED_NNUNET, tmp_path / "model")
    track = LoadedTrack.open(TrackSpec(tmp_path / "model", demo_dataset))
    run = track.fp32_run
    per_class = {c: float(np.mean([case.dsc[c] for case in run.cases])) for c in run.cases[0].dsc}
    assert set(per_class) == {1, 2, 3, 4, 5}
    assert min(per_class.values()) >= SHIPPED_CLASS_DSC, per_class
