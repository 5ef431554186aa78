"""API representations of tracks, leaderboard rows and submissions."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from leaderboard.submissions.intake import UPLOAD_KINDS
from leaderboard.submissions.models import Submission
from leaderboard.submissions.queueing import queue_state
from leaderboard.tracks.models import Track


class TrackSerializer(serializers.ModelSerializer):
    dataset = serializers.CharField(source="dataset.slug")
    model = serializers.CharField(source="reference_model.slug")
    architecture = serializers.CharField(source="reference_model.architecture")
    precision = serializers.CharField(source="precision_label")
    is_open = serializers.BooleanField()

    class Meta:
        model = Track
        fields = [
            "slug", "title", "dataset", "model", "architecture", "backend", "precision",
            "weight_bits", "activation_bits", "granularities", "ranking_metric", "ranking_rule",
            "tie_breakers", "platform_ptq_only", "calibration_resamples",
            "accuracy_gate", "daily_quota", "nsd_tolerance_mm", "nsd_definition",
            "quantizer_timeout_s", "opens_at", "closes_at", "is_open", "label_map",
        ]  # fmt: skip


class LeaderboardRowSerializer(serializers.Serializer):
    """One ranked entry (flat, so that it is also a CSV row); the FP32 reference row has no
    rank."""

    rank = serializers.IntegerField(allow_null=True)
    submission = serializers.IntegerField(source="submission_id")
    method = serializers.CharField(source="submission.method")
    entrant = serializers.CharField(source="submission.entrant")
    baseline = serializers.BooleanField(source="submission.is_baseline")
    mean_dsc = serializers.FloatField()
    mean_nsd = serializers.FloatField()
    mean_hd95 = serializers.FloatField(allow_null=True, help_text="mm, lower is better")
    calibration_sd = serializers.FloatField(
        allow_null=True, help_text="± calibration: sd of mean DSC over resampled calibration sets"
    )
    dsc_drop_pct = serializers.FloatField()
    dsc_ci_low = serializers.FloatField()
    dsc_ci_high = serializers.FloatField()
    gate_passed = serializers.BooleanField()
    weight_bits = serializers.IntegerField()
    activation_bits = serializers.IntegerField(allow_null=True)
    granularity = serializers.CharField()
    bits_per_weight = serializers.FloatField(allow_null=True)
    size_mb = serializers.FloatField(allow_null=True)
    x_smaller = serializers.FloatField(allow_null=True)
    latency_ms = serializers.FloatField(
        allow_null=True,
        help_text="ms per volume from the paired FP32/entry protocol; null on the simulator",
    )
    fp32_latency_ms = serializers.FloatField(
        allow_null=True,
        help_text="FP32 ms per volume of the same pairs (x_faster = this / latency)",
    )
    x_faster = serializers.FloatField(allow_null=True)
    x_faster_ci_low = serializers.FloatField(allow_null=True)
    x_faster_ci_high = serializers.FloatField(allow_null=True)
    same_as = serializers.IntegerField(
        allow_null=True, help_text="rank of the earlier entry with the same verified weights"
    )
    submitted_at = serializers.DateTimeField(source="submission.created_at")
    provenance = serializers.CharField(
        source="submission.provenance",
        help_text="PTQ verified by construction (quantized by the platform) or checked by reach",
    )
    rank_low = serializers.SerializerMethodField(help_text="95% bootstrap rank interval, low")
    rank_high = serializers.SerializerMethodField(help_text="95% bootstrap rank interval, high")
    p_best = serializers.SerializerMethodField(help_text="share of bootstrap resamples ranked 1")
    tied_within_noise = serializers.SerializerMethodField(
        help_text="its rank interval reaches the leader's"
    )

    @staticmethod
    def _uncertainty(row) -> dict:
        return getattr(row, "uncertainty", None) or {}

    def get_rank_low(self, row) -> int | None:
        return self._uncertainty(row).get("interval", (None, None))[0]

    def get_rank_high(self, row) -> int | None:
        return self._uncertainty(row).get("interval", (None, None))[1]

    def get_p_best(self, row) -> float | None:
        return self._uncertainty(row).get("p_best")

    def get_tied_within_noise(self, row) -> bool | None:
        return self._uncertainty(row).get("tied")


class QueueStateSerializer(serializers.Serializer):
    """``queueing.QueueState``: a pending submission's standing."""

    position = serializers.IntegerField(
        allow_null=True, help_text="1 = evaluated next; null once a worker holds it"
    )
    in_flight = serializers.IntegerField(help_text="submissions of its queue being evaluated now")
    stage = serializers.CharField(help_text="the step its worker reports ('' before one)")
    done = serializers.IntegerField(help_text="steps of that stage finished")
    total = serializers.IntegerField(help_text="steps of that stage (0: unknown)")
    typical_s = serializers.FloatField(
        allow_null=True, help_text="median evaluation seconds of the track's recent ones"
    )
    estimate_s = serializers.FloatField(
        allow_null=True, help_text="seconds until done, estimated for one worker"
    )
    lines = serializers.ListField(child=serializers.CharField(), help_text="the same, in words")


