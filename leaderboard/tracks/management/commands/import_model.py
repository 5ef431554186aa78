from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from harness.errors import HarnessError
from harness.models.importers import SOURCE_KINDS
from leaderboard.tracks.seeding import import_model_source


class Command(BaseCommand):
    help = (
        "Import an nnU-Net v2 trained-model folder, a MONAI bundle or an FP32 ONNX graph "
        "(model.onnx + reference.json) as a reference model (the harness's `import-model`) into "
        "MEDQUANT_VAR_DIR/models/<slug> and register it; then `create_track --model <slug>`."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "source",
            help="nnU-Net v2 folder, MONAI bundle folder, or a folder with model.onnx and "
            "reference.json",
        )
        parser.add_argument("--slug", help="default: from the model's name")
        parser.add_argument("--name", help="default: from the source")
        parser.add_argument("--kind", choices=SOURCE_KINDS, help="default: detected")
        parser.add_argument("--configuration", help="nnU-Net configuration (default 3d_fullres)")
        parser.add_argument("--fold", default="0", help="nnU-Net fold (default 0)")
        parser.add_argument("--checkpoint", help="nnU-Net checkpoint (checkpoint_final.pth)")
        parser.add_argument("--out", help="reference folder (default MEDQUANT_VAR_DIR/models/…)")

    def handle(self, *args, source, slug, out, **options):
        source = Path(source)
        slug = slug or slugify(options["name"] or source.name)
        out_dir = Path(out) if out else settings.VAR_DIR / "models" / slug
        importer = {k: options[k] for k in ("name", "kind", "configuration", "fold", "checkpoint")}
        try:
            model = import_model_source(source, out_dir, slug=slug, **importer)
        except HarnessError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"model {model.slug} ({model.architecture}) in {model.directory}")
