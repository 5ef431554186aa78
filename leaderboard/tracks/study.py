"""The MedQuanBench study tables, live from the stored baseline results.

Per reference model and dataset, the study's Table 1: the FP32 reference, then every precision
with a track × the three granularity schemes (per-tensor, per-channel/token, adaptive
stratification), each cell the mean DSC and NSD with their ↓Δ% against FP32, as ``harness study``
prints them (``harness.analysis.study.study_row`` and ``format_metric`` make both). A cell is the
RTN baseline of that scheme with symmetric activations (the study's definition) on the
``STUDY_BACKEND`` track of that precision; a missing baseline leaves the cell empty. Beside the
per-tensor row (static scales calibrated by max), the activation-calibration rows: the same RTN
baseline with percentile and MSE calibration (``harness.analysis.study.calibration_rows``)
where the precision quantizes activations. Each cell also carries HD95 and, where the baseline was
re-run on resampled calibration sets, its "± calibration" spread. The
cross-model table is the same cells, one row per model; a method's page lists every baseline of
that reference method across models, datasets, precisions and backends.

Tables are derived from ranks (a baseline appears once its result is stored and ranked), so they
are cached until any of the tracks involved is re-ranked (``Track.ranked_at``).
"""

from __future__ import annotations

import hashlib

from django.core.cache import cache
from django.db import connection
from django.db.models import Max

from harness.analysis.study import STUDY_GRANULARITIES, calibration_rows, format_metric
from harness.scoring.splits import SPLITS
from harness.track.spec import WEIGHT_ONLY_ACTIVATION_BITS, precision_prefix
from leaderboard.submissions.models import Evaluation, Kind
from leaderboard.tracks.models import Dataset, ReferenceModel, Track
from leaderboard.tracks.ranking import RANKED_STATUSES

STUDY_BACKEND = "simulated"
"""The study quantizes in simulation (exact integer arithmetic, any bits and granularity)."""
STUDY_METHOD = "rtn"
LEGACY_RTN = ""
"""Baseline rows made before baselines recorded their method were RTN."""
CACHE_SECONDS = 600
GRANULARITY_LABELS = {
    "per-tensor": "per-tensor",
    "per-channel": "per-channel/token",
    "adaptive": "adaptive stratification",
}
CELL_FIELDS = (
    "submission_id", "track__slug", "mean_dsc", "dsc_drop_pct", "mean_nsd", "submission__scheme",
    "result__summary__nsd_drop_pct", "mean_hd95", "calibration_sd", "track__ranked_split",
    *(f"result__splits__{split}__summary__nsd_drop_pct" for split in SPLITS),
)  # fmt: skip
"""The stored columns (on the split the track ranks on) and the NSD drop of that split (of all
cases for a document without splits)."""


def _version(tracks) -> str:
    """Cache version of anything derived from the ranks of ``tracks``: their latest ranking and
    newest track."""
    latest = tracks.aggregate(ranked=Max("ranked_at"), newest=Max("pk"))
    stamp = latest["ranked"].timestamp() if latest["ranked"] else 0
    return f"{stamp}:{latest['newest']}"


def cached(name: str, tracks, build):
    """``build()`` cached under ``name`` until one of ``tracks`` is re-ranked."""
    digest = hashlib.sha256(f"{name}:{_version(tracks)}".encode()).hexdigest()
    return cache.get_or_set(f"study:{digest}", build, CACHE_SECONDS)


MODEL_VERSION_SQL = """
    SELECT MAX(t.ranked_at), MAX(t.id), COUNT(t.id) FROM {track} t JOIN {model} m
        ON m.id = t.reference_model_id
    WHERE m.slug = %s AND t.is_public
"""