class SubmissionSerializer(serializers.ModelSerializer):
    track = serializers.CharField(source="track.slug")
    entrant = serializers.CharField()
    mean_dsc = serializers.FloatField(source="evaluation.mean_dsc", default=None)
    mean_nsd = serializers.FloatField(source="evaluation.mean_nsd", default=None)
    gate_passed = serializers.BooleanField(source="evaluation.gate_passed", default=None)
    queue = serializers.SerializerMethodField()

    class Meta:
        model = Submission
        fields = [
            "id", "track", "kind", "method", "entrant", "is_baseline", "status", "queue", "error",
            "created_at", "validating_at", "running_at", "scoring_at", "finished_at",
            "mean_dsc", "mean_nsd", "gate_passed", "disqualified", "public_reason",
            "image_reference", "image_digest", "description", "hyperparameters",
            "calibration_cases", "paper_url", "code_url",
        ]  # fmt: skip

    @extend_schema_field(QueueStateSerializer(allow_null=True))
    def get_queue(self, submission: Submission) -> dict | None:
        """Where a pending submission stands (None once it has finished)."""
        state = queue_state(submission)
        return state.as_dict() if state else None


class SubmitSerializer(serializers.Serializer):
    """One multipart call: the track, what is submitted, and the artifact file(s)."""

    track = serializers.SlugRelatedField(slug_field="slug", queryset=Track.objects.all())
    kind = serializers.ChoiceField(choices=[k.value for k in UPLOAD_KINDS], default="checkpoint")
    method = serializers.CharField(
        max_length=80, help_text="a reference method's name (see the submit form) or your own"
    )
    description = serializers.CharField(required=False, allow_blank=True, default="")
    hyperparameters = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="JSON object of the settings"
    )
    calibration_cases = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=0,
        help_text="number of calibration cases the method used",
    )  # fmt: skip
    paper_url = serializers.URLField(required=False, allow_blank=True, default="")
    code_url = serializers.URLField(required=False, allow_blank=True, default="")
    artifact = serializers.FileField(
        required=False, help_text="checkpoint .zip, .onnx, or container image .tar (docker save)"
    )
    manifest = serializers.FileField(required=False, help_text="manifest.json (with weights)")
    weights = serializers.FileField(required=False, help_text="weights.safetensors")
    image = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        max_length=300,
        help_text="container: registry reference instead of a .tar (where a registry is set up)",
    )


def paginated(item: type[serializers.Serializer], name: str, **extra) -> type:
    """The schema of a paginated list of ``item`` (``count``, ``next``, ``previous``,
    ``results``) as ``PageNumberPagination`` returns it, plus ``extra`` fields."""
    fields = {
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": item(many=True),
        **extra,
    }
    return type(name, (serializers.Serializer,), fields)


PaginatedTracks = paginated(TrackSerializer, "PaginatedTracks")
PaginatedSubmissions = paginated(SubmissionSerializer, "PaginatedSubmissions")
PaginatedLeaderboard = paginated(
    LeaderboardRowSerializer,
    "PaginatedLeaderboard",
    reference=LeaderboardRowSerializer(allow_null=True, help_text="the unranked FP32 row"),
)


class ErrorDetailSerializer(serializers.Serializer):
    status = serializers.IntegerField()
    code = serializers.CharField()
    message = serializers.CharField()
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                   required=False)  # fmt: skip


class ErrorSerializer(serializers.Serializer):
    """The one error body of every API failure (``leaderboard.api.errors``)."""

    error = ErrorDetailSerializer()
