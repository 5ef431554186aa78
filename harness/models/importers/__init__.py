"""Importers that turn a maintainer's trained model into a reference-model folder
(``model.json`` + ``model.safetensors``, or ``model.onnx`` for a graph) the rest of the harness
uses unchanged:

* ``nnunet``: an nnU-Net v2 trained-model folder (``dataset.json``, ``plans.json``,
  ``fold_<k>/checkpoint_final.pth``);
* ``monai_bundle``: a MONAI bundle (``configs/metadata.json``, ``configs/inference.json``,
  ``models/model.pt``);
* ``onnx_file``: an FP32 ONNX graph (``model.onnx`` + ``reference.json``), for networks no
  registry builds; its folder holds ``model.json`` + ``model.onnx``.

Checkpoints are read with ``torch.load(weights_only=True)`` and an allow-list of types
(``harness.models.importers.torch_files``); nothing in them is executed.

Depends on: ``harness.models``, ``harness.data.preprocessing``,
``harness.inference.sliding_window``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.errors import ModelImportError
from harness.models.interface import ONNX_FILE, SPEC_FILE

if TYPE_CHECKING:  # the package imports torch only when an import runs
    from harness.models.reference import ModelSpec

SourceKind = Literal["nnunet", "monai-bundle", "onnx"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("nnunet", "monai-bundle", "onnx")


def detect_source(folder: str | Path) -> SourceKind:
    """What kind of model source ``folder`` is, from the files that mark it."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".onnx":
        return "onnx"
    if not folder.is_dir():
        raise ModelImportError(f"{folder} is neither a folder nor an .onnx file")
    if (folder / "plans.json").is_file() or (folder / "dataset.json").is_file():
        return "nnunet"
    if (folder / "configs").is_dir():
        return "monai-bundle"
    if (folder / ONNX_FILE).is_file() and not (folder / SPEC_FILE).is_file():
        return "onnx"  # reference.json is checked by the importer, which names what is missing
    raise ModelImportError(
        f"{folder} is neither an nnU-Net v2 trained-model folder (plans.json, dataset.json, "
        "fold_<k>/), a MONAI bundle (configs/metadata.json, configs/inference.json, models/) "
        "nor an FP32 ONNX graph (model.onnx, reference.json)"
    )


def import_model(
    source: str | Path,
    out_dir: str | Path,
    *,
    kind: SourceKind | None = None,
    name: str | None = None,
    configuration: str | None = None,
    fold: str = "0",
    checkpoint: str | None = None,
) -> ModelSpec:
    """Write the reference-model folder ``out_dir`` for the model in ``source`` and return its
    spec; ``kind`` None detects it. ``configuration``, ``fold`` and ``checkpoint`` choose within
    an nnU-Net folder (defaults ``3d_fullres``, ``0``, ``checkpoint_final.pth``); a bundle takes
    only ``name``, and so does an ONNX graph."""
    kind = kind or detect_source(source)
    if kind == "nnunet":
        from harness.models.importers.nnunet import import_nnunet

        return import_nnunet(
            source, out_dir, name=name, configuration=configuration, fold=fold,
            checkpoint=checkpoint,
        )  # fmt: skip
    if kind == "monai-bundle":
        if configuration is not None or checkpoint is not None:
            raise ModelImportError("--configuration and --checkpoint apply to nnU-Net folders")
        from harness.models.importers.monai_bundle import import_monai_bundle

        return import_monai_bundle(source, out_dir, name=name)
    if kind == "onnx":
        if configuration is not None or checkpoint is not None:
            raise ModelImportError("--configuration and --checkpoint apply to nnU-Net folders")
        from harness.models.importers.onnx_file import import_onnx

        return import_onnx(source, out_dir, name=name)
    raise ModelImportError(f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")