def model_version(slug: str) -> str | None:
    """Version of what is derived from the ranks of model ``slug``'s public tracks, in one plain
    query (it decides whether a cached page can be served); None when it has none."""
    with connection.cursor() as cursor:
        cursor.execute(
            MODEL_VERSION_SQL.format(
                track=connection.ops.quote_name(Track._meta.db_table),
                model=connection.ops.quote_name(ReferenceModel._meta.db_table),
            ),
            [slug],
        )
        ranked, newest, count = cursor.fetchone()
    return None if not count else f"{slug}:{ranked}:{newest}:{count}"


def precision_of(weight_bits: int, activation_bits: int | None) -> tuple[str, str]:
    """(scheme prefix, label) of a precision: ``("w4a4", "W4A4")``; weight-only is ``a16``."""
    prefix = precision_prefix(weight_bits, activation_bits)
    return prefix, prefix.upper()


def _cell(values: dict) -> dict:
    nsd_drop = values[f"result__splits__{values['track__ranked_split']}__summary__nsd_drop_pct"]
    if nsd_drop is None:
        nsd_drop = values["result__summary__nsd_drop_pct"]
    return {
        "submission": values["submission_id"],
        "track": values["track__slug"],
        "scheme": values["submission__scheme"],
        "mean_dsc": values["mean_dsc"],
        "dsc_drop_pct": values["dsc_drop_pct"],
        "mean_nsd": values["mean_nsd"],
        "nsd_drop_pct": nsd_drop,
        "mean_hd95": values["mean_hd95"],
        "calibration_sd": values["calibration_sd"],
        "dsc": format_metric(values["mean_dsc"], values["dsc_drop_pct"]),
        "nsd": format_metric(values["mean_nsd"], nsd_drop),
    }


def study_tracks(model: ReferenceModel, dataset: Dataset):
    return Track.objects.public().filter(
        reference_model=model, dataset=dataset, backend=STUDY_BACKEND
    )


def _visible_done():
    """Shown entries with a result (one being re-evaluated keeps its latest, as on the board)."""
    return {
        "submission__status__in": RANKED_STATUSES,
        "submission__hidden": False,
        "submission__disqualified": False,
    }


def build_table(model: ReferenceModel, dataset: Dataset) -> dict:
    """The study table of ``model`` on ``dataset`` (uncached): ``fp32`` (a cell or None) and
    ``rows`` — one per precision × granularity, precision by precision from the most bits, each
    with its ``cell`` (None where the baseline has no stored result)."""
    tracks = list(study_tracks(model, dataset).order_by("-weight_bits", "-activation_bits"))
    precisions = list(dict.fromkeys(precision_of(t.weight_bits, t.activation_bits) for t in tracks))
    schemes = {
        scheme: (label, g, calibration)
        for p, label in precisions
        for g in STUDY_GRANULARITIES
        for scheme, calibration in calibration_rows(f"{p}-{g}")
    }
    found = Evaluation.objects.filter(
        track__in=tracks,
        submission__is_baseline=True,
        submission__kind=Kind.SCHEME,
        submission__reference_method__in=(STUDY_METHOD, LEGACY_RTN),
        submission__scheme__in=list(schemes),
        **_visible_done(),
    ).order_by("pk")
    cells = {v["submission__scheme"]: _cell(v) for v in found.values(*CELL_FIELDS)}
    fp32 = (
        Evaluation.objects.filter(track__in=tracks, submission__kind=Kind.FP32, **_visible_done())
        .order_by("-track__weight_bits", "-pk")
        .values(*CELL_FIELDS)
        .first()
    )
    rows = [
        {
            "scheme": scheme,
            "precision": label,
            "granularity": granularity,
            "granularity_label": GRANULARITY_LABELS[granularity],
            "calibration": calibration,
            "cell": cells.get(scheme),
        }
        for scheme, (label, granularity, calibration) in schemes.items()
    ]
    return {
        "model": {"slug": model.slug, "name": model.name, "architecture": model.architecture,
                  "family": model.family},
        "dataset": {"slug": dataset.slug, "name": dataset.name},
        "backend": STUDY_BACKEND,
        "method": STUDY_METHOD,
        "precisions": [label for _, label in precisions],
        "granularities": list(STUDY_GRANULARITIES),
        "fp32": _cell(fp32) if fp32 else None,
        "rows": rows,
    }  # fmt: skip


