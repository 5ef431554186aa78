"""Datasets, reference models and tracks (model × dataset × precision × backend + ranking rule)."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from harness.backends import backend_names, get_backend
from harness.data.dataset import load_dataset
from harness.errors import HarnessError
from harness.models.onnx_graph import ONNX_ARCHITECTURE
from harness.models.reference import read_spec
from harness.scoring.rank_analysis import RankingRule
from harness.scoring.splits import PUBLIC, SPLITS
from harness.track.labels import label_lut
from harness.track.spec import DEFAULT_BUDGET_MARGIN_BITS, TrackSpec, graph_backend_refusal

RANKING_METRICS = {
    "mean_dsc": ("mean DSC", True),
    "mean_nsd": ("mean NSD", True),
    "mean_hd95": ("mean HD95 (mm)", False),
    "dsc_drop_pct": ("↓Δ% DSC", False),
    "size_mb": ("size (MB)", False),
    "latency_ms": ("latency (ms/volume)", False),
    "created_at": ("date", False),
}
"""Rankable Evaluation columns → (label, higher is better)."""
CASE_METRICS = {"mean_dsc": "dsc", "mean_nsd": "nsd", "mean_hd95": "hd95"}
"""Ranking columns that are means over test cases → the result document's per-case key."""
RANKING_RULES = [
    (RankingRule.MEAN_THEN_RANK.value, "mean then rank (average over cases, then rank)"),
    (RankingRule.RANK_THEN_AGGREGATE.value, "rank then aggregate (per case; FLARE, MSD)"),
]
DEFAULT_CALIBRATION_RESAMPLES = 3


SPEC_DEFAULTS = {f.name: f.default for f in fields(TrackSpec) if f.default is not MISSING}
"""The harness's defaults of a track, which the model's fields take (one definition)."""


def check_ranking_keys(keys: list[str]) -> None:
    unknown = [k.lstrip("-") for k in keys if k.lstrip("-") not in RANKING_METRICS]
    if unknown:
        raise ValidationError(f"unknown ranking columns {unknown}; use {sorted(RANKING_METRICS)}")


NSD_DEFINITIONS = [
    ("subvoxel", "surfel area on the voxel-corner grid (Nikolov et al. 2018, surface-distance)"),
    ("voxel", "edge-voxel count (MONAI's default)"),
]
"""What a surface is in NSD (``harness.scoring.metrics.NsdDefinition``)."""


def backend_choices() -> list[tuple[str, str]]:
    """The harness's backend registry as field choices (a callable, so that a new backend needs
    no migration)."""
    return [(name, get_backend(name).label) for name in backend_names()]


class Dataset(models.Model):
    """A stored dataset folder (MSD or nnU-Net v2 layout with ``splits.json``).

    Its calibration split is handed to participants unlabeled; its test split never leaves the
    trusted side.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=120)
    root = models.CharField(max_length=500, help_text="folder on the worker and web hosts")
    description = models.TextField(blank=True)

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        return Path(self.root)


class ReferenceModel(models.Model):
    """An FP32 reference network folder: ``model.json`` (architecture spec) +
    ``model.safetensors``, optionally ``model.onnx`` (its ONNX export); or, for an ONNX-graph
    reference (architecture ``ONNX``), ``model.json`` + ``model.onnx`` only."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=120)
    directory = models.CharField(max_length=500)
    architecture = models.CharField(max_length=60)
    family = models.CharField(max_length=30, help_text="cnn or hybrid")

    def __str__(self) -> str:
        return self.name

    @property
    def path(self) -> Path:
        return Path(self.directory)

    def files(self) -> dict[str, Path]:
        """Downloadable files that exist, by name."""
        names = ("model.json", "model.safetensors", "model.onnx")
        return {n: self.path / n for n in names if (self.path / n).is_file()}

    def backend_refusal(self, backend: str) -> str | None:
        """Why a track of this model cannot run on ``backend`` (None: it can, or the backend is
        unknown, which the track's own check reports)."""
        if self.architecture != ONNX_ARCHITECTURE or backend not in backend_names():
            return None
        return graph_backend_refusal(get_backend(backend))


