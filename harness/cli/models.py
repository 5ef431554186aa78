"""``harness import-model``: a reference-model folder from an nnU-Net v2 trained-model folder, a
MONAI bundle or an FP32 ONNX graph."""

from __future__ import annotations

import argparse


def cmd_import_model(args: argparse.Namespace) -> None:
    from harness.models.importers import import_model

    spec = import_model(
        args.source, args.out, kind=args.kind, name=args.name,
        configuration=args.configuration, fold=args.fold, checkpoint=args.checkpoint,
    )  # fmt: skip
    roi = "×".join(str(r) for r in spec.sliding_window.roi_size)
    print(
        f"imported {spec.name} ({spec.architecture}, {len(spec.labels)} classes, patch {roi}) "
        f"to {args.out}"
    )
    for warning in spec.warnings():
        print(f"warning: {warning}")


def register(sub, common: argparse.ArgumentParser) -> None:
    from harness.models.importers import SOURCE_KINDS

    p = sub.add_parser(
        "import-model",
        parents=[common],
        help="write a reference-model folder from an nnU-Net v2 folder, a MONAI bundle or an "
        "FP32 ONNX graph",
    )
    p.add_argument(
        "source",
        help="nnU-Net v2 trained-model folder, MONAI bundle folder, or a folder with model.onnx "
        "and reference.json (labels, preprocessing, sliding window)",
    )
    p.add_argument("--out", required=True, help="reference-model folder to write")
    p.add_argument("--kind", choices=SOURCE_KINDS, help="default: detected from the files")
    p.add_argument("--name", help="model name (default: from the source)")
    p.add_argument("--configuration", help="nnU-Net configuration (default: 3d_fullres)")
    p.add_argument("--fold", default="0", help="nnU-Net fold folder fold_<k> (default: 0)")
    p.add_argument("--checkpoint", help="nnU-Net checkpoint file (default: checkpoint_final.pth)")
    p.set_defaults(func=cmd_import_model)
