from django.contrib import admin, messages

from leaderboard.submissions.curation import reevaluate
from leaderboard.tracks import ranking
from leaderboard.tracks.models import Dataset, ReferenceModel, Track


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "root"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(ReferenceModel)
class ReferenceModelAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "architecture", "family", "directory"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Track)
class TrackAdmin(admin.ModelAdmin):
    list_display = [
        "title", "dataset", "reference_model", "backend", "weight_bits", "activation_bits",
        "is_public", "opens_at", "closes_at",
    ]  # fmt: skip
    list_filter = ["backend", "is_public", "dataset", "reference_model"]
    prepopulated_fields = {"slug": ["title"]}
    actions = ["reevaluate_track"]

    def save_model(self, request, obj, form, change):
        """A changed ranking rule re-ranks the track."""
        super().save_model(request, obj, form, change)
        ranking.refresh(obj)

    @admin.action(description="Re-evaluate every submission of the selected tracks")
    def reevaluate_track(self, request, queryset):
        count = sum(reevaluate(track.submissions.all()) for track in queryset)
        self.message_user(request, f"{count} submission(s) queued again", messages.SUCCESS)
