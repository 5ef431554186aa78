from django.core.management.base import BaseCommand, CommandError

from harness.entry.baseline import baseline_methods
from leaderboard.tracks.models import Track
from leaderboard.tracks.seeding import queue_track_rows


class Command(BaseCommand):
    help = "Queue the reference baselines of some (default: all) tracks for the workers."

    def add_arguments(self, parser):
        parser.add_argument("tracks", nargs="*", help="track slugs")
        parser.add_argument("--force", action="store_true", help="replace existing baselines")
        parser.add_argument(
            "--methods", default="", help="comma-separated reference methods (default: all)"
        )

    def handle(self, *args, tracks, force, methods, **options):
        selected = Track.objects.filter(slug__in=tracks) if tracks else Track.objects.all()
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = sorted(set(chosen) - set(baseline_methods()))
        if unknown:
            raise CommandError(
                f"unknown method(s) {', '.join(unknown)}; known: {', '.join(baseline_methods())}"
            )
        for track in selected:
            queued = queue_track_rows(track, force=force, methods=chosen)
            self.stdout.write(f"{track.slug}: {len(queued)} baseline(s) queued")
