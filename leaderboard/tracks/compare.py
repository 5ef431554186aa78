"""Side-by-side comparison of two to four entries of one track: per-class and per-case DSC / NSD /
HD95 (mm; None on results older than schema version 3), every figure over the test cases the
viewer may see per case (the public split; every case for maintainers),
their differences against the first entry, and whether each difference is larger than the noise
of the test cases.

Significance: a paired percentile bootstrap over the test cases
(``harness.scoring.result.paired_bootstrap_ci``, ``BOOTSTRAP_SAMPLES`` resamples seeded by the
track's seed, so a page always shows the same interval): the same resampled cases on both sides,
the 95% interval of the mean difference. A difference is *resolved* when its interval excludes 0,
*within noise* otherwise, and undetermined (None) with fewer than ``MIN_CASES`` test cases; it is
computed for the mean DSC over cases and for each class's mean DSC.
"""

from __future__ import annotations

import numpy as np
from django.core.exceptions import ValidationError
from django.db.models import Q

from harness.scoring.result import BOOTSTRAP_SAMPLES, paired_bootstrap_ci
from leaderboard.submissions.models import Evaluation, Status
from leaderboard.tracks.models import Track
from leaderboard.tracks.phases import shown_result

MIN_ENTRIES = 2
MAX_ENTRIES = 4
MIN_CASES = 2
"""With a single test case every resample is that case: the interval is a point and says
nothing about noise, so no difference is called resolved (``resolved`` is None)."""


def parse_ids(values: list[str]) -> list[int]:
    """Submission ids from ``?ids=`` values (order kept, repeats dropped); a ValidationError
    names what is wrong."""
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            if not part.strip().isdigit():
                raise ValidationError({"ids": f"{part!r} is not a submission id"})
            if int(part) not in ids:
                ids.append(int(part))
    if not MIN_ENTRIES <= len(ids) <= MAX_ENTRIES:
        raise ValidationError(
            {"ids": f"choose {MIN_ENTRIES} to {MAX_ENTRIES} entries to compare (got {len(ids)})"}
        )
    return ids


def comparable(track: Track, ids: list[int], user) -> list[Evaluation]:
    """The evaluations of submissions ``ids`` on ``track``, in the order given: finished, shown
    entries (the FP32 reference row included; neither hidden nor disqualified), or any of the
    viewer's own (all for staff)."""
    visible = Q(
        submission__status=Status.DONE, submission__hidden=False, submission__disqualified=False
    )
    if user.is_authenticated:
        visible |= Q() if user.is_staff else Q(submission__user=user)
    found = {
        e.submission_id: e
        for e in Evaluation.objects.filter(
            visible, track=track, submission_id__in=ids
        ).select_related("submission__team", "submission__user")
    }
    missing = [i for i in ids if i not in found]
    if missing:
        raise ValidationError(
            {"ids": f"no finished entry {', '.join(map(str, missing))} on track {track.slug}"}
        )
    return [found[i] for i in ids]


def difference(values: list[float], reference: list[float], seed: int) -> dict:
    """Mean of ``values`` − mean of ``reference`` (paired cases), its paired-bootstrap 95%
    interval and whether it is resolved (None: too few cases to tell)."""
    low, high = paired_bootstrap_ci(values, reference, seed)
    mean = sum(values) / len(values) - sum(reference) / len(reference)
    resolved = (low > 0 or high < 0) if len(values) >= MIN_CASES else None
    return {"mean": mean, "ci95": [low, high], "resolved": resolved}


def _mean(values: list[float | None]) -> float | None:
    return None if not values or None in values else float(np.mean(values))


def comparison(track: Track, evaluations: list[Evaluation], *, staff: bool) -> dict:
    """Entries, per-class and per-case rows (each value with its difference to the first entry)
    and the paired-bootstrap significance of each entry's mean-DSC difference to the first, all
    over the test cases the viewer may see per case (``phases.shown_result``: the public split,
    or every case for maintainers)."""
    results = [shown_result(e.result, track, staff=staff) for e in evaluations]
    case_ids = [c["case_id"] for c in results[0]["cases"]]
    if not case_ids:
        raise ValidationError(
            {"ids": "these entries have no per-case results you may see: their documents "
                    "predate the track's public split (a re-evaluation adds it)"}
        )  # fmt: skip
    cases = [{c["case_id"]: c for c in r["cases"]} for r in results]
    for evaluation, by_id in zip(evaluations, cases, strict=True):
        if sorted(by_id) != sorted(case_ids):
            raise ValidationError(
                {"ids": f"entry {evaluation.submission_id} was scored on other test cases than "
                        f"entry {evaluations[0].submission_id}; re-evaluate it to compare"}
            )  # fmt: skip
    classes = results[0]["classes"]
    entries = [
        {"submission": e.submission_id, "method": e.submission.method,
         "entrant": e.submission.entrant,
         **{f"mean_{m}": _mean([by_id[c].get(f"mean_{m}") for c in case_ids])
            for m in ("dsc", "nsd", "hd95")}}
        for e, by_id in zip(evaluations, cases, strict=True)
    ]  # fmt: skip

    def side_by_side(values: list[float | None]) -> list[dict]:
        first = values[0]
        return [{"value": v, "difference": None if i == 0 or v is None or first is None
                 else v - first} for i, v in enumerate(values)]  # fmt: skip

    per_class = []
    for key, name in classes.items():
        dsc = [[by_id[c]["dsc"][key] for c in case_ids] for by_id in cases]
        per_class.append({
            "class": name,
            "dsc": side_by_side([_mean(d) for d in dsc]),
            "nsd": side_by_side([_mean([by_id[c]["nsd"][key] for c in case_ids])
                                 for by_id in cases]),
            "hd95": side_by_side([_mean([by_id[c].get("hd95", {}).get(key) for c in case_ids])
                                  for by_id in cases]),
            "dsc_difference": [None] + [difference(d, dsc[0], track.seed) for d in dsc[1:]],
        })  # fmt: skip
    per_case = [
        {"case": c,
         "dsc": side_by_side([by_id[c]["mean_dsc"] for by_id in cases]),
         "nsd": side_by_side([by_id[c]["mean_nsd"] for by_id in cases]),
         "hd95": side_by_side([by_id[c].get("mean_hd95") for by_id in cases])}
        for c in case_ids
    ]  # fmt: skip
    mean_dsc = [[by_id[c]["mean_dsc"] for c in case_ids] for by_id in cases]
    return {
        "track": track.slug,
        "test_cases": len(case_ids),
        "bootstrap": {
            "samples": BOOTSTRAP_SAMPLES,
            "seed": track.seed,
            "paired_over": "cases",
            "interval": 0.95,
        },  # fmt: skip
        "entries": entries,
        "mean_dsc_difference": [None]
        + [difference(d, mean_dsc[0], track.seed) for d in mean_dsc[1:]],
        "per_class": per_class,
        "per_case": per_case,
    }