def model_tables(model: ReferenceModel) -> list[dict]:
    """The study table of ``model`` on every dataset it has study tracks on (cached)."""
    tracks = Track.objects.public().filter(reference_model=model, backend=STUDY_BACKEND)

    def build() -> list[dict]:
        datasets = Dataset.objects.filter(tracks__in=tracks).distinct().order_by("name")
        return [build_table(model, dataset) for dataset in datasets]

    return cached(f"model:{model.pk}", tracks, build)


def cross_model_tables() -> list[dict]:
    """Per dataset: ``columns`` (precision × granularity, most bits first) and one row per model
    with the family, the FP32 cell and a cell per column (cached)."""
    tracks = Track.objects.public().filter(backend=STUDY_BACKEND)

    def build() -> list[dict]:
        tables = []
        for dataset in Dataset.objects.filter(tracks__in=tracks).distinct().order_by("name"):
            models = ReferenceModel.objects.filter(tracks__in=tracks.filter(dataset=dataset))
            per_model = [build_table(m, dataset) for m in models.distinct().order_by("name")]
            precisions = sorted(
                {
                    (t.weight_bits, t.activation_bits or WEIGHT_ONLY_ACTIVATION_BITS)
                    for t in tracks.filter(dataset=dataset)
                },
                reverse=True,
            )
            prefixes = [precision_prefix(w, a) for w, a in precisions]
            columns = [
                {"scheme": f"{p}-{g}", "precision": p.upper(), "granularity": GRANULARITY_LABELS[g]}
                for p in prefixes
                for g in STUDY_GRANULARITIES
            ]
            rows = []
            for table in per_model:
                cells = {r["scheme"]: r["cell"] for r in table["rows"]}
                rows.append(
                    {"model": table["model"], "fp32": table["fp32"],
                     "cells": [cells.get(c["scheme"]) for c in columns]}
                )  # fmt: skip
            tables.append({"dataset": {"slug": dataset.slug, "name": dataset.name},
                           "columns": columns, "rows": rows})  # fmt: skip
        return tables

    return cached("cross-model", tracks, build)


def method_entries(method: str) -> list[dict]:
    """Every visible baseline of reference method ``method`` on a public track, by dataset,
    model, backend and precision (cached)."""
    tracks = Track.objects.public()
    names = (method, LEGACY_RTN) if method == STUDY_METHOD else (method,)

    def build() -> list[dict]:
        rows = (
            Evaluation.objects.filter(
                track__in=tracks,
                submission__is_baseline=True,
                submission__reference_method__in=names,
                **_visible_done(),
            )
            .exclude(submission__kind=Kind.FP32)
            .order_by(
                "track__dataset__name",
                "track__reference_model__name",
                "track__backend",
                "-track__weight_bits",
                "submission__scheme",
            )  # fmt: skip
            .values(
                *CELL_FIELDS,
                "submission__method",
                "track__title",
                "track__backend",
                "track__weight_bits",
                "track__activation_bits",
                "track__dataset__name",
                "track__reference_model__name",
                "track__reference_model__slug",
                "track__reference_model__family",
                "granularity",
                "rank_all",
                "gate_passed",
            )  # fmt: skip
        )
        return [
            _cell(v) | {
                "label": v["submission__method"], "track_title": v["track__title"],
                "backend": v["track__backend"], "dataset": v["track__dataset__name"],
                "model": v["track__reference_model__name"],
                "model_slug": v["track__reference_model__slug"],
                "family": v["track__reference_model__family"],
                "precision": precision_of(v["track__weight_bits"], v["track__activation_bits"])[1],
                "granularity": v["granularity"], "rank": v["rank_all"],
                "gate_passed": v["gate_passed"],
            }
            for v in rows
        ]  # fmt: skip

    return cached(f"method:{method}", tracks, build)
