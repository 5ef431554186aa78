"""Submissions (what a participant uploads, and its stage-by-stage status) and Evaluations (the
harness result document plus indexed summary columns that the leaderboard ranks)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from leaderboard.accounts.models import Team
from leaderboard.tracks.models import Track


def artifact_path(submission: Submission, filename: str) -> str:
    return f"submissions/{submission.uuid}/{filename}"


class Status(models.TextChoices):
    QUEUED = "queued"
    VALIDATING = "validating"
    RUNNING = "running"
    SCORING = "scoring"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


PENDING = (Status.QUEUED, Status.VALIDATING, Status.RUNNING, Status.SCORING)
IN_FLIGHT = (Status.VALIDATING, Status.RUNNING, Status.SCORING)
"""Pending and held by a worker."""
FINISHED = (Status.DONE, Status.FAILED, Status.REJECTED, Status.CANCELLED)
STAGE_TIMESTAMPS = {
    Status.VALIDATING: "validating_at",
    Status.RUNNING: "running_at",
    Status.SCORING: "scoring_at",
    Status.DONE: "finished_at",
    Status.FAILED: "finished_at",
    Status.REJECTED: "finished_at",
    Status.CANCELLED: "finished_at",
}


class Kind(models.TextChoices):
    CHECKPOINT = "checkpoint", "quantized checkpoint (manifest.json + weights.safetensors)"
    ONNX = "onnx", "ONNX model with Q/DQ nodes"
    CONTAINER = "container", "quantizer container image"
    SCHEME = "scheme", "reference scheme (baselines only)"
    FP32 = "fp32", "FP32 reference (shown on every board, not ranked)"


class SubmissionQuerySet(models.QuerySet):
    def counted_for_quota(self, user, track: Track, now=None) -> SubmissionQuerySet:
        """The user's submissions to ``track`` in the last 24 h that count against the quota:
        failed (our fault) and cancelled runs do not."""
        since = (now or timezone.now()) - timedelta(days=1)
        return self.filter(user=user, track=track, created_at__gte=since).exclude(
            status__in=[Status.FAILED, Status.CANCELLED]
        )


class Submission(models.Model):
    """One entry to one track; ``status`` moves queued → validating → running → scoring → done,
    or ends failed (infrastructure) / rejected (the artifact is at fault) / cancelled."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    track = models.ForeignKey(Track, on_delete=models.PROTECT, related_name="submissions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="submissions",
    )
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True)
    kind = models.CharField(max_length=12, choices=Kind)
    artifact = models.FileField(upload_to=artifact_path, blank=True, max_length=300)
    artifact_sha256 = models.CharField(max_length=64, blank=True)
    image_reference = models.CharField(
        max_length=300, blank=True, help_text="registry reference of a quantizer container"
    )
    image_digest = models.CharField(
        max_length=80, blank=True, help_text="digest the quantizer container was pinned to and run"
    )
    scheme = models.CharField(max_length=40, blank=True, help_text="reference scheme (baselines)")
    reference_method = models.CharField(
        max_length=40,
        blank=True,
        help_text="a baseline's reference PTQ method (a name in the method registry)",
    )
    method = models.CharField(max_length=80)
    description = models.TextField(blank=True)
    paper_url = models.URLField(blank=True)
    code_url = models.URLField(blank=True)
    hyperparameters = models.JSONField(
        default=dict, blank=True, help_text="the method's settings, as the submitter states them"
    )
    calibration_cases = models.PositiveIntegerField(
        null=True, blank=True, help_text="calibration cases the method used; empty = not stated"
    )
    is_baseline = models.BooleanField(default=False)

    status = models.CharField(max_length=12, choices=Status, default=Status.QUEUED, db_index=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    validating_at = models.DateTimeField(null=True, blank=True)
    running_at = models.DateTimeField(null=True, blank=True)
    scoring_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="shown to the submitter")
    log = models.TextField(blank=True, help_text="the submitter's own evaluation log")
    container_log = models.TextField(
        blank=True,
        help_text="the quantizer container's stdout/stderr (size-capped; submitter only)",
    )
    attempts = models.PositiveIntegerField(default=0)
    heartbeat_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="last sign of life: when it was (re-)enqueued, or its worker's latest beat "
        "while evaluating (the reconciler re-enqueues a pending one that went quiet)",
    )

    progress_stage = models.CharField(
        max_length=200, blank=True, help_text="the evaluation step under way (a worker writes it)"
    )
    progress_done = models.PositiveIntegerField(default=0, help_text="steps of it finished")
    progress_total = models.PositiveIntegerField(default=0, help_text="its steps (0: unknown)")

    hidden = models.BooleanField(default=False)
    disqualified = models.BooleanField(default=False)
    public_reason = models.CharField(max_length=300, blank=True)

    objects = SubmissionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.method} on {self.track.slug}"

    @property
    def platform_quantized(self) -> bool:
        """Whether the platform quantized this entry itself (a baseline's reference method or
        tool, or a quantizer container run on the track's calibration data): PTQ verified by
        construction. An uploaded artifact is PTQ checked by reach only."""
        return self.is_baseline or self.kind in (Kind.SCHEME, Kind.CONTAINER)

    @property
    def provenance(self) -> str:
        """The PTQ provenance mark shown beside the entry."""
        if self.platform_quantized:
            return "PTQ verified by construction"
        return "PTQ checked by reach"

    @property
    def is_pending(self) -> bool:
        return self.status in PENDING

    @property
    def entrant(self) -> str:
        """Who the entry belongs to on the board: the team, else the user, else 'baseline'."""
        if self.is_baseline:
            return "baseline"
        if self.team_id:
            return self.team.name
        return self.user.username if self.user_id else "—"

    def stages(self) -> list[tuple[str, object]]:
        """(status, timestamp) of every stage reached so far."""
        stamps = [("queued", self.created_at)]
        for name in ("validating", "running", "scoring"):
            if getattr(self, f"{name}_at"):
                stamps.append((name, getattr(self, f"{name}_at")))
        if self.finished_at:
            stamps.append((self.status, self.finished_at))
        return stamps

    def advance(self, status: Status, **fields) -> None:
        """Set ``status`` with its stage timestamp (caller holds the row lock)."""
        self.status = status
        setattr(self, STAGE_TIMESTAMPS[status], timezone.now())
        for key, value in fields.items():
            setattr(self, key, value)
        self.save()