class TrackQuerySet(models.QuerySet):
    def public(self) -> TrackQuerySet:
        return self.filter(is_public=True)


class Track(models.Model):
    """What is ranked: a reference model on a dataset split at a precision on a backend."""

    slug = models.SlugField(
        unique=True, max_length=120, help_text="model-dataset-precision-backend by default"
    )
    title = models.CharField(max_length=160)
    description = models.TextField(blank=True)
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="tracks")
    reference_model = models.ForeignKey(
        ReferenceModel, on_delete=models.PROTECT, related_name="tracks"
    )
    backend = models.CharField(
        max_length=20, choices=backend_choices, default=SPEC_DEFAULTS["backend"]
    )
    weight_bits = models.PositiveSmallIntegerField(help_text="most weight bits allowed")
    activation_bits = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="most activation bits allowed; empty = weight-only"
    )
    granularities = models.JSONField(
        default=list, blank=True, help_text="allowed granularities; empty = any"
    )
    test_split = models.CharField(max_length=40, default=SPEC_DEFAULTS["test_split"])
    calibration_split = models.CharField(max_length=40, default=SPEC_DEFAULTS["calibration_split"])
    nsd_tolerance_mm = models.FloatField(default=SPEC_DEFAULTS["nsd_tolerance_mm"])
    nsd_definition = models.CharField(
        max_length=10,
        choices=NSD_DEFINITIONS,
        default=SPEC_DEFAULTS["nsd_definition"],
        help_text="what a surface is in NSD; subvoxel is the publication's definition",
    )
    seed = models.IntegerField(default=SPEC_DEFAULTS["seed"])
    ranking_metric = models.CharField(max_length=20, default="mean_dsc")
    ranking_rule = models.CharField(
        max_length=20,
        choices=RANKING_RULES,
        default=RankingRule.MEAN_THEN_RANK.value,
        help_text="rank then aggregate: per-case ranks on the per-case keys, averaged",
    )
    tie_breakers = models.JSONField(
        default=list,
        blank=True,
        help_text='tie-breaker columns, e.g. ["-mean_nsd", "size_mb"]',
    )
    max_float_mac_fraction = models.FloatField(
        default=SPEC_DEFAULTS["max_float_mac_fraction"],
        help_text="share of an ONNX file's weighted-op MACs that may keep float weights",
    )
    bits_per_weight_budget = models.FloatField(
        null=True,
        blank=True,
        help_text="most bits per weight an entry may store; empty = weight bits + 0.5",
    )
    division = models.CharField(
        max_length=6,
        choices=[("closed", "closed (post-training only)"), ("open", "open (any weights)")],
        default=SPEC_DEFAULTS["division"],
        help_text="closed: weights within the quantizer's reach of FP32; open: any weights",
    )
    platform_ptq_only = models.BooleanField(
        default=False,
        help_text="closed division: only entries the platform quantized (no uploads)",
    )
    calibration_resamples = models.PositiveSmallIntegerField(
        default=DEFAULT_CALIBRATION_RESAMPLES,
        help_text="baseline/container re-runs on resampled calibration sets; 0 = none",
    )
    accuracy_gate = models.FloatField(
        default=SPEC_DEFAULTS["accuracy_gate"],
        help_text="an entry passes when mean DSC ≥ this fraction of FP32 mean DSC",
    )
    daily_quota = models.PositiveIntegerField(default=5, help_text="submissions per user per day")
    time_limit_s = models.PositiveIntegerField(
        default=int(SPEC_DEFAULTS["time_limit_s"]), help_text="evaluation time limit"
    )
    latency_threads = models.PositiveSmallIntegerField(
        default=SPEC_DEFAULTS["latency_threads"],
        help_text="intra-op threads a real backend times the entry and FP32 on",
    )
    latency_pairs = models.PositiveSmallIntegerField(
        default=SPEC_DEFAULTS["latency_pairs"],
        help_text="interleaved FP32/entry pairs of the latency protocol (at least 10)",
    )
    latency_burst = models.PositiveSmallIntegerField(
        default=SPEC_DEFAULTS["latency_burst"],
        help_text="calls per side in each latency pair",
    )
    quantizer_timeout_s = models.PositiveIntegerField(
        default=int(SPEC_DEFAULTS["quantizer_timeout_s"]),
        help_text="wall-clock limit of a quantizer container run (seconds)",
    )
    label_map = models.JSONField(
        default=dict,
        blank=True,
        help_text="model label → dataset label, by name, when the two name their organs "
        "differently (empty: the model's labels must be the dataset's)",
    )
    public_fraction = models.FloatField(
        default=SPEC_DEFAULTS["public_fraction"],
        help_text="share of the test cases in the public split, ranked and shown per case during "
        "the phase; the rest (the private split) is scored, shown to maintainers only and "
        "published as the final ranking when the phase ends (1: no private split)",
    )
    cases_per_task = models.PositiveSmallIntegerField(
        default=0,
        help_text="test cases per Celery task when an upload is scored (its cases fanned out "
        "over the workers, the result assembled by a last task); 0: one task scores them all",
    )
    opens_at = models.DateTimeField(default=timezone.now)
    closes_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="the phase end: submissions close and the final ranking on the private split "
        "is published (empty: the phase runs on, ranked on the public split)",
    )
    ranked_split = models.CharField(
        max_length=10,
        choices=[(s, s) for s in SPLITS],
        default=PUBLIC,
        editable=False,
        help_text="the split the stored scores rank on (private once the phase end has been "
        "published, see leaderboard.tracks.phases)",
    )
    is_public = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ranked_at = models.DateTimeField(
        null=True, blank=True, help_text="when ranks were last computed (versions cached boards)"
    )

    objects = TrackQuerySet.as_manager()

    class Meta:
        ordering = ["dataset__name", "reference_model__name", "-weight_bits", "slug"]

    def __str__(self) -> str:
        return self.title

    def clean(self) -> None:
        check_ranking_keys([self.ranking_metric, *self.tie_breakers])
        if self.ranking_rule == RankingRule.RANK_THEN_AGGREGATE and (
            self.ranking_metric not in CASE_METRICS
        ):
            raise ValidationError(
                {"ranking_rule": f"rank then aggregate needs a per-case ranking metric "
                 f"({', '.join(CASE_METRICS)})"}
            )  # fmt: skip
        refusal = self.reference_model_id and self.reference_model.backend_refusal(self.backend)
        if refusal:
            raise ValidationError({"backend": refusal})
        if self.reference_model_id and self.dataset_id:
            try:  # the harness's own checks of a track (TrackSpec's), not a copy of them
                self.to_spec()
            except HarnessError as error:
                raise ValidationError(str(error)) from None
            self._check_labels()
        if self.closes_at is not None and self.opens_at and self.closes_at <= self.opens_at:
            raise ValidationError({"closes_at": "the deadline must come after the phase opens"})
        longest = settings.MEDQUANT_LONGEST_TIME_LIMIT_S
        if self.time_limit_s + self.quantizer_timeout_s > longest:
            raise ValidationError(
                {
                    "time_limit_s": f"with the quantizer timeout, at most {longest} s "
                    "(MEDQUANT_LONGEST_TIME_LIMIT_S, from which the broker's visibility timeout "
                    "is derived)"
                }
            )

    def _check_labels(self) -> None:
        """The model's labels name the dataset's organs, as they are or through ``label_map``
        (``harness.track.labels``)."""
        mapping = self.label_map or {}
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ValidationError({"label_map": "must map model label names to dataset labels"})
        try:
            model_labels = read_spec(self.reference_model.path).labels
            dataset_labels = load_dataset(self.dataset.path).labels
            label_lut(model_labels, dataset_labels, mapping)
        except HarnessError as error:
            raise ValidationError({"label_map": str(error)}) from None

    @property
    def budget(self) -> float:
        """The bits-per-weight budget in force."""
        if self.bits_per_weight_budget is not None:
            return self.bits_per_weight_budget
        return self.weight_bits + DEFAULT_BUDGET_MARGIN_BITS

    @property
    def precision_label(self) -> str:
        return f"W{self.weight_bits}A{self.activation_bits or 16}"

    @property
    def backend_runner(self):
        """The harness backend of this track (``harness.backends``)."""
        return get_backend(self.backend)

    @property
    def takes_checkpoints(self) -> bool:
        """Whether submissions here are quantized checkpoints (else ONNX files)."""
        return self.backend_runner.scores("checkpoint")

    @property
    def queue(self) -> str:
        """Celery queue of the workers able to evaluate this track (the backend's)."""
        return self.backend_runner.queue

    def is_open(self, now=None) -> bool:
        now = now or timezone.now()
        return self.opens_at <= now and (self.closes_at is None or now < self.closes_at)

    @property
    def admits_uploads(self) -> bool:
        """Whether uploaded artifacts may enter (not on a closed track that admits only entries
        the platform quantized)."""
        return not (self.division == "closed" and self.platform_ptq_only)

    def case_metrics(self) -> list[tuple[str, bool]]:
        """(per-case result key, higher is better) of the ranking keys that are means over
        cases, the primary metric first: what rank then aggregate ranks per case."""
        out = []
        for column, _ in self.ranking_keys():
            if column in CASE_METRICS and CASE_METRICS[column] not in [k for k, _ in out]:
                out.append((CASE_METRICS[column], RANKING_METRICS[column][1]))
        return out

    def ranking_description(self) -> str:
        """What orders the board, in words (named on the page)."""
        label = RANKING_METRICS[self.ranking_metric][0]
        direction = "higher is better" if RANKING_METRICS[self.ranking_metric][1] else (
            "lower is better"
        )  # fmt: skip
        if self.ranking_rule == RankingRule.RANK_THEN_AGGREGATE:
            names = " and ".join(k.upper() for k, _ in self.case_metrics())
            return f"rank then aggregate: mean per-case rank on {names} (lower is better)"
        return f"mean then rank: {label} ({direction})"

    @property
    def tie_breaker_labels(self) -> list[str]:
        """The tie-breakers in words, e.g. "mean NSD (higher first)"."""
        return [
            f"{RANKING_METRICS[c][0]} ({'higher' if descending else 'lower'} first)"
            for c, descending in self.ranking_keys()[1:]
        ]

    def ranking_keys(self) -> list[tuple[str, bool]]:
        """(column, descending) pairs: the primary metric in its natural order, then
        the tie-breakers (under rank then aggregate, the mean per-case rank comes first:
        ``leaderboard.tracks.ranking``)."""
        keys = [(self.ranking_metric, RANKING_METRICS[self.ranking_metric][1])]
        for key in self.tie_breakers:
            keys.append((key.lstrip("-"), key.startswith("-")))
        return keys

    def warnings(self) -> list[str]:
        """What every result on this track will be read with, known from the reference model
        alone (``ModelSpec.warnings``: too small a share of each patch with the network's whole
        receptive field inside it), shown on the track page."""
        try:
            return read_spec(self.reference_model.path).warnings()
        except HarnessError:
            return []

    def to_spec(self) -> TrackSpec:
        """The plain harness description of this track."""
        return TrackSpec(
            model_dir=self.reference_model.path,
            dataset_dir=self.dataset.path,
            test_split=self.test_split,
            calibration_split=self.calibration_split,
            backend=self.backend,
            weight_bits=self.weight_bits,
            activation_bits=self.activation_bits,
            granularities=tuple(self.granularities),
            nsd_tolerance_mm=self.nsd_tolerance_mm,
            nsd_definition=self.nsd_definition,
            accuracy_gate=self.accuracy_gate,
            seed=self.seed,
            max_float_mac_fraction=self.max_float_mac_fraction,
            bits_per_weight_budget=self.bits_per_weight_budget,
            division=self.division,
            time_limit_s=float(self.time_limit_s),
            quantizer_timeout_s=float(self.quantizer_timeout_s),
            latency_threads=self.latency_threads,
            latency_pairs=self.latency_pairs,
            latency_burst=self.latency_burst,
            label_map=dict(self.label_map or {}),
            public_fraction=self.public_fraction,
        )
