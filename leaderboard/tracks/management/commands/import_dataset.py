from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from harness.errors import HarnessError
from leaderboard.tracks.seeding import import_dataset


class Command(BaseCommand):
    help = "Register a dataset folder (MSD or nnU-Net v2 layout with splits.json)."

    def add_arguments(self, parser):
        parser.add_argument("root")
        parser.add_argument("--slug")
        parser.add_argument("--description", default="")

    def handle(self, *args, root, slug, description, **options):
        try:
            dataset = import_dataset(Path(root), slug, description)
        except HarnessError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"dataset {dataset.slug}: {dataset.root}")
