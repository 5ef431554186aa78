from django.contrib import admin, messages

from leaderboard.submissions.curation import reevaluate, refresh_ranks
from leaderboard.submissions.models import Evaluation, Submission


@admin.register(Submission)
class SubmissionAdmin(admin.ModelAdmin):
    list_display = [
        "pk", "track", "method", "user", "team", "kind", "status", "is_baseline", "hidden",
        "disqualified", "created_at",
    ]  # fmt: skip
    list_filter = ["status", "kind", "is_baseline", "hidden", "disqualified", "track"]
    search_fields = ["method", "user__username", "team__name"]
    # State is the worker's: a submission's status, track, owner, artifact, error and baseline
    # flag change only through the actions below, which use the pipeline's transitions.
    readonly_fields = [
        "uuid", "status", "track", "user", "team", "kind", "artifact", "artifact_sha256",
        "image_reference", "image_digest", "error", "is_baseline", "created_at", "validating_at",
        "running_at", "scoring_at", "finished_at", "attempts",
    ]  # fmt: skip
    actions = ["reevaluate_selected", "hide_selected", "unhide_selected"]

    @admin.action(description="Re-evaluate selected submissions")
    def reevaluate_selected(self, request, queryset):
        count = reevaluate(queryset)
        self.message_user(request, f"{count} submission(s) queued again", messages.SUCCESS)

    @admin.action(description="Hide selected from the leaderboard")
    def hide_selected(self, request, queryset):
        queryset.update(hidden=True)
        refresh_ranks(queryset.select_related("track"))

    @admin.action(description="Show selected on the leaderboard again")
    def unhide_selected(self, request, queryset):
        queryset.update(hidden=False, disqualified=False, public_reason="")
        refresh_ranks(queryset.select_related("track"))

    def has_add_permission(self, request) -> bool:
        """Submissions come through the submit form, the API or ``run_baselines``, never the
        admin (which could not run intake's checks)."""
        return False

    def save_model(self, request, obj, form, change):
        """Disqualifying or hiding in the form re-ranks the track."""
        super().save_model(request, obj, form, change)
        refresh_ranks([obj])


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ["submission", "track", "mean_dsc", "mean_nsd", "gate_passed", "created_at"]
    list_filter = ["track", "gate_passed", "granularity"]
