import argparse
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from harness.backends import backend_names
from harness.errors import HarnessError
from leaderboard.tracks.models import Dataset, ReferenceModel
from leaderboard.tracks.seeding import create_track, export_onnx, import_model


class Command(BaseCommand):
    help = "Create a track: a reference model folder on a registered dataset at a precision."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", required=True, help="dataset slug")
        parser.add_argument(
            "--model",
            required=True,
            help="reference model folder, or the slug it was imported under (import_model)",
        )
        parser.add_argument("--wbits", type=int, required=True)
        parser.add_argument("--abits", type=int, help="omit for weight-only")
        parser.add_argument("--backend", default="simulated", choices=backend_names())
        parser.add_argument("--quota", type=int, default=5, help="submissions per user per day")
        parser.add_argument("--hidden", action="store_true")
        parser.add_argument(
            "--label-map",
            type=_label_map,
            default={},
            help="MODEL=DATASET[,MODEL=DATASET...]: which dataset label each model label scores "
            "as, by name, when the two name their organs differently (model labels not named "
            "score as the dataset label of the same name, else as background)",
        )

    def handle(
        self, *args, dataset, model, wbits, abits, backend, quota, hidden, label_map, **options
    ):
        try:
            reference = _reference_model(model)
            export_onnx(reference)
            track = create_track(
                Dataset.objects.get(slug=dataset),
                reference,
                weight_bits=wbits,
                activation_bits=abits,
                backend=backend,
                daily_quota=quota,
                is_public=not hidden,
                label_map=label_map,
            )
        except (Dataset.DoesNotExist, HarnessError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"track {track.slug}")


def _reference_model(model: str) -> ReferenceModel:
    """The model registered under the slug ``model``, else the folder ``model`` registered."""
    if not Path(model).is_dir():
        found = ReferenceModel.objects.filter(slug=model).first()
        if found is not None:
            return found
    return import_model(Path(model))


def _label_map(text: str) -> dict[str, str]:
    """``liver=Liver,spleen=Spleen`` → {"liver": "Liver", "spleen": "Spleen"}."""
    pairs = [part.split("=") for part in text.split(",") if part.strip()]
    if not pairs or any(len(pair) != 2 or not all(n.strip() for n in pair) for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected MODEL=DATASET[,MODEL=DATASET...], got {text!r}")
    return {model.strip(): dataset.strip() for model, dataset in pairs}