class Scores(models.Model):
    """The harness result document of one evaluation and the summary columns read from it (what
    the board shows and ranks)."""

    result = models.JSONField()
    mean_dsc = models.FloatField()
    mean_nsd = models.FloatField()
    mean_hd95 = models.FloatField(
        null=True, blank=True, help_text="mean HD95 (mm) over cases; empty on older results"
    )
    dsc_drop_pct = models.FloatField()
    calibration_sd = models.FloatField(
        null=True, blank=True, help_text="± calibration: sd of mean DSC over resampled sets"
    )
    dsc_ci_low = models.FloatField()
    dsc_ci_high = models.FloatField()
    fp32_mean_dsc = models.FloatField()
    gate_passed = models.BooleanField()
    weight_bits = models.PositiveSmallIntegerField(null=True)
    activation_bits = models.PositiveSmallIntegerField(null=True)
    granularity = models.CharField(max_length=60, blank=True)
    size_mb = models.FloatField(null=True, blank=True)
    latency_ms = models.FloatField(
        null=True,
        blank=True,
        help_text="entry latency per volume, paired FP32/entry protocol; empty on the simulator",
    )
    fp32_latency_ms = models.FloatField(
        null=True,
        blank=True,
        help_text="FP32 latency of the same paired protocol (x_faster = this / latency_ms)",
    )
    bits_per_weight = models.FloatField(
        null=True,
        blank=True,
        help_text="effective bits per quantized weight, read from the artifact",
    )
    x_smaller = models.FloatField(
        null=True, blank=True, help_text="FP32 size / entry size on the same backend"
    )
    x_faster = models.FloatField(
        null=True,
        blank=True,
        help_text="fp32_latency_ms / latency_ms: the same paired protocol, one worker",
    )
    x_faster_ci_low = models.FloatField(null=True, blank=True)
    x_faster_ci_high = models.FloatField(null=True, blank=True)
    artifact_digest = models.CharField(
        max_length=64, blank=True, help_text="sha256 of the verified weights (duplicates share it)"
    )
    created_at = models.DateTimeField(default=timezone.now, help_text="when it was evaluated")

    class Meta:
        abstract = True


class Evaluation(Scores):
    """The latest result of one submission (the board ranks it); every result, this one
    included, is also kept as an ``EvaluationVersion``."""

    submission = models.OneToOneField(
        Submission, on_delete=models.CASCADE, related_name="evaluation"
    )
    track = models.ForeignKey(Track, on_delete=models.CASCADE, related_name="evaluations")
    duplicate_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="duplicates",
        help_text="the earlier-ranked entry with the same verified weights",
    )
    rank_all = models.PositiveIntegerField(
        null=True, blank=True, help_text="rank among all entries; empty = not ranked"
    )
    rank_best = models.PositiveIntegerField(
        null=True, blank=True, help_text="rank among each entrant's best entry; empty = not one"
    )
    aggregate_rank = models.FloatField(
        null=True,
        blank=True,
        help_text="rank then aggregate: mean per-case rank among the ranked entries",
    )

    class Meta:
        indexes = [
            models.Index(fields=["track", "rank_all"]),
            models.Index(fields=["track", "rank_best"]),
        ]

    def __str__(self) -> str:
        return f"evaluation of {self.submission}"


class EvaluationVersion(Scores):
    """One evaluation of a submission, kept for good: version 1 is its first result, a
    re-evaluation adds the next (the newest is also the ``Evaluation`` the board ranks). Boards
    as they stood at a date (``ranking.board_as_of``) are ranked from these."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="versions")
    track = models.ForeignKey(Track, on_delete=models.CASCADE, related_name="evaluation_versions")
    version = models.PositiveIntegerField()

    class Meta:
        ordering = ["submission", "version"]
        constraints = [
            models.UniqueConstraint(fields=["submission", "version"], name="one_result_per_version")
        ]
        indexes = [models.Index(fields=["track", "created_at"])]

    def __str__(self) -> str:
        return f"version {self.version} of {self.submission}"


class CaseScore(models.Model):
    """One test case of an upload scored by a chunk task of a fanned-out evaluation
    (``leaderboard.submissions.fan_out``): its ``CaseMetrics`` as JSON, kept until the last
    task assembles the result. ``round`` is the evaluation version it belongs to (a
    re-evaluation scores every case again); one row per case and round, so a retried or
    duplicated chunk stores nothing twice."""

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="case_scores")
    round = models.PositiveIntegerField()
    case_id = models.CharField(max_length=200)
    metrics = models.JSONField()
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["submission", "round", "case_id"], name="one_score_per_case_and_round"
            )
        ]

    def __str__(self) -> str:
        return f"case {self.case_id} of {self.submission} (round {self.round})"
