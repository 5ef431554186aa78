from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from harness.backends import backend_names
from harness.errors import HarnessError
from leaderboard.tracks.models import Dataset
from leaderboard.tracks.seeding import create_track, export_onnx, import_model


class Command(BaseCommand):
    help = "Create a track: a reference model folder on a registered dataset at a precision."

    def add_arguments(self, parser):
        parser.add_argument("--dataset", required=True, help="dataset slug")
        parser.add_argument("--model", required=True, help="reference model folder")
        parser.add_argument("--wbits", type=int, required=True)
        parser.add_argument("--abits", type=int, help="omit for weight-only")
        parser.add_argument("--backend", default="simulated", choices=backend_names())
        parser.add_argument("--quota", type=int, default=5, help="submissions per user per day")
        parser.add_argument("--hidden", action="store_true")

    def handle(self, *args, dataset, model, wbits, abits, backend, quota, hidden, **options):
        try:
            reference = import_model(Path(model))
            export_onnx(reference)
            track = create_track(
                Dataset.objects.get(slug=dataset),
                reference,
                weight_bits=wbits,
                activation_bits=abits,
                backend=backend,
                daily_quota=quota,
                is_public=not hidden,
            )
        except (Dataset.DoesNotExist, HarnessError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"track {track.slug}")
