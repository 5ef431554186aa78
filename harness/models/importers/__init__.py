"""Importers that turn a maintainer's trained model into a reference-model folder
(``model.json`` + ``model.safetensors``) the rest of the harness uses unchanged:

* ``nnunet``: an nnU-Net v2 trained-model folder (``dataset.json``, ``plans.json``,
  ``fold_<k>/checkpoint_final.pth``);
* ``monai_bundle``: a MONAI bundle (``configs/metadata.json``, ``configs/inference.json``,
  ``models/model.pt``).

Checkpoints are read with ``torch.load(weights_only=True)`` and an allow-list of types
(``harness.models.importers.torch_files``); nothing in them is executed.

Depends on: ``harness.models``, ``harness.data.preprocessing``,
``harness.inference.sliding_window``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.errors import ModelImportError

if TYPE_CHECKING:  # the package imports torch only when an import runs
    from harness.models.reference import ModelSpec

SourceKind = Literal["nnunet", "monai-bundle"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("nnunet", "monai-bundle")


def detect_source(folder: str | Path) -> SourceKind:
    """What kind of model folder ``folder`` is, from the files that mark it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelImportError(f"{folder} is not a folder")
    if (folder / "plans.json").is_file() or (folder / "dataset.json").is_file():
        return "nnunet"
    if (folder / "configs").is_dir():
        return "monai-bundle"
    raise ModelImportError(
        f"{folder} is neither an nnU-Net v2 trained-model folder (plans.json, dataset.json, "
        "fold_<k>/) nor a MONAI bundle (configs/metadata.json, configs/inference.json, models/)"
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
    only ``name``."""
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
    raise ModelImportError(f"unknown source kind {kind!r} (known: {', '.join(SOURCE_KINDS)})")
