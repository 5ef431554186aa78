from django.core.management.base import BaseCommand

from leaderboard.tracks.models import Track
from leaderboard.tracks.seeding import queue_track_rows


class Command(BaseCommand):
    help = "Queue the reference baselines of some (default: all) tracks for the workers."

    def add_arguments(self, parser):
        parser.add_argument("tracks", nargs="*", help="track slugs")
        parser.add_argument("--force", action="store_true", help="replace existing baselines")

    def handle(self, *args, tracks, force, **options):
        selected = Track.objects.filter(slug__in=tracks) if tracks else Track.objects.all()
        for track in selected:
            queued = queue_track_rows(track, force=force)
            self.stdout.write(f"{track.slug}: {len(queued)} baseline(s) queued")
